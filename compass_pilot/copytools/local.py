"""Local-filesystem copytool: the shared file system of an HPC site, or the demo's dirs.

Both directions write to a temporary name in the target directory, verify, and only
then rename: a pilot killed mid-copy, or a copy that does not verify, never leaves a
half or corrupt file under the final name — which a merge job would otherwise pick up
as a finished output.

Durability is paid only where a crash would break a promise:

- **stage-in: never synced.**  An input in a work dir is a cache of storage: after a
  crash the job is started again (a new attempt, a new work dir) and fetches it again;
  size and adler32 are still checked, which is what makes a stage-in trustworthy.
- **stage-out: durable before PanDA hears of it.**  One file at a time (the default,
  grid mode) it is fsync'd before its rename and its directory after.  The daemon
  stages a whole burst through :meth:`LocalCopyTool.burst` instead: every copy is
  written and renamed, then :meth:`DurableBurst.sync` makes all of them durable at
  once (``fsync`` of each file after all writes were issued, one ``fsync`` per
  directory), before the burst's finals are journaled and reported.  A node crash in
  that window can leave an unsynced copy under its final name, but no report claims
  it: the restarted daemon stages that job out again over it.

An output whose work dir is on the destination's file system is hard-linked
(``storage.link_outputs``, on by default): the payload has ended, its work dir is
removed once the job is reported, so a second name for the same bytes is a copy that
costs no data written and no new inode; it is read once for its adler32.  Across file
systems, or where links are refused, the bytes are copied.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import os
import tempfile
import threading
import zlib
from pathlib import Path

from compass_pilot.config import StorageSection, expand
from compass_pilot.copytools import BLOCK, adler32_of, check_lfn, check_rel_path, source_root, source_sums
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


def _copy_to_temp(src: Path, directory: Path, name: str, durable: bool = True) -> tuple[Path, int, str]:
    """Copy ``src`` to a fresh temp file in ``directory`` (fsync'd if ``durable``).

    Returns (temp, size, adler32 of src).  The checksum is computed from the bytes read, so the source is read once.
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
            if durable:
                os.fsync(fout.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, size, f"{value & 0xFFFFFFFF:08x}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: without it a node crash can forget the new directory entry."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TEMP_SEQ = itertools.count()
#: A hard link refused: another file system, protected links, too many links, no links at all.
_LINK_REFUSED = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES)


def _link_to_temp(src: Path, directory: Path, name: str) -> tuple[Path, int, str] | None:
    """Hard-link ``src`` under a fresh temp name in ``directory``; None where a link cannot be made.

    Returns (temp, size, adler32) like :func:`_copy_to_temp`; the mode is made 0644 as a
    copy's would be (the inode is the work dir file's: nothing reads that name any more).
    """
    for _ in range(100):  # a link never overwrites: a name taken (another host, same pid) means the next one
        tmp = directory / f".{name}.{os.getpid()}.{next(_TEMP_SEQ)}.part"
        try:
            os.link(src, tmp)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno in _LINK_REFUSED:
                return None  # another file system, protected links, or a file system without them: copy
            raise
    else:
        return None
    try:
        info = tmp.stat()
        if info.st_mode & 0o777 != 0o644:
            os.chmod(tmp, 0o644)
        return tmp, info.st_size, adler32_of(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _syncfs(directory: Path) -> None:
    """``syncfs(2)`` of the file system holding ``directory``; OSError when it fails or is missing."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC is None or _LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno() if _LIBC is not None else errno.ENOSYS
            raise OSError(err, os.strerror(err), str(directory))
    finally:
        os.close(fd)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        numbers = os.uname().release.split("-")[0].split(".")
        return (int(numbers[0]), int(numbers[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


#: Since Linux 5.8 ``syncfs`` reports a writeback error of the file system; before, only
#: an ``fsync`` of the file itself does.
SYNCFS_REPORTS_ERRORS = _kernel_at_least(5, 8)


class LocalCopyTool:
    """Copy (or symlink, with ``storage.link_inputs``) from ``input_root``; copy or link to ``output_root``."""

    #: Stage-out threads worth running (the daemon's ``hpc.transfer_threads`` is for remote
    #: copytools, whose transfers wait on the network): a local one is this process's own
    #: CPU and metadata calls, and more threads only queue for the GIL — 512 jobs took 0.9 s
    #: on 8 threads, 0.7 s on one; two overlap one file's read with the next one's calls.
    max_threads = 2

    def __init__(self, storage: StorageSection) -> None:
        self.storage = storage
        self.input_root = Path(expand(storage.input_root or ".")).absolute()
        self.output_root = Path(expand(storage.output_root or ".")).absolute()
        self._made_dirs: set[Path] = set()  # destination dirs known to exist (one mkdir per dir, not per file)

    def _dest_dir(self, directory: Path) -> None:
        if directory not in self._made_dirs:
            directory.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(directory)

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
            else:  # not synced: a lost input is fetched again (module docstring)
                tmp, size, checksum = _copy_to_temp(src, workdir, spec.lfn, durable=False)
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

    def _link_direct(
        self, local: Path, dest: Path, durable: bool, known: tuple[int, str] | None = None
    ) -> tuple[int, str] | None:
        """Hard-link ``local`` at ``dest`` itself: (size, adler32), or None to go the temp-name way.

        The fast path of a first stage-out on the same file system: one metadata
        operation, where temp + rename is three (a file system busy committing its
        journal makes each of them wait).  A link is atomic and its inode complete
        (the payload ended), so no reader ever sees part of it.  Anything already at
        ``dest``, or a link refused, returns None: the temp name + rename replaces it.
        """
        try:
            self._dest_dir(dest.parent)
            os.link(local, dest)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno in _LINK_REFUSED or exc.errno == errno.ENOENT:
                return None  # a copy, or the temp-name way's own error and retry
            raise
        try:
            info = os.stat(dest)
            if info.st_mode & 0o777 != 0o644:
                os.chmod(dest, 0o644)
            checksum = source_sums(dest, info.st_size, known)  # the same inode: the agent's sum, if it gave one
            if durable:
                _fsync_file(dest)
                _fsync_dir(dest.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dest)  # our own link: nothing was there before it
            raise
        return info.st_size, checksum

    def _put_temp(self, local: Path, dest: Path, durable: bool) -> tuple[Path, int, str, int, str]:
        """``local``'s bytes under a temp name next to ``dest``: (temp, size, adler32, size and adler32 found there)."""
        self._dest_dir(dest.parent)
        linked = _link_to_temp(local, dest.parent, dest.name) if self.storage.link_outputs else None
        if linked is not None:
            tmp, size, checksum = linked
        else:
            tmp, size, checksum = _copy_to_temp(local, dest.parent, dest.name, durable)
        try:
            if linked is not None:  # the same inode: read once, nothing to compare against
                if durable:
                    _fsync_file(tmp)
                return tmp, size, checksum, size, checksum
            # verify the bytes that landed at the destination, before they get the final name
            return tmp, size, checksum, tmp.stat().st_size, adler32_of(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def burst(self) -> DurableBurst:
        """A stage-out session whose copies are made durable together by one :meth:`DurableBurst.sync`."""
        return DurableBurst(self)

    def stage_out(
        self,
        local: Path,
        dest_path: str,
        *,
        guid: str,
        durable: bool = True,
        known: tuple[int, str] | None = None,
    ) -> OutputFileReport:
        """Copy ``local`` to ``<output_root>/<dest_path>`` via temp + verify + rename.

        ``durable``: fsync the copy before its rename and the directory after; without
        it the caller owes a sync before it reports the file (:class:`DurableBurst`).
        ``known``: the node agent's (size, adler32): a hard link is not read for its
        checksum; a copy, which reads the bytes anyway, must match it (1229 otherwise).
        """
        dest = self.output_root / check_rel_path(dest_path, stage_in=False)
        local = Path(local)
        what = f"stage-out of {local.name} to {dest_path}"
        tmp: Path | None = None
        try:
            linked = self._link_direct(local, dest, durable, known) if self.storage.link_outputs else None
            if linked is not None:
                size, checksum = linked
                log.info("staged out %s → %s (%d bytes, adler32 %s, linked)", local.name, dest, size, checksum)
                return OutputFileReport(lfn=local.name, guid=guid, fsize=size, adler32=checksum, surl=str(dest))
            try:
                tmp, size, checksum, found_size, found_sum = self._put_temp(local, dest, durable)
            except FileNotFoundError:
                if dest.parent.is_dir() or dest.parent not in self._made_dirs:
                    raise
                self._made_dirs.discard(dest.parent)  # removed since we made it: once more
                tmp, size, checksum, found_size, found_sum = self._put_temp(local, dest, durable)
            if known is not None and source_sums(local, size, known) != checksum:
                raise StageOutError(
                    f"{local.name}: adler32 {checksum} differs from the {known[1]} the node agent measured",
                    ErrorCode.CHECKSUM_MISMATCH,
                )
            if (found_size, found_sum) != (size, checksum):
                raise StageOutError(
                    f"{local.name}: destination has size {found_size} adler32 {found_sum}, "
                    f"source has size {size} adler32 {checksum}",
                    ErrorCode.CHECKSUM_MISMATCH,
                )
            os.replace(tmp, dest)
            # a rename onto another link of the same inode (this output linked there already, by a
            # daemon that died before reporting it) does nothing: the temp name must still go
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            tmp = None
            if durable:
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


class DurableBurst:
    """Stage-outs of one burst (many jobs, many threads), made durable together.

    Why: an fsync per file and per directory made the daemon's stage-out of 512 jobs
    (2,048 files) seconds long.  Written first and synced after, the disk sees the
    burst's data as one stream and the file system commits its journal once; the
    later fsyncs find their inodes clean.  :meth:`sync` returns the files that could
    not be made durable, so only their jobs fail.
    """

    def __init__(self, tool: LocalCopyTool) -> None:
        self.tool = tool
        self.max_threads = tool.max_threads
        self._lock = threading.Lock()
        self._written: list[str] = []

    def stage_in(self, spec: FileSpec, src_path: str, workdir: Path) -> Path:
        return self.tool.stage_in(spec, src_path, workdir)

    def stage_out(
        self, local: Path, dest_path: str, *, guid: str, known: tuple[int, str] | None = None
    ) -> OutputFileReport:
        report = self.tool.stage_out(local, dest_path, guid=guid, durable=False, known=known)
        with self._lock:
            self._written.append(report.surl)
        return report

    def sync(self) -> dict[str, PilotError]:
        """Make every copy staged out since the last sync durable; returns ``{surl: error}`` of those that failed.

        A copy that cannot be synced is removed from its final name (no report will
        claim it; a retry writes it again).
        """
        with self._lock:
            written, self._written = self._written, []
        if not written:
            return {}
        failed: dict[str, PilotError] = {}
        directories = sorted({os.path.dirname(path) for path in written})
        try:
            for directory in {os.stat(d).st_dev: d for d in directories}.values():
                _syncfs(Path(directory))  # one journal commit for the whole burst
            if SYNCFS_REPORTS_ERRORS:
                return {}
        except OSError as exc:
            log.debug("syncfs failed (%s): syncing file by file", exc)
        # file by file: which file failed is known (and an older kernel's syncfs said nothing)
        for path in written:
            try:
                _fsync_file(Path(path))
            except OSError as exc:
                failed[path] = _oserror(exc, False, f"stage-out of {os.path.basename(path)}: sync")
        for directory in directories:
            try:
                _fsync_dir(Path(directory))
            except OSError as exc:
                for path in written:
                    if os.path.dirname(path) == directory:
                        failed.setdefault(path, _oserror(exc, False, f"stage-out of {path}: directory sync"))
        for surl, error in failed.items():
            with contextlib.suppress(OSError):
                os.unlink(surl)
            log.error("%s", error.diag)
        return failed
