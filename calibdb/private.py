"""Private directories and files for the node's calibration DB: ours, 0700, checked before use.

The instance dir has to be found again by every pilot of the same user on the node, so
its name is derived, not random; that makes it guessable.  What protects it is the
check: a dir (or state file) that another user owns, or that others may write to, was
possibly planted — its ``state.json`` could hand payloads an ``LD_PRELOAD``, its socket
could be a fake server — so it is refused and reported, never joined.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from compass_pilot.errors import CalibDBError


def _describe(st: os.stat_result) -> str:
    return f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"


def _ours_alone(st: os.stat_result) -> bool:
    """Ours, and nobody else may write to it: the one rule every private dir and file is held to."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def is_private_dir(path: Path) -> bool:
    """``path`` is a real directory (not a link) that is ours alone; False if absent or not so."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _ours_alone(st)


def check_parent(path: Path) -> None:
    """A dir we create things in: ours or root's, and if others may write to it, sticky (like /tmp).

    In a foreign-writable, non-sticky parent another user could rename our private dir
    away and put theirs in its place between our check and our use.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CalibDBError(f"calibration DB scratch dir {path}: {exc.strerror}") from None
    foreign_writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if st.st_uid not in (os.geteuid(), 0) or (foreign_writable and not st.st_mode & stat.S_ISVTX):
        raise CalibDBError(
            f"refusing calibration DB scratch dir {path} ({_describe(st)}): another user could "
            "replace what we create in it; use a dir of your own (calibdb.scratch_dir)"
        )


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` 0700, or accept an existing one only if it is ours and nobody else can write to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_parent(path.parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise CalibDBError(f"refusing calibration DB dir {path}: not a directory (a link or file was planted)")
    if not _ours_alone(st):
        raise CalibDBError(
            f"refusing calibration DB dir {path} ({_describe(st)}): not ours alone; not joined, "
            "remove it or pick another calibdb.scratch_dir"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)  # ours and unwritable by others: tighten an older, readable one
    return path


def check_private_file(path: Path) -> bool:
    """False if ``path`` is absent; True if it is our regular file that only we can write; else refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or not _ours_alone(st):
        raise CalibDBError(
            f"refusing calibration DB file {path} ({_describe(st)}, "
            f"{'regular file' if stat.S_ISREG(st.st_mode) else 'not a regular file'}): possibly planted; not used"
        )
    return True
