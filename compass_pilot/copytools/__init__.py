"""Copytools: how inputs get into a job's work dir and outputs to their destination.

Every copytool verifies what it moved (size and adler32, PanDA's checksum) and maps
failures to pilot error codes: missing input 1331, permission 1175/1176, checksum or
size mismatch 1229, no local space 1098, other stage-in/out failures 1099/1137.
Storage paths come from the job spec — from the network — so they are checked here,
once, before any tool sees them.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Protocol

from compass_pilot.config import StorageSection
from compass_pilot.errors import StageInError, StageOutError
from compass_pilot.job import FileSpec, OutputFileReport

BLOCK = 1024 * 1024


class CopyTool(Protocol):
    def stage_in(self, spec: FileSpec, src_path: str, workdir: Path) -> Path: ...
    def stage_out(self, local: Path, dest_path: str, *, guid: str) -> OutputFileReport: ...


def adler32_of(path: Path) -> str:
    """Streaming adler32 of a file: 8 lower-case hex digits, as PanDA stores it."""
    value = 1
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            value = zlib.adler32(block, value)
    return f"{value & 0xFFFFFFFF:08x}"


def check_rel_path(path: str, *, stage_in: bool) -> str:
    """A storage path from the job spec: relative, no '..' or empty parts, no NUL."""
    error = StageInError if stage_in else StageOutError
    if not path or path.startswith("/") or "\x00" in path:
        raise error(f"refused storage path {path!r}: must be relative and non-empty")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise error(f"refused storage path {path!r}: empty, '.' or '..' component")
    return path


def source_root(storage: StorageSection, spec: FileSpec, input_root: str, output_root: str) -> str:
    """Raw data comes from the input storage; outputs of earlier jobs (merge inputs), whose
    ``ddmEndPointIn`` names the output endpoint, from the output storage."""
    return output_root if spec.ddm_endpoint and spec.ddm_endpoint == storage.output_endpoint else input_root


def make_copytool(storage: StorageSection) -> CopyTool:
    """The copytool the site config selects."""
    if storage.copytool == "xrootd":
        from compass_pilot.copytools.xrootd import XRootDCopyTool

        return XRootDCopyTool(storage)
    from compass_pilot.copytools.local import LocalCopyTool

    return LocalCopyTool(storage)
