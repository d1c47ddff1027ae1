"""Files that hold job state or secrets are created 0600, whatever the umask.

Journals and the dispatcher DB hold every job's state and the pilots' identities;
token keys and proxies are credentials.  SQLite creates its file with the process
umask (usually 0644) and gives its ``-wal`` / ``-shm`` files the main file's mode, so
creating the main file 0600 first covers all three.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from compass_pilot.atomic import atomic_write_text
from compass_pilot.errors import ConfigError


def private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty with mode 0600, or tighten an existing file of ours to 0600."""
    target = Path(path)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return target


def write_private_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a secret (a key, a token) to a 0600 file, atomically, never through a wider mode.

    The one atomic-write helper already creates its temp file 0600 (``mkstemp``) and
    renames it into place, so the secret never exists under a wider mode.
    """
    atomic_write_text(path, text)
    return Path(path)


def check_own_dir(path: str | os.PathLike[str], what: str) -> None:
    """A directory whose files we trust (job sets, reports): ours, writable by nobody else, safely parented.

    Anyone who could write into it could plant a job set or a finished-job report; in a
    parent that others may write to (and that is not sticky, like /tmp) they could swap
    the directory itself.  ``what`` names the site config key in the error.
    """
    target = Path(path)
    st = os.stat(target)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(
            f"{what} {target}: owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; "
            "it must be ours and not group/world-writable (others could plant job sets or reports)"
        )
    parent = os.stat(target.parent)
    if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
        raise ConfigError(f"{what} {target}: its parent is world-writable without the sticky bit")
