"""Make radical.saga's local shells quick to open — in the batch broker, a process of our own.

Why: opening a job service (``fork://``, and the ``pbs://`` / ``slurm://`` adaptors, which
drive ``qsub`` / ``sbatch`` through the same local PTY shell) took the broker 1.0–1.6 s on
this box, a MOM node's first submission waited for it, and a service reopened after
:data:`~harvester_plugins.saga_backend.SERVICE_IDLE_SECONDS` paid it again.  Almost all
of it was waiting, not work:

1. radical.saga starts its local shell as ``$SHELL -i`` (an interactive login shell of
   the user's choice) and then runs ``exec /bin/sh -i`` in it.  An interactive bash
   first reads ``/etc/bash.bashrc`` and ``~/.bashrc`` (bash-completion, site ``module``
   set-ups): ~0.2 s per shell here, three shells per service, and whatever those files
   print can confuse radical.saga's prompt detection.  The broker sets ``SHELL=/bin/sh``
   (or ``$COMPASS_SAGA_SHELL``): the shell radical.saga ends up in anyway, without the detour.
2. ``PTYProcess.flush`` — called before every command — reads until the shell has
   been silent for 0.1 s: nine times while a service opens, once per submit / state
   query after.  By then the shell has printed the prompt of the previous command and
   has nothing more to say, so the broker shortens that quiet window to
   :data:`QUIET_SECONDS` (``COMPASS_SAGA_PTY_QUIET``; 0.1 restores radical.saga's).

Measured on this box: ``job.Service("fork://localhost")`` 1.60 s → 0.19 s, a job's
``run()`` 0.115 → 0.025 s.  Only the broker calls :func:`tune`: a process that hosts
other code (Harvester loading our plugins) keeps radical.saga exactly as it is.  If
radical.saga's internals are not the ones this was written against (1.103), nothing is
changed and the broker says so once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

#: Seconds of silence that end a flush of radical.saga's PTY read cache (radical.saga: 0.1).
QUIET_SECONDS = float(os.environ.get("COMPASS_SAGA_PTY_QUIET", "0.01"))
#: The shell radical.saga's local PTY shells start as (it execs ``/bin/sh -i`` in it anyway);
#: ``COMPASS_SAGA_SHELL`` names another.
LOCAL_SHELL = "/bin/sh"


def broker_shell(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    """The shell the broker's radical.saga starts its local shells as: ``$COMPASS_SAGA_SHELL``, else /bin/sh."""
    env = os.environ if environ is None else environ
    return env.get("COMPASS_SAGA_SHELL") or LOCAL_SHELL


def _quiet_flush(quiet: float) -> Any:
    def flush(self: Any) -> None:
        """radical.saga's ``PTYProcess.flush`` with a shorter quiet window: drop what the
        shell still has to say, then the read cache."""
        if not self.parent_out:
            return
        while True:
            try:
                if self.read(timeout=quiet):
                    continue  # more came: keep draining
            except Exception:  # what radical.saga's own flush does: a read error ends the flush
                log.debug("read error while flushing a radical.saga shell")
            break
        self.cache = ""

    flush.__compass_quiet__ = quiet  # type: ignore[attr-defined]  # tune() knows its own
    return flush


def tune(environ: dict[str, str] | None = None, quiet: float = QUIET_SECONDS) -> bool:
    """Set ``SHELL`` in ``environ`` (default ``os.environ``) and shorten the PTY flush; False
    when radical.saga is missing or not the version this knows (nothing changed then)."""
    env = os.environ if environ is None else environ
    try:
        from radical.saga.utils import pty_process
    except ImportError:
        return False
    cls = getattr(pty_process, "PTYProcess", None)
    if cls is None or not all(callable(getattr(cls, name, None)) for name in ("flush", "read", "find")):
        log.warning("radical.saga's PTYProcess is not the one known (1.103): its shells are left as they are")
        return False
    shell = broker_shell(env)
    if os.access(shell, os.X_OK):  # not: the preflight's probe has said so, with its exit code
        env["SHELL"] = shell
    if 0 < quiet < 0.1 and getattr(cls.flush, "__compass_quiet__", None) != quiet:  # 0 would block
        cls.flush = _quiet_flush(quiet)
    return True
