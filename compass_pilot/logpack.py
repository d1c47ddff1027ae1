"""A job's log tarball: the payload's stdout / stderr and any ``*.log`` of its work dir.

COMPASS stages the log tarball out like an output (the job's ``logFile``), so every
job packs one when it ends — in a node agent, 512 per submission.  ``tarfile``'s own
``add`` looks up each member's owner and group in the user databases and streams through
a ``GzipFile`` at compression level 9; here the headers are built from the one ``stat``
(numeric owner only), an archive of small logs is built in memory, compressed once at
zlib's default level 6 (level 9 costs far more time on big logs for a few percent) and
written with one ``write``.  Logs too large to hold in memory are streamed the same way.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compass_pilot.job import JobSpec

log = logging.getLogger(__name__)

STDOUT_NAME = "payload.stdout"
STDERR_NAME = "payload.stderr"
LEVEL = 6
#: Up to this many bytes of logs are packed in memory; more are streamed to the file.
IN_MEMORY = 8 << 20


def _members(workdir: Path) -> list[tuple[str, os.stat_result]]:
    found = []
    with os.scandir(workdir) as entries:
        for entry in entries:
            name = entry.name
            if (name in (STDOUT_NAME, STDERR_NAME) or name.endswith(".log")) and entry.is_file():
                found.append((name, entry.stat()))
    found.sort()
    return found


def _fill(tar: tarfile.TarFile, workdir: Path, prefix: str, members: list[tuple[str, os.stat_result]]) -> None:
    for name, st in members:
        info = tarfile.TarInfo(f"{prefix}/{name}")
        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), st.st_mode & 0o7777
        info.uid, info.gid = st.st_uid, st.st_gid
        with open(workdir / name, "rb") as handle:
            tar.addfile(info, handle)


def pack_log(job: JobSpec, workdir: Path) -> Path | None:
    """Write the job's log tarball (``<workdir>/<logFile lfn>``, gzip); None when it has no log file
    or it cannot be written (the job's other results do not depend on it)."""
    if job.log_file is None:
        return None
    target = Path(workdir) / job.log_file.lfn
    try:
        members = _members(workdir)
        if sum(st.st_size for _, st in members) > IN_MEMORY:
            with tarfile.open(target, "w:gz", compresslevel=LEVEL) as tar:
                _fill(tar, workdir, job.job_name, members)
            return target
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            _fill(tar, workdir, job.job_name, members)
        packer = zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip stream
        data = memoryview(packer.compress(raw.getbuffer()) + packer.flush())
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("job %d: cannot pack log: %s", job.panda_id, exc)
        return None
    return target
