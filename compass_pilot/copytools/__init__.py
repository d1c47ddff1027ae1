"""Copytools: how inputs get into a job's work dir and outputs to their destination.

Every copytool verifies what it moved (size and adler32, PanDA's checksum) and maps
failures to pilot error codes: missing input 1331, permission 1175/1176, checksum or
size mismatch 1229, no local space 1098, transfer timeout 1151/1152, other stage-in/out
failures 1099/1137.  Storage paths come from the job spec — from the network — so they
are checked here, once, before any tool turns them into a file name or a URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from compass_pilot.checksums import BLOCK, adler32_of
from compass_pilot.config import StorageSection
from compass_pilot.errors import ErrorCode, StageInError, StageOutError
from compass_pilot.job import FileSpec, OutputFileReport

__all__ = [
    "BLOCK",
    "CopyTool",
    "adler32_of",
    "check_lfn",
    "check_rel_path",
    "make_copytool",
    "source_root",
    "source_sums",
]


class CopyTool(Protocol):
    """What the job lifecycle needs from a storage backend (docs/INTERFACES.md, "copytools")."""

    def stage_in(self, spec: FileSpec, src_path: str, workdir: Path) -> Path:
        """Bring ``src_path`` (relative to the input root) to ``workdir/spec.lfn``, verified."""
        ...

    def stage_out(
        self, local: Path, dest_path: str, *, guid: str, known: tuple[int, str] | None = None
    ) -> OutputFileReport:
        """Put ``local`` at ``dest_path`` (relative to the output root), verified at the destination.

        ``known``: (size, adler32) the node agent measured where the output was written
        (:func:`source_sums`); the source is then not read again for its checksum."""
        ...


def source_sums(local: Path | str, size: int, known: tuple[int, str] | None) -> str:
    """The adler32 of an output of ``size`` bytes about to be staged out.

    Why: the node agent takes (size, adler32) where the payload just wrote the file — on
    every node at once, from the page cache — and the MOM-node daemon stages out 512 jobs'
    outputs one burst after another; reading every byte again there for the checksum made
    the daemon's stage-out (and its file system) the wave's bottleneck.  So ``known`` is
    used when the size still agrees; a different size means the file changed after the
    payload ended, and the stage-out fails (1229) rather than report another file's sum.
    """
    if known is None:
        return adler32_of(local)
    if known[0] != size:
        raise StageOutError(
            f"{Path(local).name}: size {size} differs from the {known[0]} the node agent measured",
            ErrorCode.CHECKSUM_MISMATCH,
        )
    return known[1]


def check_rel_path(path: str, *, stage_in: bool) -> str:
    """A storage path from the job spec: relative, no ``..`` / ``.`` / empty parts, no NUL or control chars.

    The path is joined to a storage root, so an absolute path or a ``..`` would read or
    write outside it; a control character would corrupt logs and the line-based output
    of ``xrdfs``.  Raises StageInError / StageOutError naming the path.
    """
    error = StageInError if stage_in else StageOutError
    direction = "stage-in" if stage_in else "stage-out"
    if not isinstance(path, str) or not path:
        raise error(f"refused {direction} storage path {path!r}: must be a non-empty string")
    if "\x00" in path:
        raise error(f"refused {direction} storage path {path!r}: contains a NUL byte")
    printable_ascii = path.isascii() and path.isprintable()  # the usual path: no loop per character
    if not printable_ascii and any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise error(f"refused {direction} storage path {path!r}: contains a control character")
    if path.startswith("/"):
        raise error(f"refused {direction} storage path {path!r}: must be relative to the storage root")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise error(f"refused {direction} storage path {path!r}: empty, '.' or '..' component")
    return path


def check_lfn(lfn: str) -> str:
    """A work-dir file name from the job spec: one plain path component.

    The job parser checks names too, but a copytool joins ``spec.lfn`` to the work dir
    itself, and ``workdir / "/abs"`` or ``workdir / "../x"`` would write outside it —
    so the copytool refuses such a name itself rather than trust every caller.
    """
    if (
        not isinstance(lfn, str)
        or lfn in ("", ".", "..")
        or "/" in lfn
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in lfn)
    ):
        raise StageInError(f"refused stage-in file name {lfn!r}: must be one plain path component")
    return lfn


def source_root(storage: StorageSection, spec: FileSpec, input_root: str, output_root: str) -> str:
    """Raw data comes from the input storage; outputs of earlier jobs (merge inputs), whose
    ``ddmEndPointIn`` names the output endpoint, from the output storage."""
    return output_root if spec.ddm_endpoint and spec.ddm_endpoint == storage.output_endpoint else input_root


def make_copytool(storage: StorageSection) -> CopyTool:
    """The copytool the site config selects (``storage.copytool``: ``local`` or ``xrootd``)."""
    if storage.copytool == "xrootd":
        from compass_pilot.copytools.xrootd import XRootDCopyTool

        return XRootDCopyTool(storage)
    if storage.copytool == "local":
        from compass_pilot.copytools.local import LocalCopyTool

        return LocalCopyTool(storage)
    raise ValueError(f"storage.copytool: unknown copytool {storage.copytool!r} (expected 'local' or 'xrootd')")
