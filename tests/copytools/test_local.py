"""The local copytool on real files: checksums, codes, atomic stage-out, a really full disk."""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

import pytest

from compass_pilot.config import StorageSection
from compass_pilot.copytools import adler32_of, make_copytool
from compass_pilot.copytools.local import LocalCopyTool
from compass_pilot.errors import ErrorCode, PilotError, StageInError, StageOutError
from compass_pilot.job import FileSpec


@pytest.fixture
def tool(tmp_path: Path) -> LocalCopyTool:
    (tmp_path / "in" / "2016/raw/W14").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    return LocalCopyTool(StorageSection(input_root=str(tmp_path / "in"), output_root=str(tmp_path / "out")))


def _raw(tool: LocalCopyTool, data: bytes = b"raw data " * 1000) -> tuple[Path, FileSpec]:
    path = tool.input_root / "2016/raw/W14/cdr11001-275678.raw"
    path.write_bytes(data)
    spec = FileSpec("cdr11001-275678.raw", "input", fsize=len(data), checksum=f"ad:{zlib.adler32(data):08x}")
    return path, spec


def test_adler32_matches_zlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "f").write_bytes(data)
    assert adler32_of(tmp_path / "f") == f"{zlib.adler32(data):08x}"


def test_stage_in_copy_and_link(tool: LocalCopyTool, tmp_path: Path) -> None:
    src, spec = _raw(tool)
    got = tool.stage_in(spec, "2016/raw/W14/cdr11001-275678.raw", tmp_path / "work")
    assert got.read_bytes() == src.read_bytes() and not got.is_symlink()
    tool.storage.link_inputs = True
    linked = tool.stage_in(spec, "2016/raw/W14/cdr11001-275678.raw", tmp_path / "work")
    assert linked.is_symlink() and linked.resolve() == src.resolve()


def test_stage_in_detects_corruption_and_missing(tool: LocalCopyTool, tmp_path: Path) -> None:
    src, spec = _raw(tool)
    src.write_bytes(src.read_bytes()[:-1] + b"X")  # same size, different content
    with pytest.raises(StageInError) as err:
        tool.stage_in(spec, "2016/raw/W14/cdr11001-275678.raw", tmp_path / "work")
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH and spec.adler32 in err.value.diag
    with pytest.raises(StageInError) as err:
        tool.stage_in(spec, "2016/raw/W14/cdr99999-275678.raw", tmp_path / "work")
    assert err.value.code == ErrorCode.MISSING_INPUT


@pytest.mark.parametrize("path", ["/etc/passwd", "../../etc/passwd", "a/../b", "a//b", "x\x00y", ""])
def test_hostile_paths_refused(tool: LocalCopyTool, tmp_path: Path, path: str) -> None:
    _, spec = _raw(tool)
    with pytest.raises(StageInError, match="refused storage path"):
        tool.stage_in(spec, path, tmp_path / "work")
    (tmp_path / "work" / "x.root").write_text("x")
    with pytest.raises(StageOutError, match="refused storage path"):
        tool.stage_out(tmp_path / "work" / "x.root", path, guid="g")


def test_stage_out_verified_and_reported(tool: LocalCopyTool, tmp_path: Path) -> None:
    local = tmp_path / "work" / "mDST-275678-11001-2-7.root"
    local.write_bytes(os.urandom(100_000))
    report = tool.stage_out(local, "P09/mDST.chunks/mDST-275678-11001-2-7.root", guid="guid-1")
    dest = tool.output_root / "P09/mDST.chunks/mDST-275678-11001-2-7.root"
    assert dest.read_bytes() == local.read_bytes()
    assert (report.lfn, report.guid, report.fsize, report.adler32, report.surl) == (
        local.name,
        "guid-1",
        100_000,
        adler32_of(local),
        str(dest),
    )


def test_stage_out_is_atomic(tool: LocalCopyTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "work" / "big.root"
    local.write_bytes(os.urandom(3 * 1024 * 1024))

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StageOutError) as err:
        tool.stage_out(local, "P09/mDST/big.root", guid="g")
    assert err.value.code == ErrorCode.STAGE_OUT_FAILED
    assert list((tool.output_root / "P09/mDST").iterdir()) == []  # no half file, no temp file


def test_full_disk_is_1098(tmp_path: Path) -> None:
    """A real full file system: a 256 kB tmpfs (the tests run as root, as CI does)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    assert done.returncode == 0, f"cannot mount a tmpfs: {done.stderr.decode()}"
    try:
        tool = make_copytool(StorageSection(input_root=str(tmp_path), output_root=str(mount)))
        local = tmp_path / "big.root"
        local.write_bytes(os.urandom(1024 * 1024))
        with pytest.raises(PilotError) as err:
            tool.stage_out(local, "P09/big.root", guid="g")
        assert err.value.code == ErrorCode.NO_LOCAL_SPACE
        assert not (mount / "P09/big.root").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=False)
