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
from pathlib import Path

from calibdb import backends
from compass_pilot.errors import CalibDBError

log = logging.getLogger(__name__)

# subprocess, tarfile and tempfile are imported by build_mariadb, their only user: a node
# agent imports this module for the demo SQLite snapshot, before its payloads start.

DEMO_DUMP = Path(__file__).parent / "data" / "demo_calib.sql"
DEMO_BUILD_TIMEOUT = 300.0


def _statements(sql: str) -> list[tuple[int, str]]:
    """(line number, statement) pairs; a ``;`` inside a quoted string does not split.

    ``sqlite3.complete_statement`` knows SQL quoting and comments, which is all a
    portable dump needs (mysqldump's ``/*!… */;`` lines come out as statements too).
    """
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    first = 0
    for number, line in enumerate(sql.splitlines(), 1):
        if not buf and (not line.strip() or line.lstrip().startswith("--")):
            continue
        if not buf:
            first = number
        buf.append(line)
        text = "\n".join(buf)
        if sqlite3.complete_statement(text):
            out.append((first, text.strip().rstrip(";").strip()))
            buf = []
    if buf and "\n".join(buf).strip():
        out.append((first, "\n".join(buf).strip()))
    return out


def _tmp_sibling(out: Path) -> Path:
    """Build next to the target, then rename: a reader never sees a half-made snapshot."""
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")


def build_sqlite(dump: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(out)
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        # A dump autocommits each statement: a journal file and fsyncs per INSERT (~85 ms of
        # CPU for the demo's 46, paid by every fake node's agent).  The file is a private
        # temp copy, renamed only when complete: no journal, no syncs, then ONE fsync below.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(dump.read_text())
        conn.commit()
    except sqlite3.Error as exc:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise CalibDBError(f"SQL dump {dump} does not load into SQLite: {exc}") from None
    conn.close()
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, out)
    return out


def build_mariadb(dump: Path, out: Path, *, database: str = "calib", mariadbd: str = "") -> Path:
    """Install a datadir, load the dump, shut down cleanly; ``out`` is a dir or a .tar."""
    import subprocess
    import tarfile
    import tempfile

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
        proc, endpoint, _ = backends.start_mariadbd(
            binary, datadir, work, timeout=120, user="root", database="mysql", probe_table=None
        )
        try:
            conn = pymysql.connect(unix_socket=endpoint.socket, user="root", connect_timeout=10, read_timeout=300)
            try:
                with conn.cursor() as cur:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
                    cur.execute(f"USE `{database}`")
                    for line, statement in _statements(dump.read_text()):
                        try:
                            cur.execute(statement)
                        except pymysql.MySQLError as exc:
                            raise CalibDBError(
                                f"SQL dump {dump} line {line} does not load into MariaDB: {exc}"
                            ) from None
                conn.commit()
            finally:
                conn.close()
        finally:
            if not backends.stop_process(proc.pid, 60, proc):
                raise CalibDBError(f"mariadbd building the snapshot did not shut down; not using {datadir}")
        if proc.returncode not in (0, None):
            tail = backends.log_tail(work / "error.log")
            raise CalibDBError(f"mariadbd building the snapshot exited with {proc.returncode}:\n{tail}")
        for leftover in ("tmp",):
            shutil.rmtree(datadir / leftover, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_sibling(out)
        if str(out).endswith(".tar"):
            with tarfile.open(tmp, "w") as tar:
                tar.add(datadir, arcname=".")
            os.replace(tmp, out)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(datadir, tmp, symlinks=True)
            if out.exists():
                shutil.rmtree(out)
            os.rename(tmp, out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_snapshot(dump: Path, out: Path, backend: str = "") -> Path:
    """Build a snapshot of the kind ``out`` names (``.sqlite`` → SQLite, else MariaDB)."""
    if not dump.is_file():
        raise CalibDBError(f"SQL dump {dump} not found")
    kind = backend or ("sqlite" if out.suffix in (".sqlite", ".db") else "mariadb")
    if kind not in ("sqlite", "mariadb"):
        raise CalibDBError(f"snapshot backend must be sqlite or mariadb, got {kind!r}")
    return build_sqlite(dump, out) if kind == "sqlite" else build_mariadb(dump, out)


def demo_snapshot(kind: str, cache_dir: Path) -> Path:
    """The demo's calibration snapshot of the given kind, built once into ``cache_dir``."""
    cache_dir = Path(cache_dir)
    out = cache_dir / ("demo_calib.sqlite" if kind == "sqlite" else "demo_calib.datadir")
    if out.exists():  # only ever appears complete (built aside, then renamed)
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    from calibdb.node import _NodeLock

    # Concurrent callers wait (event-driven, bounded) for the one build, which takes ~1 s.
    with _NodeLock(cache_dir / f".{out.name}.lock", DEMO_BUILD_TIMEOUT, "(building the demo snapshot)"):
        if not out.exists():
            log.info("building the demo %s calibration snapshot in %s", kind, cache_dir)
            build_snapshot(DEMO_DUMP, out, kind)
    return out
