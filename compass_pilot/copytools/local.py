"""Local-filesystem copytool: the shared file system of an HPC site, or the demo's dirs.

Both directions write to a temporary name in the target directory, fsync, verify, and
only then rename: a pilot killed mid-copy, or a copy that does not verify, never
leaves a half or corrupt file under the final name — which a merge job would
otherwise pick up as a finished output.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import zlib
from pathlib import Path

from compass_pilot.config import StorageSection, expand
from compass_pilot.copytools import BLOCK, adler32_of, check_lfn, check_rel_path, source_root
from compass_pilot.errors import ErrorCode, PilotError, StageInError, StageOutError
from compass_pilot.job import FileSpec, OutputFileReport

log = logging.getLogger(__name__)

_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def _oserror(exc: OSError, stage_in: bool, what: str) -> PilotError:
    """Map an OSError to the pilot code PanDA and ProdSys act on (1098 / 1175-1176 / 1331 / 1099-1137)."""
    error_cls = StageInError if stage_in else StageOutError
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PilotError(f"{what}: no space left on device{where}", ErrorCode.NO_LOCAL_SPACE)
    if exc.errno in _PERMISSION:
        code = ErrorCode.STAGE_IN_PERMISSION if stage_in else ErrorCode.STAGE_OUT_PERMISSION
        return error_cls(f"{what}: permission denied{where}", code)
    if exc.errno == errno.ENOENT and stage_in:
        return StageInError(f"{what}: no such file{where}", ErrorCode.MISSING_INPUT)
    return error_cls(f"{what}: {exc.strerror or exc}{where}")


def _copy_to_temp(src: Path, directory: Path, name: str) -> tuple[Path, int, str]:
    """Copy ``src`` to a fresh temp file in ``directory``; fsync it. Returns (temp, size, adler32 of src).

    The checksum is computed from the bytes read, so the source is read once.
    """
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide outputs from other users of the storage
        value, size = 1, 0
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while block := fin.read(BLOCK):
                value = zlib.adler32(block, value)
                size += len(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, size, f"{value & 0xFFFFFFFF:08x}"


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: without it a node crash can forget the new directory entry."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalCopyTool:
    """Copy (or symlink, with ``storage.link_inputs``) from ``input_root``; copy to ``output_root``."""

    def __init__(self, storage: StorageSection) -> None:
        self.storage = storage
        self.input_root = Path(expand(storage.input_root or ".")).absolute()
        self.output_root = Path(expand(storage.output_root or ".")).absolute()

    def stage_in(self, spec: FileSpec, src_path: str, workdir: Path) -> Path:
        """Copy or link ``<root>/<src_path>`` to ``workdir/<lfn>``; check size and adler32 when the spec has them."""
        root = Path(source_root(self.storage, spec, str(self.input_root), str(self.output_root)))
        src = root / check_rel_path(src_path, stage_in=True)
        workdir = Path(workdir).absolute()
        dst = workdir / check_lfn(spec.lfn)
        what = f"stage-in of {src_path}"
        tmp: Path | None = None
        try:
            if not src.is_file():
                raise StageInError(f"input {src_path} not found under {root}", ErrorCode.MISSING_INPUT)
            if self.storage.link_inputs:
                # a link under a temp name, renamed over dst: a stale copy or link is replaced
                # atomically, and a later copy never writes *through* an old link into storage
                tmp = workdir / f".{spec.lfn}.link-{os.getpid()}"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(src)
                size, checksum = src.stat().st_size, adler32_of(src) if spec.adler32 else ""
            else:
                tmp, size, checksum = _copy_to_temp(src, workdir, spec.lfn)
            if spec.fsize and size != spec.fsize:
                raise StageInError(
                    f"{spec.lfn}: size {size} != expected {spec.fsize} ({src_path})", ErrorCode.CHECKSUM_MISMATCH
                )
            if spec.adler32 and checksum != spec.adler32.zfill(8):
                raise StageInError(
                    f"{spec.lfn}: adler32 {checksum} != expected {spec.adler32.zfill(8)} ({src_path})",
                    ErrorCode.CHECKSUM_MISMATCH,
                )
            os.replace(tmp, dst)
            tmp = None
        except OSError as exc:
            raise _oserror(exc, True, what) from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        log.info("staged in %s (%d bytes, %s)", spec.lfn, size, "linked" if self.storage.link_inputs else "copied")
        return dst

    def stage_out(self, local: Path, dest_path: str, *, guid: str) -> OutputFileReport:
        """Copy ``local`` to ``<output_root>/<dest_path>`` via temp + fsync + verify + rename."""
        dest = self.output_root / check_rel_path(dest_path, stage_in=False)
        local = Path(local)
        what = f"stage-out of {local.name} to {dest_path}"
        tmp: Path | None = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp, size, checksum = _copy_to_temp(local, dest.parent, dest.name)
            # verify the bytes that landed at the destination, before they get the final name
            found_size, found_sum = tmp.stat().st_size, adler32_of(tmp)
            if (found_size, found_sum) != (size, checksum):
                raise StageOutError(
                    f"{local.name}: destination has size {found_size} adler32 {found_sum}, "
                    f"source has size {size} adler32 {checksum}",
                    ErrorCode.CHECKSUM_MISMATCH,
                )
            os.replace(tmp, dest)
            tmp = None
            _fsync_dir(dest.parent)
            if dest.stat().st_size != size:  # someone replaced it between rename and now
                raise StageOutError(f"{dest}: size changed after rename", ErrorCode.CHECKSUM_MISMATCH)
        except OSError as exc:
            raise _oserror(exc, False, what) from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        log.info("staged out %s → %s (%d bytes, adler32 %s)", local.name, dest, size, checksum)
        return OutputFileReport(lfn=local.name, guid=guid, fsize=size, adler32=checksum, surl=str(dest))
