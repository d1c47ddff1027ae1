"""Ready-to-start calibration DB snapshots, built from an SQL dump.

A snapshot is what a node copies to its scratch disk and starts from: for MariaDB a
datadir (directory or tar) made by ``mariadb-install-db``, loaded with the dump and
shut down cleanly with the same server options the nodes use; for SQLite a file.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from pathlib import Path

from calibdb import backends
from compass_pilot.errors import CalibDBError

log = logging.getLogger(__name__)

DEMO_DUMP = Path(__file__).parent / "data" / "demo_calib.sql"


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def build_sqlite(dump: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        conn.executescript(dump.read_text())
        conn.commit()
    finally:
        conn.close()
    os.replace(tmp, out)
    return out


def build_mariadb(dump: Path, out: Path, *, database: str = "calib", mariadbd: str = "") -> Path:
    """Install a datadir, load the dump, shut down cleanly; ``out`` is a dir or a .tar."""
    import pymysql

    binary = backends.find_mariadbd(mariadbd)
    installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if installer is None:
        raise CalibDBError("mariadb-install-db not found (install mariadb-server-core)")
    work = Path(tempfile.mkdtemp(prefix="calibdb-snap-"))
    try:
        datadir = work / "data"
        cmd = [
            installer,
            "--no-defaults",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *[o for o in backends.SERVER_OPTIONS if o.startswith("--innodb")],
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise CalibDBError(f"mariadb-install-db failed: {result.stderr[-2000:]}")
        proc, endpoint, _ = _start_empty(binary, datadir, work)
        try:
            conn = pymysql.connect(unix_socket=endpoint, user="root", connect_timeout=10)
            try:
                with conn.cursor() as cur:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
                    cur.execute(f"USE `{database}`")
                    for statement in _statements(dump.read_text()):
                        cur.execute(statement)
                conn.commit()
            finally:
                conn.close()
        finally:
            backends.stop_process(proc.pid, 30)
        for leftover in ("tmp",):
            shutil.rmtree(datadir / leftover, ignore_errors=True)
        if str(out).endswith(".tar"):
            out.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(out, "w") as tar:
                tar.add(datadir, arcname=".")
        else:
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(datadir, out, symlinks=True)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _start_empty(binary: str, datadir: Path, work: Path) -> tuple[subprocess.Popen[bytes], str, None]:
    """Start the fresh datadir (no calib table yet) and wait for its socket to answer."""
    import time

    import pymysql

    sock = backends.socket_path(work)
    cmd = [
        binary,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--socket={sock}",
        f"--pid-file={work / 'pid'}",
        f"--log-error={work / 'error.log'}",
        f"--tmpdir={work}",
        *backends.SERVER_OPTIONS,
    ]
    if os.geteuid() == 0:
        cmd.append("--user=root")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CalibDBError(f"mariadbd failed to start for the snapshot:\n{backends.log_tail(work / 'error.log')}")
        try:
            pymysql.connect(unix_socket=str(sock), user="root", connect_timeout=2).close()
            return proc, str(sock), None
        except pymysql.err.OperationalError:
            time.sleep(backends.READY_RETRY)
    backends.stop_process(proc.pid, 5)
    raise CalibDBError(f"mariadbd not ready for the snapshot:\n{backends.log_tail(work / 'error.log')}")


def build_snapshot(dump: Path, out: Path, backend: str = "") -> Path:
    """Build a snapshot of the kind ``out`` names (``.sqlite`` → SQLite, else MariaDB)."""
    if not dump.is_file():
        raise CalibDBError(f"SQL dump {dump} not found")
    kind = backend or ("sqlite" if out.suffix in (".sqlite", ".db") else "mariadb")
    return build_sqlite(dump, out) if kind == "sqlite" else build_mariadb(dump, out)


def demo_snapshot(kind: str, cache_dir: Path) -> Path:
    """The demo's calibration snapshot of the given kind, built once into ``cache_dir``."""
    cache_dir = Path(cache_dir)
    out = cache_dir / ("demo_calib.sqlite" if kind == "sqlite" else "demo_calib.datadir")
    if out.exists():
        return out
    log.info("building the demo %s calibration snapshot in %s", kind, cache_dir)
    return build_snapshot(DEMO_DUMP, out, kind)
