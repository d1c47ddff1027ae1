"""Starting and stopping one calibration DB instance: private MariaDB, SQLite copy, external.

The Blue Waters pilot started MySQL and then *slept 90 s* (600 s on a later machine)
without checking anything, and a failed start surfaced hours later as 1244 in every
job.  Here a private ``mariadbd`` runs from a copy of a datadir snapshot on node-local
scratch, with its own socket, pid file and tmpdir and no TCP, and it is ready when a
real query answers over its socket — typically in a fraction of a second.  If it dies
or does not answer within ``start_timeout`` the error carries its error log's tail.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import psutil

from calibdb.endpoint import Endpoint, make_endpoint
from compass_pilot.errors import CalibDBError

log = logging.getLogger(__name__)

#: Server options shared by snapshot building and starting: InnoDB refuses a datadir
#: whose redo log size differs from the configured one, and small buffers make start
#: and shutdown fast.
SERVER_OPTIONS = (
    "--skip-networking",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--skip-log-bin",
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
)
READY_RETRY = 0.05  # seconds between readiness probes, only while the server process is alive


def find_mariadbd(configured: str = "") -> str:
    """The server binary: the configured one (no fallback: the admin chose it), else PATH / /usr/sbin."""
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise CalibDBError(f"mariadbd not found at the configured path {configured}")
    candidates = [
        shutil.which("mariadbd") or "",
        shutil.which("mysqld") or "",
        "/usr/sbin/mariadbd",
        "/usr/sbin/mysqld",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise CalibDBError("mariadbd not found (install mariadb-server-core or set calibdb.mariadbd)")


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no error log)"


def socket_path(instance_dir: Path) -> Path:
    """A unix socket path under the 108-byte limit, even for deep scratch dirs."""
    path = instance_dir / "mysqld.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha1(str(instance_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"calibdb-{digest}.sock"


def copy_snapshot(snapshot: Path, datadir: Path) -> float:
    """Copy a datadir snapshot (directory or tar) into place; returns the seconds it took."""
    start = time.monotonic()
    if not snapshot.exists():
        raise CalibDBError(f"calibration snapshot {snapshot} does not exist")
    if datadir.exists():
        shutil.rmtree(datadir)
    if snapshot.is_dir():
        shutil.copytree(snapshot, datadir, symlinks=True)
    else:
        try:
            with tarfile.open(snapshot) as tar:
                datadir.mkdir(parents=True)
                tar.extractall(datadir, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise CalibDBError(f"calibration snapshot {snapshot} is not a readable tar: {exc}") from None
        entries = list(datadir.iterdir())
        if len(entries) == 1 and entries[0].is_dir() and not (datadir / "mysql").exists():
            inner = entries[0]  # a tar of the directory itself
            for item in inner.iterdir():
                item.rename(datadir / item.name)
            inner.rmdir()
    return time.monotonic() - start


def start_mariadbd(
    binary: str, datadir: Path, instance_dir: Path, *, timeout: float, user: str, database: str
) -> tuple[subprocess.Popen[bytes], Endpoint, float]:
    """Start a private server over ``datadir``; returns it once a query answers."""
    import pymysql

    sock = socket_path(instance_dir)
    sock.unlink(missing_ok=True)
    tmpdir = instance_dir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    error_log = instance_dir / "error.log"
    cmd = [
        binary,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--socket={sock}",
        f"--pid-file={instance_dir / 'mysqld.pid'}",
        f"--tmpdir={tmpdir}",
        f"--log-error={error_log}",
        *SERVER_OPTIONS,
    ]
    if os.geteuid() == 0:
        cmd.append("--user=root")
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = start + timeout
    last = ""
    while True:
        if proc.poll() is not None:
            tail = log_tail(error_log)
            raise CalibDBError(f"mariadbd exited with {proc.returncode} starting over {datadir}; error log:\n{tail}")
        if sock.exists():
            try:
                conn = pymysql.connect(unix_socket=str(sock), user=user, connect_timeout=2, read_timeout=5)
                try:
                    with conn.cursor() as cur:
                        cur.execute(f"SELECT COUNT(*) FROM `{database}`.calib")
                finally:
                    conn.close()
                break
            except pymysql.err.OperationalError as exc:
                last = str(exc)
            except pymysql.err.ProgrammingError as exc:
                stop_process(proc.pid, 5)
                raise CalibDBError(f"calibration snapshot has no {database}.calib table: {exc}") from None
        if time.monotonic() > deadline:
            stop_process(proc.pid, 5)
            raise CalibDBError(f"mariadbd not ready after {timeout:.0f} s ({last}); error log:\n{log_tail(error_log)}")
        time.sleep(READY_RETRY)
    ready = time.monotonic() - start
    log.info("private calibration DB ready in %.2f s (pid %d, socket %s)", ready, proc.pid, sock)
    return proc, make_endpoint("mariadb", socket=str(sock), user=user, database=database), ready


def stop_process(pid: int, timeout: float) -> None:
    """SIGTERM (mariadbd shuts down cleanly on it), then SIGKILL after ``timeout``."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            log.warning("mariadbd pid %d ignored SIGTERM for %.0f s: killing it", pid, timeout)
            proc.kill()
            proc.wait(5)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        log.error("mariadbd pid %d did not die", pid)


def sqlite_copy(snapshot: Path, instance_dir: Path) -> Endpoint:
    """The embedded default: a private copy of the SQLite snapshot."""
    if not snapshot.is_file():
        raise CalibDBError(f"calibration snapshot {snapshot} does not exist")
    target = instance_dir / "calib.sqlite"
    shutil.copyfile(snapshot, target)
    return make_endpoint("sqlite", path=str(target))
