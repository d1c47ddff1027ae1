"""Preflight: everything a pilot needs checked *before* it asks PanDA for a job.

A job taken from PanDA by a pilot that cannot run it is a job failed for nothing, and a
daemon that keeps asking drains a whole task into failures (PanDA's "black hole").  So
before any getJob the pilot proves it could carry a job to its end:

* the batch system answers (daemon only): :func:`probe_batch` asks it natively, in a few
  milliseconds — ``squeue`` reaches slurmctld, ``qstat -Q`` the PBS / Torque server,
  ``condor_q -totals`` the schedd; ``fork://`` needs only the shell the batch broker's
  radical.saga starts (``$COMPASS_SAGA_SHELL``, else ``/bin/sh``) — after checking that
  radical.saga is installed and the scheme's submit command is on PATH.  That probe
  is what gates the daemon's first getJob.  radical.saga's job service (a PTY shell
  probing the batch tools: 1-2 s) opens meanwhile in the batch broker, and the first
  submission waits for it there; if it then fails to open, that is a *temporary*
  submission error (the jobs are kept, retried with backoff, heartbeats go on — see
  ``multijob._submit_failed``).  Over ``+ssh`` / ``+gsissh`` tunnels (or to another
  host) there is nothing local to ask: the full :func:`check_batch` (the job service
  opens) still gates the fetch;
* the work directory is writable (a file written, fsynced and removed) and has room;
* the X509 proxy, when one is configured, lives longer than the jobs may need
  (``credentials.check_proxy``: a warning under ``panda.proxy_warn_hours``).

Each check raises :class:`PreflightError` with ONE line naming what is wrong and the
process exit code (:mod:`compass_pilot.exitcodes`) that says so; nothing is fetched.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from compass_pilot.config import SiteConfig, expand
from compass_pilot.exitcodes import ExitCode

log = logging.getLogger(__name__)

#: Submit command a local batch system of each radical.saga scheme needs.
SUBMIT_COMMANDS = {"pbspro": "qsub", "torque": "qsub", "slurm": "sbatch", "condor": "condor_submit"}

#: Native command that proves the batch system of each scheme answers (fork: none needed).
#: Each reaches the server / controller, asks for little and fails with a non-zero exit
#: when it is down.  ``qstat -Q`` (queue list) and not ``qstat -B``: Slurm's Torque
#: wrappers (slurm-wlm-torque) refuse ``-B`` without a server name.
PROBE_COMMANDS: dict[str, list[str]] = {
    "slurm": ["squeue", "--noheader", "--format=%i", "--user={uid}"],
    "pbspro": ["qstat", "-Q"],
    "torque": ["qstat", "-Q"],
    "condor": ["condor_q", "-totals"],
}

#: Before getJob a grid pilot does not know its job's walltime: its proxy must last this long at least.
GRID_MIN_PROXY_SECONDS = 2 * 3600


class PreflightError(Exception):
    """A preflight check failed: ``str(exc)`` is the one-line reason, ``exit_code`` the process exit code."""

    def __init__(self, reason: str, exit_code: ExitCode = ExitCode.PREFLIGHT_FAILED) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


def check_batch(site: SiteConfig, *, timeout: float | None = None) -> None:
    """The batch adaptor imports, the submit command exists, the job service opens within ``timeout``."""
    url = site.hpc.batch_url
    try:
        import radical.saga  # noqa: F401
    except ImportError as exc:
        raise _adaptor_missing(exc) from None
    from harvester_plugins import saga_backend

    _check_commands(url)
    limit = site.hpc.batch_timeout if timeout is None else timeout
    _within(limit, f"opening job service {url}", lambda: saga_backend.get_service(url))


def probe_batch(site: SiteConfig, *, timeout: float | None = None) -> bool:
    """The fast gate of a daemon's getJob: the batch system answers a native query.

    True when the probe passed; False when it cannot judge from here (a tunnelled or
    remote URL: the caller runs the full :func:`check_batch` instead).  Raises
    PreflightError: radical.saga not installed (MISSING_DEPENDENCY), a submit or query
    command missing (PREFLIGHT_FAILED), the batch system not answering within
    ``timeout`` (default ``hpc.batch_timeout``) or answering with an error
    (BATCH_UNREACHABLE).  radical.saga itself is not imported: the daemon never loads it.
    """
    url = site.hpc.batch_url
    if not _adaptor_installed():
        raise _adaptor_missing(ModuleNotFoundError("No module named 'radical.saga'"))
    scheme, local = _check_commands(url)
    if not local:
        return False
    if scheme == "fork":  # nothing to ask: the local shell the broker's radical.saga runs
        from harvester_plugins.saga_shell import broker_shell

        shell = broker_shell()
        if shutil.which(shell) is None:  # which() wants it executable too
            raise PreflightError(f"batch_url {url}: shell {shell} (COMPASS_SAGA_SHELL) is not executable")
        return True
    template = PROBE_COMMANDS.get(scheme)
    if template is None:
        return False
    argv = [part.format(uid=os.getuid()) for part in template]
    if shutil.which(argv[0]) is None:
        raise PreflightError(f"batch_url {url}: query command {argv[0]!r} not found on PATH")
    _ask(argv, site.hpc.batch_timeout if timeout is None else timeout, url)
    return True


def _ask(argv: list[str], timeout: float, url: str) -> None:
    """Run ``argv`` (no shell, no stdin, bounded); PreflightError BATCH_UNREACHABLE unless it exits 0."""
    what = " ".join(argv[:2])
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False, close_fds=True
        )
    except subprocess.TimeoutExpired:
        raise PreflightError(
            f"batch system {url} did not answer: {what} gave nothing within {timeout:.0f} s",
            ExitCode.BATCH_UNREACHABLE,
        ) from None
    except OSError as exc:
        raise PreflightError(f"batch system {url}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        said = " ".join(done.stderr.decode(errors="replace").split()) or " ".join(
            done.stdout.decode(errors="replace").split()
        )
        raise PreflightError(
            f"batch system {url} did not answer: {what} exited {done.returncode}: {said[:200] or 'no message'}",
            ExitCode.BATCH_UNREACHABLE,
        )


def _adaptor_installed() -> bool:
    """radical.saga can be imported — found on sys.path WITHOUT importing it (nor the ``radical``
    namespace: the daemon keeps radical.* out of its memory; the broker imports it)."""
    import sys
    from importlib.machinery import PathFinder

    if "radical.saga" in sys.modules:
        return sys.modules["radical.saga"] is not None  # None: imports of it are blocked
    radical = PathFinder.find_spec("radical")
    locations = radical.submodule_search_locations if radical is not None else None
    return bool(locations) and PathFinder.find_spec("saga", list(locations or ())) is not None


def _adaptor_missing(exc: BaseException) -> PreflightError:
    return PreflightError(
        f"batch adaptor radical.saga cannot be imported ({exc}): pip install 'compass-pilot[saga]'",
        ExitCode.MISSING_DEPENDENCY,
    )


def _check_commands(url: str) -> tuple[str, bool]:
    """The URL's scheme is known and, for a local batch system, its submit command is on PATH.

    Returns (scheme, local); local is False for a tunnel (``+ssh``) or another host.
    """
    from harvester_plugins.saga_backend import batch_kind

    try:
        batch_kind(url)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    parts = urlsplit(url)
    scheme, _, tunnel = parts.scheme.partition("+")
    command = SUBMIT_COMMANDS.get(scheme)
    local = not tunnel and (parts.hostname or "localhost") in ("localhost", "127.0.0.1", "")
    if command and local and shutil.which(command) is None:
        raise PreflightError(f"batch_url {url}: submit command {command!r} not found on PATH")
    return scheme, local


def check_workdir(path: str | os.PathLike[str], min_free_mb: int) -> None:
    """``path`` exists or can be made, takes a durable write, and has ``min_free_mb`` free."""
    where = Path(expand(str(path)))
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".preflight-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"preflight\n")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
        stats = os.statvfs(where)
    except OSError as exc:
        raise PreflightError(f"work dir {where} not writable: {exc.strerror or exc}") from None
    free_mb = stats.f_bavail * stats.f_frsize // (1024 * 1024)
    if free_mb < min_free_mb:
        raise PreflightError(f"work dir {where}: {free_mb} MB free, need {min_free_mb} MB")


def proxy_path(site: SiteConfig) -> str:
    """The configured proxy: ``panda.x509_proxy``, else ``X509_USER_PROXY``; "" when none."""
    return expand(site.panda.x509_proxy) if site.panda.x509_proxy else os.environ.get("X509_USER_PROXY", "")


def check_proxy(site: SiteConfig, need_seconds: float) -> None:
    """The proxy (when configured) outlives ``need_seconds``; warns under ``panda.proxy_warn_hours``."""
    path = proxy_path(site)
    if not path:
        return
    from compass_pilot.credentials import ProxyError, check_proxy

    try:
        left = check_proxy(path, site.panda.proxy_warn_hours)
    except ProxyError as exc:
        raise PreflightError(exc.pilot_error_diag(), ExitCode.NO_VALID_PROXY) from None
    if left < need_seconds:
        raise PreflightError(
            f"proxy {path} has {left / 3600:.1f} h left, the jobs may need {need_seconds / 3600:.1f} h",
            ExitCode.NO_VALID_PROXY,
        )


def daemon_proxy_need(site: SiteConfig) -> float:
    """A daemon's jobs may run as long as its longest queue allows, plus an hour to report them."""
    longest = max((q.max_walltime + q.walltime_margin for q in site.hpc.queues), default=0)
    return longest + 3600


def check_daemon(site: SiteConfig) -> None:
    """Everything the MOM-node daemon needs before a getJob; raises PreflightError."""
    check_workdir(site.hpc.shared_dir, site.site.min_free_mb)
    check_proxy(site, daemon_proxy_need(site))
    check_batch(site)


def check_grid(site: SiteConfig) -> None:
    """Everything a grid pilot needs before a getJob; raises PreflightError."""
    check_workdir(site.site.workdir, site.site.min_free_mb)
    if site.panda.verify_proxy:
        check_proxy(site, GRID_MIN_PROXY_SECONDS)


def _within(timeout: float, what: str, call: Callable[[], Any]) -> Any:
    """``call()`` on a helper thread, given up after ``timeout`` s (an ssh to a dead host may hang)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="preflight", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise PreflightError(f"{what}: no answer within {timeout:.0f} s")
    if "error" in outcome:
        error = outcome["error"]
        message = " ".join(str(error).split())[:300] or type(error).__name__
        raise PreflightError(f"{what} failed: {message}")
    return outcome.get("value")
