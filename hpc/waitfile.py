"""Wait for a file to appear: inotify where the writer is on this host, a slow rescan where it is not.

Why: the MOM-node daemon submits a batch job while its inputs are still being staged in
and writes the job set when stage-in ends (``hpc.jobset_wait``).  A batch job that starts
at once (an empty queue, a fork:// or test site) runs node agents that must wait for that
file without polling it several times a second.  The job set is written by rename
(:func:`compass_pilot.atomic.atomic_write_files`), so the directory sees one
``IN_MOVED_TO``; a writer on this host wakes us at once.  A writer on another host of a
shared file system (Lustre, GPFS, NFS) raises no inotify event here, so the directory is
also looked at every :data:`RESCAN_SECONDS`: there the agent starts at most that much
after the job set appeared — small next to the batch queue's wait, which on a real site
almost always ends after the job set is written anyway.
"""

from __future__ import annotations

import logging
import os
import select
import time

log = logging.getLogger(__name__)

#: Seconds between looks at the directory when no event came (a writer on another host).
RESCAN_SECONDS = 2.0

_IN_CREATE = 0x00000100
_IN_MOVED_TO = 0x00000080
_IN_CLOSE_WRITE = 0x00000008
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000


def _inotify(directory: str) -> int:
    """An inotify descriptor watching ``directory`` for new names; -1 where there is none."""
    try:
        import ctypes  # here: only an agent that has to wait pays for it

        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
    except (OSError, AttributeError):
        return -1
    if fd < 0:
        return -1
    if libc.inotify_add_watch(fd, os.fsencode(directory), _IN_CREATE | _IN_MOVED_TO | _IN_CLOSE_WRITE) < 0:
        os.close(fd)
        return -1
    return fd


def wait_for_file(path: str | os.PathLike[str], timeout: float, rescan: float = RESCAN_SECONDS) -> bool:
    """True once ``path`` exists (at once if it does), False after ``timeout`` seconds without it.

    The directory must exist (the submission's directory does before its batch job);
    if it does not, the rescan alone watches for it.
    """
    target = os.fspath(path)
    if os.path.exists(target):
        return True
    deadline = time.monotonic() + max(0.0, timeout)
    fd = _inotify(os.path.dirname(target) or ".")
    try:
        while not os.path.exists(target):  # checked after the watch exists: no event falls in between
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if fd < 0:
                time.sleep(min(rescan, left))
                continue
            readable, _, _ = select.select([fd], [], [], min(rescan, left))
            if readable:
                try:
                    os.read(fd, 65536)  # the events themselves say nothing the exists() check doesn't
                except BlockingIOError:
                    pass
        return True
    finally:
        if fd >= 0:
            os.close(fd)
