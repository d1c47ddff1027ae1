"""The one atomic-write helper: readers see the old file or the new one, never half of either.

Temp file in the target's directory, write, fsync, rename over the target, fsync the
directory.  Without the file fsync a power cut after the rename can leave an empty file
under the new name (ext4 / XFS delayed allocation); without the directory fsync the
rename itself may be lost.  Every file whose loss or tearing would break a promise goes
through here: submission state, the daemon state file, job sets, node agents' results,
the Harvester messenger's files.  ``durable=False`` keeps the atomic rename but skips both
fsyncs, for hints whose loss in a crash costs nothing (a payload's started marker).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def atomic_write_text(target: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """Replace ``target`` with ``text`` atomically (and durably unless ``durable=False``)."""
    atomic_write_bytes(target, text.encode("utf-8"), durable=durable)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Replace ``target`` with ``data`` atomically; the file is created 0600."""
    path = Path(target)
    atomic_write_files(path.parent, [(path.name, data)], durable=durable)


#: a fresh file, never one that was there: a planted file or symlink under the temp name is not followed
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _create_exclusive(tmp: str) -> int:
    """Open ``tmp`` as a new 0600 file.  Something already under that name (a temp file a
    killed writer of the same pid and thread left, or a planted link) is removed — the link
    itself, not what it points at — and the create tried once more."""
    try:
        return os.open(tmp, _CREATE, 0o600)
    except FileExistsError:
        os.unlink(tmp)
        return os.open(tmp, _CREATE, 0o600)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # some shared file systems refuse to open a directory: the file itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_files(
    directory: str | os.PathLike[str], files: list[tuple[str, bytes]], *, durable: bool = True
) -> None:
    """Replace several files of ONE directory, each atomically, in order, durably as a set.

    Each file: a temp file (named by process and thread, so no random name), write,
    fsync, rename over its target; then ONE directory fsync for all the renames.  Same
    promise as :func:`atomic_write_bytes` per file — a reader sees the old or the new
    content — and, once this returns, every one is on disk; a crash in between leaves a
    prefix of ``files`` replaced (so the one whose appearance means "done" goes last).
    The node agent writes a job's three outcome files so: 4 fsyncs instead of 6.
    ``durable=False``: the renames stay atomic, no fsync at all (no order survives a crash).
    """
    base = os.fspath(directory)
    tag = f"{os.getpid()}.{threading.get_ident()}"
    for name, data in files:
        target = os.path.join(base, name)
        tmp = os.path.join(base, f".{name}.{tag}.tmp")
        fd = _create_exclusive(tmp)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    if durable:
        _fsync_dir(Path(base))
