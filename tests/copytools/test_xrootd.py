"""The XRootD copytool against a real xrootd server on loopback."""

from __future__ import annotations

import os
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from compass_pilot.config import StorageSection
from compass_pilot.copytools import make_copytool
from compass_pilot.copytools.xrootd import XRootDCopyTool
from compass_pilot.copytools.xrootd_server import XRootDServer
from compass_pilot.errors import ErrorCode, PilotError, StageInError, StageOutError
from compass_pilot.job import FileSpec


@pytest.fixture(scope="module")
def server() -> Iterator[XRootDServer]:
    with XRootDServer() as srv:
        yield srv


@pytest.fixture
def tool(server: XRootDServer) -> XRootDCopyTool:
    storage = StorageSection(
        copytool="xrootd", input_root=f"{server.url}/castor", output_root=f"{server.url}/eos", retries=2, timeout=30
    )
    copytool = make_copytool(storage)
    assert isinstance(copytool, XRootDCopyTool)
    return copytool


def _seed(server: XRootDServer, rel: str, data: bytes) -> FileSpec:
    path = server.data / "castor" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    server.give_to_server(server.data / "castor")
    return FileSpec(Path(rel).name, "input", fsize=len(data), checksum=f"ad:{zlib.adler32(data):08x}")


def test_stage_in_and_out_through_the_server(tool: XRootDCopyTool, server: XRootDServer, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    spec = _seed(server, "2016/raw/W14/cdr11001-275678.raw", data)
    got = tool.stage_in(spec, "2016/raw/W14/cdr11001-275678.raw", tmp_path)
    assert got.read_bytes() == data
    report = tool.stage_out(got, "P09/mDST.chunks/out.root", guid="g1")
    assert (server.data / "eos/P09/mDST.chunks/out.root").read_bytes() == data
    assert report.adler32 == spec.adler32 and report.fsize == len(data)
    assert report.surl.endswith("/eos/P09/mDST.chunks/out.root")
    assert tool.remote_checksum(report.surl) == spec.adler32  # the server's own adler32 was used


def test_wrong_expected_checksum_is_1229(tool: XRootDCopyTool, server: XRootDServer, tmp_path: Path) -> None:
    spec = _seed(server, "2016/raw/W14/cdr11002-275678.raw", b"x" * 5000)
    bad = FileSpec(spec.lfn, "input", fsize=spec.fsize, checksum="ad:00000001")
    with pytest.raises(StageInError) as err:
        tool.stage_in(bad, "2016/raw/W14/cdr11002-275678.raw", tmp_path)
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH
    assert not (tmp_path / spec.lfn).exists()


def test_corruption_on_the_server_is_detected(tool: XRootDCopyTool, server: XRootDServer, tmp_path: Path) -> None:
    local = tmp_path / "m.root"
    local.write_bytes(b"good data" * 1000)
    tool.stage_out(local, "P09/mDST/m.root", guid="g")
    # bit rot at the destination; the server keeps serving its stored checksum, as EOS does,
    # so only the reader's own adler32 of the bytes it received can catch it
    (server.data / "eos/P09/mDST/m.root").write_bytes(b"bad! data" * 1000)
    spec = FileSpec("m.root", "input", fsize=9000, checksum=f"ad:{zlib.adler32(local.read_bytes()):08x}")
    reader = XRootDCopyTool(
        StorageSection(
            copytool="xrootd", input_root=tool.output_root, output_root=tool.output_root, retries=1, timeout=30
        )
    )
    with pytest.raises(StageInError) as err:
        reader.stage_in(spec, "P09/mDST/m.root", tmp_path / "in")
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH


def test_missing_input_is_1331(tool: XRootDCopyTool, tmp_path: Path) -> None:
    spec = FileSpec("cdr19999-275678.raw", "input")
    with pytest.raises(StageInError) as err:
        tool.stage_in(spec, "2016/raw/W14/cdr19999-275678.raw", tmp_path)
    assert err.value.code == ErrorCode.MISSING_INPUT and "3011" in err.value.diag


def test_hostile_paths_refused(tool: XRootDCopyTool, tmp_path: Path) -> None:
    with pytest.raises(StageInError, match="refused"):
        tool.stage_in(FileSpec("x", "input"), "../../etc/passwd", tmp_path)
    (tmp_path / "x").write_text("x")
    with pytest.raises(StageOutError, match="refused"):
        tool.stage_out(tmp_path / "x", "/etc/x", guid="g")


def test_dead_server_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tool = XRootDCopyTool(
        StorageSection(
            copytool="xrootd",
            input_root=f"root://127.0.0.1:{port}//castor",
            output_root=f"root://127.0.0.1:{port}//eos",
            retries=2,
            timeout=20,
        )
    )
    start = time.monotonic()
    with pytest.raises(PilotError) as err:
        tool.stage_in(FileSpec("a.raw", "input"), "a.raw", tmp_path)
    assert err.value.code in (ErrorCode.STAGE_IN_FAILED, ErrorCode.STAGE_IN_TIMEOUT)
    assert time.monotonic() - start < 60
