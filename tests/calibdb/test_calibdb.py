"""The calibration DB with a real mariadbd: snapshots, node sharing, failures."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

import calibdb
from calibdb import backends, node
from compass_pilot.config import CalibDBSection
from compass_pilot.errors import CalibDBError, ErrorCode
from tests.calibdb.conftest import cfg, free_port, run_cli, servers


@pytest.mark.parametrize("kind", ["mariadb", "tar", "sqlite"])
def test_start_query_stop_cleans_scratch(
    snapshots: dict[str, Path], tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="calibdb")
    backend = "sqlite" if kind == "sqlite" else "mariadb"
    db = calibdb.open_calibdb(cfg(snapshots[kind], tmp_path, backend))
    endpoint = db.start()
    assert db.start() is endpoint  # idempotent: no second user, no second server
    conn = calibdb.connect(endpoint.env)
    constants = calibdb.read_constants(conn, 275678)
    conn.close()
    assert len(constants) == 10 and all(0.8 < v < 1.2 for v in constants.values())
    assert endpoint.env["COMPASS_CALIB_DSN"] == endpoint.dsn
    if backend == "mariadb":
        assert endpoint.env["MYSQL_UNIX_PORT"] == endpoint.socket and endpoint.env["CDBSERVER"] == "localhost"
        assert endpoint.env["COMPASS_CALIB_DB"] == "calib" and endpoint.env["COMPASS_CALIB_USER"] == "root"
        (server,) = servers(tmp_path)
        assert "--skip-networking" in server.cmdline() and db.server_pid == server.pid
        assert db.ready_seconds > 0 and "start-to-ready" in caplog.text  # the figure: benchmarks/calibdb_start.py
    db.stop()
    assert servers(tmp_path) == []
    assert [p.name for p in db.dir.iterdir()] == ["lock"]  # data, socket, pid, logs all gone


def test_same_constants_from_both_backends(snapshots: dict[str, Path], tmp_path: Path) -> None:
    """The demo dump is portable: SQLite and MariaDB give identical constants (paramstyles differ)."""
    got = {}
    for backend in ("sqlite", "mariadb"):
        with calibdb.open_calibdb(cfg(snapshots[backend], tmp_path / backend, backend)) as endpoint:
            conn = calibdb.connect(endpoint.env)
            got[backend] = [calibdb.read_constants(conn, run) for run in (275678, 275690, 275700)]
            assert calibdb.read_constants(conn, 1) == {}
            conn.close()
    assert got["sqlite"] == got["mariadb"] and all(len(c) == 10 for c in got["sqlite"])


def test_four_instances_at_once(snapshots: dict[str, Path], tmp_path: Path) -> None:
    results: dict[int, tuple[str, int]] = {}
    all_up = threading.Barrier(5)

    def one(i: int) -> None:
        with calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path / f"node{i}")) as endpoint:
            conn = calibdb.connect(endpoint.env)
            results[i] = (endpoint.socket, len(calibdb.read_constants(conn, 275680 + i)))
            conn.close()
            all_up.wait(60)  # all four run at the same time
            all_up.wait(60)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    all_up.wait(60)
    running = len(servers(tmp_path))
    all_up.wait(60)
    for t in threads:
        t.join(60)
    assert running == 4
    assert sorted(n for _, n in results.values()) == [10, 10, 10, 10]
    assert len({sock for sock, _ in results.values()}) == 4  # no shared socket
    assert servers(tmp_path) == []


def _worker(snapshot: str, scratch: str, barrier, out) -> None:  # type: ignore[no-untyped-def]
    db = calibdb.open_calibdb(cfg(Path(snapshot), Path(scratch)))
    barrier.wait(30)
    endpoint = db.start()
    conn = calibdb.connect(endpoint.env)
    out.put((os.getpid(), db.started_here, db.server_pid, len(calibdb.read_constants(conn, 275690))))
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
    answers = [out.get(timeout=60) for _ in range(16)]
    for p in procs:
        p.join(60)
    assert sum(1 for _, started, _, _ in answers if started) == 1
    assert len({pid for _, _, pid, _ in answers}) == 1  # one server, shared by all
    assert all(n == 10 for *_, n in answers)
    assert all(p.exitcode == 0 for p in procs)
    assert servers(tmp_path) == []  # the last user stopped it


def test_node_agent_stop_force_ends_it_for_everyone(snapshots: dict[str, Path], tmp_path: Path) -> None:
    a = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    b = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    a.start()
    b.start()
    a.stop()
    assert len(servers(tmp_path)) == 1  # b still uses it
    b.start()  # no-op: already joined
    agent = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    agent.start()
    agent.stop(force=True)
    assert servers(tmp_path) == []
    b.stop()  # leaving a stopped instance is harmless


def test_killed_server_fails_clearly_without_hanging(snapshots: dict[str, Path], tmp_path: Path) -> None:
    db = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    endpoint = db.start()
    conn = calibdb.connect(endpoint.env)
    (server,) = servers(tmp_path)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    start = time.monotonic()
    with pytest.raises(CalibDBError) as err:
        calibdb.read_constants(conn, 275678)
    with pytest.raises(CalibDBError, match="can't connect to CDB database") as err2:
        calibdb.connect(endpoint.env)
    assert err.value.code == err2.value.code == ErrorCode.CALIBDB_UNAVAILABLE == 1244
    assert time.monotonic() - start < 5
    db.stop()
    assert [p.name for p in db.dir.iterdir()] == ["lock"]


def test_frozen_server_times_out_instead_of_hanging(snapshots: dict[str, Path], tmp_path: Path) -> None:
    db = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    endpoint = db.start()
    env = dict(endpoint.env, COMPASS_CALIB_TIMEOUT="1")
    conn = calibdb.connect(env)
    (server,) = servers(tmp_path)
    server.suspend()
    try:
        start = time.monotonic()
        with pytest.raises(CalibDBError) as err:
            calibdb.read_constants(conn, 275678)
        assert err.value.code == 1244 and time.monotonic() - start < 4
    finally:
        server.resume()
        db.stop()


def test_stale_state_socket_and_pid_from_a_crash_are_recovered(snapshots: dict[str, Path], tmp_path: Path) -> None:
    first = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    first.start()
    (server,) = servers(tmp_path)
    server.kill()  # the node's previous run crashed: state.json, socket and pid file stay behind
    server.wait(10)
    (first.dir / "mysqld.pid").write_text(f"{os.getpid()}\n")  # ... and the pid was reused (by us)
    assert (first.dir / "state.json").exists() and backends.socket_path(first.dir).exists()
    second = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    endpoint = second.start()
    assert second.started_here and second.server_pid != server.pid
    conn = calibdb.connect(endpoint.env)
    assert len(calibdb.read_constants(conn, 275700)) == 10
    conn.close()
    second.stop(force=True)


def test_orphan_server_of_a_crashed_start_is_stopped(snapshots: dict[str, Path], tmp_path: Path) -> None:
    """The starter died after launching mariadbd but before writing the ready marker."""
    first = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    first.start()
    (orphan,) = servers(tmp_path)
    (first.dir / "state.json").unlink()
    second = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path))
    second.start()
    assert second.started_here
    orphan.wait(10)  # stopped, not left behind
    assert [p.pid for p in servers(tmp_path)] == [second.server_pid]
    second.stop()
    assert servers(tmp_path) == []


def test_waiters_block_on_the_lock_and_give_up_after_the_timeout(
    snapshots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stuck starter holds the node lock: a waiter fails with 1244 after its bound, then recovers."""
    monkeypatch.setattr(node, "LOCK_MARGIN", 0.0)
    db = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path, start_timeout=1.0))
    db.dir.mkdir(parents=True)
    holder = os.open(db.dir / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        start = time.monotonic()
        with pytest.raises(CalibDBError, match="still held after 1 s") as err:
            db.start()
        assert err.value.code == 1244 and 0.9 < time.monotonic() - start < 3
        threading.Timer(0.3, os.close, args=(holder,)).start()  # the starter finishes
        holder = -1
        start = time.monotonic()
        db2 = calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path, start_timeout=5.0))
        db2.start()  # woken by the release, not by a poll
        assert db2.started_here and time.monotonic() - start < 5
        db2.stop()
    finally:
        if holder >= 0:
            os.close(holder)


def test_corrupt_snapshot_error_shows_the_log(snapshots: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(snapshots["mariadb"], broken)
    for name in ("ibdata1", "aria_log_control"):
        (broken / name).write_bytes(b"\0garbage" * 100)
    for log_file in broken.glob("ib_logfile*"):
        log_file.write_bytes(b"junk")
    db = calibdb.open_calibdb(cfg(broken, tmp_path / "scratch"))
    with pytest.raises(CalibDBError) as err:
        db.start()
    assert err.value.code == 1244
    assert "error log" in str(err.value) and "[ERROR]" in str(err.value)
    assert not (db.dir / "data").exists() and (db.dir / "error.log").exists()  # copy gone, log kept
    bad_tar = tmp_path / "bad.tar"
    bad_tar.write_bytes(b"not a tar at all" * 64)
    with pytest.raises(CalibDBError, match="neither a datadir nor a readable tar"):
        calibdb.open_calibdb(cfg(bad_tar, tmp_path / "scratch")).start()
    with pytest.raises(CalibDBError, match="not a MariaDB datadir"):
        calibdb.open_calibdb(cfg(tmp_path / "scratch", tmp_path / "scratch2")).start()
    bad_sqlite = tmp_path / "bad.sqlite"
    bad_sqlite.write_bytes(b"garbage" * 1000)
    with pytest.raises(CalibDBError, match="not a usable SQLite"):
        calibdb.open_calibdb(cfg(bad_sqlite, tmp_path / "scratch", "sqlite")).start()


def test_missing_snapshot_binary_and_bad_env(tmp_path: Path) -> None:
    with pytest.raises(CalibDBError, match="does not exist"):
        calibdb.open_calibdb(cfg(tmp_path / "nope", tmp_path)).start()
    with pytest.raises(CalibDBError, match="does not exist"):
        calibdb.open_calibdb(cfg(tmp_path / "nope.sqlite", tmp_path, "sqlite")).start()
    with pytest.raises(CalibDBError, match="mariadbd not found") as err:
        calibdb.open_calibdb(cfg(tmp_path, tmp_path, mariadbd="/nonexistent/mariadbd")).start()
    assert err.value.code == ErrorCode.CALIBDB_UNAVAILABLE
    with pytest.raises(CalibDBError, match=r"calibdb\.backend"):
        calibdb.open_calibdb(CalibDBSection(backend="oracle"))
    with pytest.raises(CalibDBError, match="COMPASS_CALIB_BACKEND"):
        calibdb.connect({})
    with pytest.raises(CalibDBError, match="COMPASS_CALIB_TIMEOUT"):
        calibdb.connect({"COMPASS_CALIB_BACKEND": "sqlite", "COMPASS_CALIB_TIMEOUT": "soon"})


def test_external_backend_over_tcp_with_a_password_file(
    snapshots: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    with calibdb.open_calibdb(cfg(snapshots["mariadb"], tmp_path), tcp_port=port) as private:
        admin = calibdb.connect(private.env)
        with admin.cursor() as cur:
            cur.execute("CREATE USER 'reader'@'127.0.0.1' IDENTIFIED BY 'pw-s3cret'")
            cur.execute("GRANT SELECT ON calib.* TO 'reader'@'127.0.0.1'")
        admin.close()
        secret = tmp_path / "calib.pw"
        secret.write_text("pw-s3cret\n")
        ext_cfg = CalibDBSection(
            backend="external", host="127.0.0.1", port=port, user="reader", password_file=str(secret)
        )
        external = calibdb.open_calibdb(ext_cfg)
        endpoint = external.start()
        assert endpoint.backend == "external" and not external.started_here and endpoint.socket == ""
        assert endpoint.env["CDBSERVER"] == "127.0.0.1" and endpoint.env["COMPASS_CALIB_PORT"] == str(port)
        assert "pw-s3cret" not in repr(endpoint) and "pw-s3cret" not in caplog.text
        conn = calibdb.connect(endpoint.env)
        assert len(calibdb.read_constants(conn, 275678)) == 10
        conn.close()
        external.stop()
        assert len(servers(tmp_path)) == 1  # nothing of ours was stopped
        secret.write_text("wrong\n")
        with pytest.raises(CalibDBError, match="Access denied"):
            calibdb.open_calibdb(ext_cfg).start()
    with pytest.raises(CalibDBError, match="can't connect") as err:  # checked at start, not hours later
        calibdb.open_calibdb(ext_cfg).start()
    assert err.value.code == 1244
    with pytest.raises(CalibDBError, match=r"calibdb\.host is required"):
        calibdb.open_calibdb(CalibDBSection(backend="external")).start()


def test_runs_as_an_unprivileged_user(snapshots: dict[str, Path]) -> None:
    """mariadbd as ``nobody`` (via setpriv, which execs it): no --user, our own dirs, same readiness."""
    if os.geteuid() != 0:
        pytest.fail("this test drops privileges with setpriv and must start as root")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv not on PATH: apt-get install util-linux")
    base = Path(tempfile.mkdtemp(prefix="calibdb-nobody-"))  # not under root's 0700 pytest dir
    try:
        os.chmod(base, 0o755)
        datadir = base / "data"
        backends.copy_snapshot(snapshots["mariadb"], datadir)
        cmd = backends.server_command("/usr/sbin/mariadbd", datadir, base, as_root=False)
        assert not any(arg.startswith("--user") for arg in cmd)
        assert "--user=root" in backends.server_command("/usr/sbin/mariadbd", datadir, base, as_root=True)
        for path in [base, *base.rglob("*")]:
            os.chown(path, 65534, 65534)
        wrapper = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        proc, endpoint, ready = backends.start_mariadbd(
            backends.find_mariadbd(),
            datadir,
            base,
            timeout=30,
            user="root",
            database="calib",
            wrapper=wrapper,
            as_root=False,
        )
        try:
            assert os.stat(endpoint.socket).st_uid == 65534 and ready > 0
            conn = calibdb.connect(endpoint.env)
            assert len(calibdb.read_constants(conn, 275679)) == 10
            conn.close()
        finally:
            assert backends.stop_process(proc.pid, 30, proc)
        assert proc.returncode == 0  # clean shutdown
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_snapshot_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("snapshot", "--out", str(tmp_path / "c.sqlite")) == 0
    conn = calibdb.connect({"COMPASS_CALIB_BACKEND": "sqlite", "COMPASS_CALIB_DSN": str(tmp_path / "c.sqlite")})
    assert len(calibdb.read_constants(conn, 275699)) == 10
    with conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 23
    conn.close()
    assert run_cli("snapshot", "--from", str(tmp_path / "missing.sql"), "--out", str(tmp_path / "x.sqlite")) == 1
    assert "missing.sql" in capsys.readouterr().err


def test_dump_loading_quotes_and_errors(tmp_path: Path) -> None:
    """A ';' inside a string does not split a statement; a bad statement is named by its line."""
    good = tmp_path / "good.sql"
    good.write_text(
        "-- header\nCREATE TABLE calib (run INTEGER, detector VARCHAR(32), constant REAL);\n"
        "CREATE TABLE notes (run INTEGER, note VARCHAR(64));\n"
        "INSERT INTO notes VALUES (1, 'gain drift; see log -- twice');\n"
        "INSERT INTO calib VALUES (1, 'FI01', 1.5),\n  (1, 'GM01', 0.5);\n"
    )
    statements = calibdb.snapshot._statements(good.read_text())
    assert [line for line, _ in statements] == [2, 3, 4, 5]
    assert statements[2][1] == "INSERT INTO notes VALUES (1, 'gain drift; see log -- twice')"
    for out in (tmp_path / "g.sqlite", tmp_path / "g.datadir"):
        calibdb.build_snapshot(good, out)
        with calibdb.open_calibdb(
            cfg(out, tmp_path / out.suffix[1:], "sqlite" if out.suffix == ".sqlite" else "mariadb")
        ) as ep:
            conn = calibdb.connect(ep.env)
            assert calibdb.read_constants(conn, 1) == {"FI01": 1.5, "GM01": 0.5}
            cur = conn.cursor()
            cur.execute("SELECT note FROM notes")
            assert cur.fetchall()[0][0] == "gain drift; see log -- twice"
            conn.close()
    bad = tmp_path / "bad.sql"
    bad.write_text(
        "CREATE TABLE calib (run INTEGER, detector VARCHAR(32), constant REAL);\n\nINSERT INTO nowhere VALUES (1);\n"
    )
    with pytest.raises(CalibDBError, match="line 3 does not load into MariaDB"):
        calibdb.build_snapshot(bad, tmp_path / "bad.datadir")
    with pytest.raises(CalibDBError, match="does not load into SQLite"):
        calibdb.build_snapshot(bad, tmp_path / "bad.sqlite")
    assert not (tmp_path / "bad.datadir").exists() and not (tmp_path / "bad.sqlite").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no half-built leftovers


def _demo_builder(cache: str, out) -> None:  # type: ignore[no-untyped-def]
    out.put(str(calibdb.demo_snapshot("sqlite", Path(cache))))


def test_demo_snapshot_built_once_under_concurrency(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_demo_builder, args=(str(tmp_path), out)) for _ in range(4)]
    for p in procs:
        p.start()
    paths = {out.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
    assert paths == {str(tmp_path / "demo_calib.sqlite")}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo_calib.sqlite.lock", "demo_calib.sqlite"]
    conn = calibdb.connect({"COMPASS_CALIB_BACKEND": "sqlite", "COMPASS_CALIB_DSN": paths.pop()})
    assert len(calibdb.read_constants(conn, 275700)) == 10
    conn.close()


@pytest.mark.parametrize("backend", ["mariadb", "sqlite"])
def test_a_deep_scratch_dir_leaves_no_socket_dir_in_tmp(
    snapshots: dict[str, Path], tmp_path: Path, backend: str
) -> None:
    """A scratch path too long for a unix socket puts the sockets in a private dir in /tmp; the
    stop removes that dir too (they were left behind: thousands of empty dirs on a busy box),
    and a stop never creates one."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    db = calibdb.open_calibdb(cfg(snapshots["sqlite" if backend == "sqlite" else "mariadb"], deep, backend))
    fallback = backends.socket_path(db.dir, create=False).parent
    assert fallback != db.dir and not fallback.exists()
    endpoint = db.start()
    if backend == "mariadb":
        assert Path(endpoint.socket).parent == fallback and fallback.is_dir()
    db.stop()
    assert servers(deep) == []
    assert not fallback.exists()
