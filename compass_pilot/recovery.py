"""Finding, waiting for and judging payloads a previous pilot left behind.

A pilot killed with SIGKILL leaves its payload running in its own session.  The
journal recorded the payload's pid *and* process creation time, so a restarted pilot
finds the very same process (never a later one that reused the pid), waits for it
without polling (``pidfd_open`` + ``select``: the kernel wakes us when it exits) and
reads how it ended from the exit-code file its wrapper writes.
"""

from __future__ import annotations

import os
import select

import psutil

from compass_pilot.payload import PayloadResult


def find_payload(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The process only if both pid and creation time match (pid reuse is not adoption)."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if create_time and abs(proc.create_time() - create_time) > 1.0:
            return None
        return proc
    except psutil.Error:
        return None


def find_payload_in(workdir: str | os.PathLike[str]) -> psutil.Process | None:
    """The payload session running in ``workdir``, for a pilot killed before its pid reached the journal.

    Each payload is started as the leader of its own session with the job's work dir as
    its cwd; a work dir belongs to one job, so the session leader sitting in it is that
    job's payload.
    """
    target = os.path.realpath(workdir)
    for proc in psutil.process_iter(["pid", "cwd"]):
        try:
            cwd = proc.info["cwd"]
            leader = os.getsid(proc.pid) == proc.pid
            if cwd and os.path.realpath(cwd) == target and leader and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (psutil.Error, OSError):
            continue
    return None


def wait_for_pid(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited, False if ``timeout`` passed first (event-driven)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def result_from_exitcode(code: int) -> PayloadResult:
    """A PayloadResult for a payload whose end we only know from its exit-code file."""
    if 128 < code < 160:
        return PayloadResult(exit_code=None, signal=code - 128, cpu_seconds=0.0, max_rss=0, wall_seconds=0.0)
    return PayloadResult(exit_code=code, signal=None, cpu_seconds=0.0, max_rss=0, wall_seconds=0.0)
