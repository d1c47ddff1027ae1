"""Local-filesystem copytool: the shared file system of an HPC site, or the demo's dirs.

Stage-out writes to a temporary name in the destination directory, fsyncs, and
renames: a pilot killed mid-copy never leaves a half file under the final name, which
a merge job would otherwise pick up.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from compass_pilot.config import StorageSection, expand
from compass_pilot.copytools import BLOCK, adler32_of, check_rel_path, source_root
from compass_pilot.errors import ErrorCode, PilotError, StageInError, StageOutError
from compass_pilot.job import FileSpec, OutputFileReport

log = logging.getLogger(__name__)


def _oserror(exc: OSError, stage_in: bool, what: str) -> PilotError:
    if exc.errno == errno.ENOSPC:
        return PilotError(f"{what}: no space left on device", ErrorCode.NO_LOCAL_SPACE)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        code = ErrorCode.STAGE_IN_PERMISSION if stage_in else ErrorCode.STAGE_OUT_PERMISSION
        return (StageInError if stage_in else StageOutError)(f"{what}: permission denied", code)
    if exc.errno == errno.ENOENT and stage_in:
        return StageInError(f"{what}: no such file", ErrorCode.MISSING_INPUT)
    return (StageInError if stage_in else StageOutError)(f"{what}: {exc.strerror or exc}")


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(BLOCK):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())


class LocalCopyTool:
    """Copy (or symlink) from ``input_root`` and copy to ``output_root``."""

    def __init__(self, storage: StorageSection) -> None:
        self.storage = storage
        self.input_root = Path(expand(storage.input_root or "."))
        self.output_root = Path(expand(storage.output_root or "."))

    def stage_in(self, spec: FileSpec, src_path: str, workdir: Path) -> Path:
        root = Path(source_root(self.storage, spec, str(self.input_root), str(self.output_root)))
        src = root / check_rel_path(src_path, stage_in=True)
        dst = Path(workdir) / spec.lfn
        try:
            if not src.is_file():
                raise StageInError(f"input {src_path} not found in {root}", ErrorCode.MISSING_INPUT)
            if self.storage.link_inputs:
                dst.unlink(missing_ok=True)
                dst.symlink_to(src)
            else:
                _copy(src, dst)
            size = dst.stat().st_size
        except OSError as exc:
            raise _oserror(exc, True, f"stage-in of {src_path}") from None
        if spec.fsize and size != spec.fsize:
            raise StageInError(f"{spec.lfn}: size {size} != expected {spec.fsize}", ErrorCode.CHECKSUM_MISMATCH)
        if spec.adler32:
            found = adler32_of(dst)
            if found != spec.adler32.zfill(8):
                raise StageInError(
                    f"{spec.lfn}: adler32 {found} != expected {spec.adler32}", ErrorCode.CHECKSUM_MISMATCH
                )
        log.info("staged in %s (%d bytes)", spec.lfn, size)
        return dst

    def stage_out(self, local: Path, dest_path: str, *, guid: str) -> OutputFileReport:
        dest = self.output_root / check_rel_path(dest_path, stage_in=False)
        local = Path(local)
        tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
        try:
            size = local.stat().st_size
            checksum = adler32_of(local)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _copy(local, tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _oserror(exc, False, f"stage-out of {local.name}") from None
        found_size, found_sum = dest.stat().st_size, adler32_of(dest)
        if (found_size, found_sum) != (size, checksum):
            raise StageOutError(
                f"{local.name}: destination has size {found_size} adler32 {found_sum}, source {size} {checksum}",
                ErrorCode.CHECKSUM_MISMATCH,
            )
        log.info("staged out %s → %s (%d bytes)", local.name, dest, size)
        return OutputFileReport(lfn=local.name, guid=guid, fsize=size, adler32=checksum, surl=str(dest))
