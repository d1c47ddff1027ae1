"""The calibration DB with a real mariadbd: snapshots, node sharing, failures."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

import calibdb
from calibdb.backends import find_mariadbd
from compass_pilot.config import CalibDBSection
from compass_pilot.errors import CalibDBError, ErrorCode


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    find_mariadbd()  # fails the session clearly when MariaDB is not installed
    cache = tmp_path_factory.mktemp("calib-snapshots")
    tar = cache / "calib.tar"
    calibdb.build_snapshot(calibdb.snapshot.DEMO_DUMP, tar, "mariadb")
    return {
        "mariadb": calibdb.demo_snapshot("mariadb", cache),
        "sqlite": calibdb.demo_snapshot("sqlite", cache),
        "tar": tar,
    }


def _cfg(snapshot: Path, scratch: Path, backend: str = "mariadb", **kw) -> CalibDBSection:
    return CalibDBSection(backend=backend, snapshot=str(snapshot), scratch_dir=str(scratch), start_timeout=30, **kw)


def _servers(scratch: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "mariadbd" in cmd and str(scratch) in cmd:
            found.append(proc)
    return found


@pytest.mark.parametrize("kind", ["mariadb", "tar", "sqlite"])
def test_start_query_stop_cleans_scratch(snapshots: dict[str, Path], tmp_path: Path, kind: str) -> None:
    backend = "sqlite" if kind == "sqlite" else "mariadb"
    db = calibdb.open_calibdb(_cfg(snapshots[kind], tmp_path, backend))
    endpoint = db.start()
    conn = calibdb.connect(endpoint.env)
    constants = calibdb.read_constants(conn, 275678)
    conn.close()
    assert len(constants) == 10 and all(0.8 < v < 1.2 for v in constants.values())
    if backend == "mariadb":
        assert endpoint.env["MYSQL_UNIX_PORT"] == endpoint.socket and len(_servers(tmp_path)) == 1
        assert db.ready_seconds < 10
    db.stop()
    assert _servers(tmp_path) == []
    leftovers = [p.name for p in db.dir.iterdir()]
    assert leftovers == ["lock"]  # data, socket, pid, logs all gone


def test_four_instances_at_once(snapshots: dict[str, Path], tmp_path: Path) -> None:
    results: dict[int, int] = {}

    def one(i: int) -> None:
        with calibdb.open_calibdb(_cfg(snapshots["mariadb"], tmp_path / f"node{i}")) as endpoint:
            conn = calibdb.connect(endpoint.env)
            results[i] = len(calibdb.read_constants(conn, 275680 + i))
            conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {0: 10, 1: 10, 2: 10, 3: 10}
    assert _servers(tmp_path) == []


def _worker(snapshot: str, scratch: str, barrier, out) -> None:
    db = calibdb.open_calibdb(_cfg(Path(snapshot), Path(scratch)))
    barrier.wait(30)
    endpoint = db.start()
    conn = calibdb.connect(endpoint.env)
    out.put((os.getpid(), db.started_here, len(calibdb.read_constants(conn, 275690))))
    conn.close()
    barrier.wait(30)  # everyone has used it before anyone leaves
    db.stop()


def test_sixteen_processes_one_node_one_instance(snapshots: dict[str, Path], tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(16), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(str(snapshots["mariadb"]), str(tmp_path), barrier, out)) for _ in range(16)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    answers = [out.get(timeout=5) for _ in range(16)]
    assert sum(1 for _, started, _ in answers if started) == 1
    assert all(n == 10 for _, _, n in answers)
    assert all(p.exitcode == 0 for p in procs)
    assert _servers(tmp_path) == []  # the last user stopped it


def test_killed_server_fails_clearly_without_hanging(snapshots: dict[str, Path], tmp_path: Path) -> None:
    db = calibdb.open_calibdb(_cfg(snapshots["mariadb"], tmp_path))
    endpoint = db.start()
    conn = calibdb.connect(endpoint.env)
    (server,) = _servers(tmp_path)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    start = time.monotonic()
    with pytest.raises(CalibDBError) as err:
        calibdb.read_constants(conn, 275678)
    with pytest.raises(CalibDBError):
        calibdb.connect(endpoint.env)
    assert err.value.code == ErrorCode.CALIBDB_UNAVAILABLE and time.monotonic() - start < 15
    db.stop()


def test_stale_state_from_a_crash_is_recovered(snapshots: dict[str, Path], tmp_path: Path) -> None:
    first = calibdb.open_calibdb(_cfg(snapshots["mariadb"], tmp_path))
    first.start()
    (server,) = _servers(tmp_path)
    server.kill()  # the node's previous run crashed: state.json, socket and pid file stay behind
    server.wait(10)
    second = calibdb.open_calibdb(_cfg(snapshots["mariadb"], tmp_path))
    endpoint = second.start()
    assert second.started_here
    conn = calibdb.connect(endpoint.env)
    assert calibdb.read_constants(conn, 275700)
    conn.close()
    second.stop(force=True)
    assert _servers(tmp_path) == []


def test_corrupt_snapshot_error_shows_the_log(snapshots: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(snapshots["mariadb"], broken)
    for name in ("ibdata1", "aria_log_control"):
        (broken / name).write_bytes(b"\0garbage" * 100)
    for log_file in broken.glob("ib_logfile*"):
        log_file.write_bytes(b"junk")
    db = calibdb.open_calibdb(_cfg(broken, tmp_path / "scratch"))
    with pytest.raises(CalibDBError) as err:
        db.start()
    assert "error log" in str(err.value) and "[ERROR]" in str(err.value)
    assert _servers(tmp_path) == []


def test_missing_snapshot_and_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(CalibDBError, match="does not exist"):
        calibdb.open_calibdb(_cfg(tmp_path / "nope", tmp_path)).start()
    with pytest.raises(CalibDBError, match="does not exist"):
        calibdb.open_calibdb(_cfg(tmp_path / "nope.sqlite", tmp_path, "sqlite")).start()
    cfg = _cfg(tmp_path, tmp_path, mariadbd="/nonexistent/mariadbd")
    with pytest.raises(CalibDBError, match="mariadbd not found") as err:
        calibdb.open_calibdb(cfg).start()
    assert err.value.code == ErrorCode.CALIBDB_UNAVAILABLE


def test_external_backend_uses_a_running_server(snapshots: dict[str, Path], tmp_path: Path) -> None:
    with calibdb.open_calibdb(_cfg(snapshots["mariadb"], tmp_path)) as private:
        external = calibdb.open_calibdb(CalibDBSection(backend="external", host="localhost", user="root"))
        endpoint = external.start()
        assert endpoint.backend == "external" and not external.started_here
        env = dict(endpoint.env, MYSQL_UNIX_PORT=private.socket)  # reach it through its socket
        conn = calibdb.connect(env)
        assert calibdb.read_constants(conn, 275678)
        conn.close()
        external.stop()
        assert len(_servers(tmp_path)) == 1  # nothing of ours was stopped


def test_snapshot_cli(tmp_path: Path) -> None:
    from compass_pilot.cli import main

    assert main(["calibdb", "snapshot", "--out", str(tmp_path / "c.sqlite")]) == 0
    conn = calibdb.connect({"COMPASS_CALIB_BACKEND": "sqlite", "COMPASS_CALIB_DSN": str(tmp_path / "c.sqlite")})
    assert calibdb.read_constants(conn, 275699)
