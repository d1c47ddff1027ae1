"""The XRootD copytool against a real xrootd server on loopback (started by the session fixture)."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from compass_pilot.config import StorageSection
from compass_pilot.copytools import make_copytool
from compass_pilot.copytools.xrootd import XRootDCopyTool
from compass_pilot.copytools.xrootd_server import XRootDServer
from compass_pilot.errors import ConfigError, ErrorCode, PilotError, StageInError, StageOutError
from compass_pilot.job import FileSpec
from tests.copytools.conftest import require_xrootd_binaries

REPO = Path(__file__).resolve().parents[2]


def _tool(server: XRootDServer, **kw: object) -> XRootDCopyTool:
    settings: dict[str, object] = {"retries": 2, "timeout": 20}
    settings.update(kw)
    storage = StorageSection(
        copytool="xrootd", input_root=f"{server.url}/castor", output_root=f"{server.url}/eos", **settings
    )
    tool = make_copytool(storage)
    assert isinstance(tool, XRootDCopyTool)
    return tool


@pytest.fixture
def tool(xrootd_server: XRootDServer) -> XRootDCopyTool:
    return _tool(xrootd_server)


@pytest.fixture
def own_server() -> Iterator[XRootDServer]:
    """A server of the test's own, for tests that freeze or reconfigure it."""
    require_xrootd_binaries()
    with XRootDServer() as server:
        yield server


def _seed(server: XRootDServer, rel: str, data: bytes) -> FileSpec:
    assert server.data is not None
    path = server.data / "castor" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return FileSpec(Path(rel).name, "input", fsize=len(data), checksum=f"ad:{zlib.adler32(data):08x}")


def _count_runs(tool: XRootDCopyTool, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every client command the tool runs (they still run for real)."""
    calls: list[list[str]] = []
    real = tool._run

    def spy(cmd: list[str], *, stage_in: bool):  # type: ignore[no-untyped-def]
        calls.append(cmd)
        return real(cmd, stage_in=stage_in)

    monkeypatch.setattr(tool, "_run", spy)
    return calls


def test_stage_in_and_out_through_the_server(tool: XRootDCopyTool, xrootd_server: XRootDServer, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    spec = _seed(xrootd_server, "2016/raw/W14/cdr11001-275678.raw", data)
    got = tool.stage_in(spec, "2016/raw/W14/cdr11001-275678.raw", tmp_path)
    assert got == tmp_path / spec.lfn and got.read_bytes() == data
    report = tool.stage_out(got, "P09/mDST.chunks/new/dir/out.root", guid="g1")
    assert xrootd_server.data is not None
    assert (xrootd_server.data / "eos/P09/mDST.chunks/new/dir/out.root").read_bytes() == data
    assert (report.lfn, report.guid, report.fsize, report.adler32) == (spec.lfn, "g1", len(data), spec.adler32)
    assert report.surl == f"{xrootd_server.url}/eos/P09/mDST.chunks/new/dir/out.root"
    assert tool.remote_checksum(report.surl) == spec.adler32  # the server's own adler32 plug-in answers
    assert tool.remote_size(report.surl) == len(data)


def test_stage_out_with_the_agents_sums_is_checked_by_the_server(
    tool: XRootDCopyTool, xrootd_server: XRootDServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node agent's (size, adler32): the MOM node does not read the output for them — the
    server's checksum of what it received must still match, or nothing stays there (1229)."""
    import compass_pilot.copytools as copytools

    local_file = tmp_path / "out.root"
    local_file.write_bytes(b"abc")
    monkeypatch.setattr(copytools, "adler32_of", lambda path: pytest.fail(f"read {path} for its checksum"))
    report = tool.stage_out(local_file, "P09/known/ok.root", guid="g", known=(3, "024d0127"))
    assert (report.fsize, report.adler32) == (3, "024d0127")
    with pytest.raises(StageOutError) as err:  # an agent's sum that is not the file's
        tool.stage_out(local_file, "P09/known/bad.root", guid="g", known=(3, "00000001"))
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH
    assert xrootd_server.data is not None and not (xrootd_server.data / "eos/P09/known/bad.root").exists()


def test_wrong_expected_checksum_is_1229(
    tool: XRootDCopyTool, xrootd_server: XRootDServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _seed(xrootd_server, "2016/raw/W14/cdr11002-275678.raw", b"x" * 5000)
    bad = FileSpec(spec.lfn, "input", fsize=spec.fsize, checksum="ad:00000001")
    calls = _count_runs(tool, monkeypatch)
    with pytest.raises(StageInError) as err:
        tool.stage_in(bad, "2016/raw/W14/cdr11002-275678.raw", tmp_path)
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH and "00000001" in err.value.diag
    assert len(calls) == 1 and "adler32:00000001" in calls[0]  # xrdcp checked it; not retried
    assert not (tmp_path / spec.lfn).exists()


def test_wrong_expected_size_is_1229(tool: XRootDCopyTool, xrootd_server: XRootDServer, tmp_path: Path) -> None:
    spec = _seed(xrootd_server, "2016/raw/W14/cdr11003-275678.raw", b"y" * 5000)
    bad = FileSpec(spec.lfn, "input", fsize=4999)
    with pytest.raises(StageInError) as err:
        tool.stage_in(bad, "2016/raw/W14/cdr11003-275678.raw", tmp_path)
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH and "5000" in err.value.diag and "4999" in err.value.diag
    assert not (tmp_path / spec.lfn).exists()


def test_file_corrupted_on_the_server_before_stage_in(
    tool: XRootDCopyTool, xrootd_server: XRootDServer, tmp_path: Path
) -> None:
    spec = _seed(xrootd_server, "2016/raw/W14/cdr11004-275678.raw", b"good data" * 1000)
    assert xrootd_server.data is not None
    (xrootd_server.data / "castor/2016/raw/W14/cdr11004-275678.raw").write_bytes(b"bad! data" * 1000)  # bit rot
    with pytest.raises(StageInError) as err:
        tool.stage_in(spec, "2016/raw/W14/cdr11004-275678.raw", tmp_path)
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH


def test_file_corrupted_on_the_server_between_upload_and_verify(
    tool: XRootDCopyTool, xrootd_server: XRootDServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's own adler32 of what it stores is compared: corruption after the upload is caught."""
    local_file = tmp_path / "m.root"
    local_file.write_bytes(b"good data" * 1000)
    assert xrootd_server.data is not None
    stored = xrootd_server.data / "eos/P09/mDST/m.root"
    real_size = tool.remote_size

    def corrupt_then_stat(url: str, *, stage_in: bool = False) -> int:
        stored.write_bytes(b"bad! data" * 1000)  # same size: only the checksum can tell
        return real_size(url, stage_in=stage_in)

    monkeypatch.setattr(tool, "remote_size", corrupt_then_stat)
    with pytest.raises(StageOutError) as err:
        tool.stage_out(local_file, "P09/mDST/m.root", guid="g")
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH
    good = f"{zlib.adler32(b'good data' * 1000):08x}"
    bad = f"{zlib.adler32(b'bad! data' * 1000):08x}"
    assert good in err.value.diag and bad in err.value.diag and "(server)" in err.value.diag
    assert not stored.exists()  # the unverified copy does not stay under the final name


def test_missing_input_is_1331_without_retries(
    tool: XRootDCopyTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_runs(tool, monkeypatch)
    with pytest.raises(StageInError) as err:
        tool.stage_in(FileSpec("cdr19999-275678.raw", "input"), "2016/raw/W14/cdr19999-275678.raw", tmp_path)
    assert err.value.code == ErrorCode.MISSING_INPUT and "[3011]" in err.value.diag
    assert err.value.diag.isprintable()  # xrdcp's message ends in a NUL; PanDA must not get it
    assert "cdr19999-275678.raw" in err.value.diag
    assert len(calls) == 1


def test_permission_denied_on_the_server(tool: XRootDCopyTool, xrootd_server: XRootDServer, tmp_path: Path) -> None:
    """Files and dirs the server's user may not touch: 1175 on stage-in, 1176 on stage-out."""
    assert xrootd_server.data is not None
    _seed(xrootd_server, "private/secret.raw", b"s" * 100)
    (xrootd_server.data / "castor/private/secret.raw").chmod(0o600)  # root's, unreadable to xrootd
    with pytest.raises(StageInError) as err:
        tool.stage_in(FileSpec("secret.raw", "input"), "private/secret.raw", tmp_path)
    assert err.value.code == ErrorCode.STAGE_IN_PERMISSION and "[3010]" in err.value.diag
    locked = xrootd_server.data / "eos/locked"
    locked.mkdir(parents=True, exist_ok=True)  # owned by root, 0755: xrootd cannot create files in it
    (tmp_path / "o.root").write_bytes(b"o" * 100)
    with pytest.raises(StageOutError) as err:
        tool.stage_out(tmp_path / "o.root", "locked/o.root", guid="g")
    assert err.value.code == ErrorCode.STAGE_OUT_PERMISSION
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/x", "a//b", "a\x00b", "a\rb"])
def test_hostile_paths_refused(tool: XRootDCopyTool, tmp_path: Path, path: str) -> None:
    with pytest.raises(StageInError, match="refused"):
        tool.stage_in(FileSpec("x", "input"), path, tmp_path)
    (tmp_path / "x").write_text("x")
    with pytest.raises(StageOutError, match="refused"):
        tool.stage_out(tmp_path / "x", path, guid="g")


@pytest.mark.parametrize("lfn", ["../escaped.raw", "/tmp/compass-escaped.raw", "sub/x.raw", ".."])
def test_hostile_lfn_refused(tool: XRootDCopyTool, xrootd_server: XRootDServer, tmp_path: Path, lfn: str) -> None:
    """xrdcp writes straight to ``workdir / lfn``: an lfn with a '/' would land outside the work dir."""
    good = _seed(xrootd_server, "hostile-lfn.raw", b"payload")
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    with pytest.raises(StageInError, match="refused stage-in file name"):
        tool.stage_in(FileSpec(lfn, "input", checksum=good.checksum), "castor/hostile-lfn.raw", work)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["work"] and not list(work.iterdir())
    assert not Path("/tmp/compass-escaped.raw").exists()
    assert xrootd_server.export == xrootd_server.data


@pytest.mark.parametrize(
    "root", ["/local/dir", "http://host//x", "root://", "root://-oops:1094//x", "root://h:1//x?xrd.wantprot=unix"]
)
def test_bad_roots_are_config_errors(root: str) -> None:
    with pytest.raises(ConfigError, match=r"storage\.input_root"):
        XRootDCopyTool(StorageSection(copytool="xrootd", input_root=root, output_root="root://h:1//eos"))


def test_work_dir_named_like_an_option(
    tool: XRootDCopyTool, xrootd_server: XRootDServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _seed(xrootd_server, "2016/raw/W14/cdr11005-275678.raw", b"z" * 300)
    monkeypatch.chdir(tmp_path)
    Path("-work").mkdir()
    got = tool.stage_in(spec, "2016/raw/W14/cdr11005-275678.raw", Path("-work"))
    assert got == tmp_path / "-work" / spec.lfn and got.read_bytes() == b"z" * 300


def test_refused_connection_is_retried_then_a_clear_error(
    tmp_path: Path, own_server: XRootDServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = _tool(own_server, retries=2, timeout=10)
    own_server.stop()  # nothing listens on that port any more
    calls = _count_runs(dead, monkeypatch)
    start = time.monotonic()
    with pytest.raises(StageInError) as err:
        dead.stage_in(FileSpec("a.raw", "input"), "a.raw", tmp_path)
    assert err.value.code == ErrorCode.STAGE_IN_FAILED
    assert "after 2 attempts" in err.value.diag and "(exit 51)" in err.value.diag
    assert len(calls) == 2 and time.monotonic() - start < 10


def test_hung_server_times_out_with_1151_and_1152(own_server: XRootDServer, tmp_path: Path) -> None:
    """A server that accepts connections but never answers: no hang, the timeout codes, within the timeout."""
    hung = _tool(own_server, retries=3, timeout=2)
    spec = _seed(own_server, "a.raw", b"a" * 100)
    (tmp_path / "o.root").write_bytes(b"o" * 100)
    assert own_server.pid is not None
    os.killpg(own_server.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(PilotError) as err:
            hung.stage_in(spec, "a.raw", tmp_path)
        assert err.value.code == ErrorCode.STAGE_IN_TIMEOUT, err.value.diag
        assert time.monotonic() - start < 2 + 3  # one attempt: timeouts are not retried
        start = time.monotonic()
        with pytest.raises(PilotError) as err:
            hung.stage_out(tmp_path / "o.root", "o.root", guid="g")
        assert err.value.code == ErrorCode.STAGE_OUT_TIMEOUT, err.value.diag
        assert time.monotonic() - start < 2 + 3
    finally:
        os.killpg(own_server.pid, signal.SIGCONT)


def test_server_without_checksum_plugin_falls_back_to_read_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_xrootd_binaries()
    with XRootDServer(checksum=False) as server:
        tool = _tool(server)
        local_file = tmp_path / "m.root"
        local_file.write_bytes(os.urandom(10_000))
        with caplog.at_level(logging.INFO, logger="compass_pilot.copytools.xrootd"):
            report = tool.stage_out(local_file, "P09/m.root", guid="g")
        assert tool.remote_checksum(report.surl) is None  # the server really has no checksum
        assert "verified by read back" in caplog.text
        assert report.adler32 == f"{zlib.adler32(local_file.read_bytes()):08x}"


def test_server_script_starts_serves_and_stops(shared_tmp: Path) -> None:
    """scripts/xrootd_server.py: prints the URL when ready, serves the export dir, stops cleanly on SIGTERM."""
    require_xrootd_binaries()
    export = shared_tmp / "export"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts/xrootd_server.py"), "--export", str(export)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "scripts/xrootd_server.py printed nothing within 30 s"
        first = proc.stdout.readline()  # the script prints the URL once the server is ready
        assert first.startswith("url=root://127.0.0.1:"), (first, proc.stderr.read() if proc.poll() else "")
        url = first.strip().removeprefix("url=")
        (export / "hello.txt").write_text("hello")
        done = subprocess.run(
            ["xrdfs", url.removeprefix("root://").rstrip("/"), "stat", "/hello.txt"],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "XRD_CONNECTIONRETRY": "1"},
        )
        assert done.returncode == 0 and "Size:   5" in done.stdout, done.stderr
    finally:
        proc.terminate()
        code = proc.wait(15)
    assert code == 0
    assert export.is_dir()  # a given export dir is kept
