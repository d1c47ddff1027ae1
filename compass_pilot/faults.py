"""Fault-injection points: the crash windows the fault suite kills the process in.

A promise like "a final state is reported exactly once, whatever dies" is only as good
as the test that kills the process *between* the two steps it depends on.  Code marks
each such window with :func:`crash_point`; a test arms ONE point by naming it in the
environment variable ``COMPASS_FAULT_POINT`` and the process SIGKILLs itself there —
no cleanup, no flush, no ``finally``: what a power cut or an OOM kill leaves behind.
Unarmed (every production run), a point costs one dictionary lookup.

Points: ``daemon-after-submit`` (the batch job exists, ``state.json`` does not know its
id), ``updater-after-ack`` (the server acknowledged a final, the journal has not
committed the ack), ``grid-after-payload-start`` (the payload runs, its pid is not in
the journal), ``broker-after-submit`` (in the batch broker child: the batch job exists,
the daemon has not heard its id).

:func:`bug_point` is the other kind of death: an unhandled exception (a bug), which runs
``finally`` blocks and exits with status 1 instead of a signal.  Point:
``agent-after-start`` (a node agent, right after it started its payloads).
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "COMPASS_FAULT_POINT"

log = logging.getLogger(__name__)


def crash_point(name: str) -> None:
    """Die here, at once and uncleanly, when the test armed this point."""
    if os.environ.get(ENV) == name:
        log.critical("fault point %s armed: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)


class InjectedBug(RuntimeError):
    """The exception an armed :func:`bug_point` raises: a bug, as far as the process knows."""


def bug_point(name: str) -> None:
    """Raise :class:`InjectedBug` here when the test armed this point (``COMPASS_FAULT_POINT``)."""
    if os.environ.get(ENV) == name:
        log.critical("fault point %s armed: raising an unhandled exception", name)
        raise InjectedBug(f"fault point {name}")
