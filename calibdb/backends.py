"""Starting and stopping one calibration DB instance: private MariaDB, SQLite copy.

The Blue Waters pilot started MySQL and then *slept 90 s* (600 s on a later machine)
without checking anything, and a failed start surfaced hours later as 1244 in every
job.  Here a private ``mariadbd`` runs from a copy of a datadir snapshot on node-local
scratch, with its own socket, pid file and tmpdir and no TCP, and it is ready when a
real query answers over its socket — typically in a fraction of a second.

Every wait is event-driven: mariadbd is built with systemd support and sends
``READY=1`` to the datagram socket named by ``NOTIFY_SOCKET`` (sd_notify), and a
``pidfd`` becomes readable the moment the server dies, so one ``select`` on both wakes
us at once for either outcome.  A build without sd_notify still works: the select
falls back to a query probe once per second.  If the server dies or does not answer
within ``start_timeout`` the error carries the tail of its error log.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from calibdb.endpoint import Endpoint, make_endpoint
from calibdb.private import ensure_private_dir, is_private_dir
from compass_pilot.errors import CalibDBError

# What only a MariaDB instance needs (subprocess, socket, secrets, tarfile — with pwd, grp,
# random, base64) and sqlite3 are imported where they are used: every node agent with a
# calibration DB imports this module before its payloads start (~10 ms of each start).
if TYPE_CHECKING:
    import subprocess

log = logging.getLogger(__name__)

#: Server options shared by snapshot building and starting: InnoDB wants the redo log
#: size the datadir was made with, and small buffers (no buffer-pool dump) make start
#: and shutdown fast.
SERVER_OPTIONS = (
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--innodb-buffer-pool-dump-at-shutdown=OFF",
    "--innodb-buffer-pool-load-at-startup=OFF",
    "--skip-log-bin",
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
)
#: Without sd_notify (a server built without systemd) we probe with a query this often.
#: With it, the READY=1 datagram wakes us immediately and this is never reached.
FALLBACK_PROBE = 1.0
#: MySQL errors that no amount of waiting fixes: access denied, unknown database.
_FATAL_CONNECT_ERRORS = {1044, 1045, 1049}


def find_mariadbd(configured: str = "") -> str:
    """The server binary: the configured one (no fallback: the admin chose it), else PATH / /usr/sbin."""
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise CalibDBError(f"mariadbd not found at the configured path calibdb.mariadbd={configured}")
    candidates = [
        shutil.which("mariadbd") or "",
        shutil.which("mysqld") or "",
        "/usr/sbin/mariadbd",
        "/usr/sbin/mysqld",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise CalibDBError(
        "mariadbd not found on PATH or in /usr/sbin (install mariadb-server-core or set calibdb.mariadbd)"
    )


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a server error log: what an admin needs to see in the job's diagnostic."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(error log empty)"
    except OSError:
        return f"(no error log at {path})"


#: the unix sockets of one instance: the server's and the start notification's
SOCKET_NAMES = ("mysqld.sock", "notify.sock")


def _fallback_dir(instance_dir: Path) -> Path:
    import tempfile  # only a deep scratch path needs it

    digest = hashlib.sha1(str(instance_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"calibdb-{os.geteuid()}-{digest}"


def short_socket_path(instance_dir: Path, name: str, *, create: bool = True) -> Path:
    """A unix socket path under the 108-byte limit, even for deep scratch dirs.

    The fallback name hashes the instance dir, so two scratch dirs never share a socket.
    ``create=False``: only the path, no directory made (to look up or remove a socket).
    """
    path = instance_dir / name
    if len(str(path)) < 100:
        return path
    # A private, checked dir of its own: a bare name in /tmp could be squatted by anyone.
    fallback = _fallback_dir(instance_dir)
    return (ensure_private_dir(fallback) if create else fallback) / name


def socket_path(instance_dir: Path, *, create: bool = True) -> Path:
    return short_socket_path(instance_dir, "mysqld.sock", create=create)


def remove_sockets(instance_dir: Path) -> None:
    """Remove the instance's sockets, and the private fallback dir in /tmp they needed (one per
    instance dir: left behind, they piled up by the thousand on a box that runs many job sets).
    Nothing is created on the way, and nothing is removed through a dir that is not ours alone."""
    paths = [short_socket_path(instance_dir, name, create=False) for name in SOCKET_NAMES]
    for path in paths:
        if path.parent == instance_dir or is_private_dir(path.parent):
            path.unlink(missing_ok=True)
    # a socket not in the instance dir is in the fallback dir: only then is there one to remove
    fallback = next((path.parent for path in paths if path.parent != instance_dir), None)
    if fallback is not None and is_private_dir(fallback):
        with contextlib.suppress(OSError):  # not empty (something else put a file there): left as it is
            fallback.rmdir()


def copy_snapshot(snapshot: Path, datadir: Path) -> float:
    """Copy a datadir snapshot (directory or tar) into place; returns the seconds it took."""
    start = time.monotonic()
    if not snapshot.exists():
        raise CalibDBError(f"calibration snapshot {snapshot} does not exist (calibdb.snapshot)")
    if datadir.exists():
        shutil.rmtree(datadir)
    if snapshot.is_dir():
        shutil.copytree(snapshot, datadir, symlinks=True)
    else:
        import tarfile  # see the imports at the top

        try:
            with tarfile.open(snapshot) as tar:
                datadir.mkdir(parents=True)
                tar.extractall(datadir, filter="data")
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(datadir, ignore_errors=True)
            raise CalibDBError(
                f"calibration snapshot {snapshot} is neither a datadir nor a readable tar: {exc}"
            ) from None
        entries = list(datadir.iterdir())
        if len(entries) == 1 and entries[0].is_dir() and not (datadir / "mysql").exists():
            inner = entries[0]  # a tar of the directory itself
            for item in inner.iterdir():
                item.rename(datadir / item.name)
            inner.rmdir()
    if not (datadir / "mysql").is_dir():
        shutil.rmtree(datadir, ignore_errors=True)
        raise CalibDBError(f"calibration snapshot {snapshot} is not a MariaDB datadir (no mysql/ system schema)")
    return time.monotonic() - start


def server_command(
    binary: str,
    datadir: Path,
    instance_dir: Path,
    *,
    tcp_port: int | None = None,
    as_root: bool | None = None,
) -> list[str]:
    """The mariadbd command line of a private instance.

    ``--no-defaults`` keeps a site's /etc/mysql from leaking in; ``--user`` is passed
    only when running as root (mariadbd refuses root without it, and an unprivileged
    user may not switch).  TCP stays off unless ``tcp_port`` asks for it (loopback only).
    """
    instance_dir.mkdir(parents=True, exist_ok=True)
    tmpdir = instance_dir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    cmd = [
        binary,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--socket={socket_path(instance_dir)}",
        f"--pid-file={instance_dir / 'mysqld.pid'}",
        f"--tmpdir={tmpdir}",
        f"--log-error={instance_dir / 'error.log'}",
        *SERVER_OPTIONS,
    ]
    if tcp_port:
        cmd += [f"--port={tcp_port}", "--bind-address=127.0.0.1"]
    else:
        cmd.append("--skip-networking")
    if as_root if as_root is not None else os.geteuid() == 0:
        cmd.append("--user=root")
    return cmd


def _probe(sock: Path, user: str, database: str, table: str | None) -> None:
    """One real query over the socket; raises pymysql errors."""
    import pymysql

    conn = pymysql.connect(unix_socket=str(sock), user=user, connect_timeout=2, read_timeout=5, write_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{database}`.`{table}`" if table else "SELECT 1")
    finally:
        conn.close()


def start_mariadbd(
    binary: str,
    datadir: Path,
    instance_dir: Path,
    *,
    timeout: float,
    user: str,
    database: str,
    probe_table: str | None = "calib",
    tcp_port: int | None = None,
    wrapper: Sequence[str] = (),
    as_root: bool | None = None,
) -> tuple[subprocess.Popen[bytes], Endpoint, float]:
    """Start a private server over ``datadir``; returns it once a real query answers.

    ``wrapper`` is a command prefix (``numactl …``, ``setpriv …``) that must ``exec``
    mariadbd so the pid we watch is the server's.
    """
    import socket  # see the imports at the top
    import subprocess

    import pymysql

    sock = socket_path(instance_dir)
    sock.unlink(missing_ok=True)
    error_log = instance_dir / "error.log"
    cmd = [*wrapper, *server_command(binary, datadir, instance_dir, tcp_port=tcp_port, as_root=as_root)]
    notify_path = short_socket_path(instance_dir, "notify.sock")
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    os.chmod(notify_path, 0o777)  # a wrapper may drop privileges before mariadbd notifies
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    pidfd = os.pidfd_open(proc.pid)
    deadline = start + timeout
    last = "no answer yet"
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stop_process(proc.pid, 5, proc)
                raise CalibDBError(
                    f"mariadbd not ready after {timeout:.0f} s (calibdb.start_timeout; last: {last}); "
                    f"error log {error_log}:\n{log_tail(error_log)}"
                )
            ready, _, _ = select.select([notify, pidfd], [], [], min(remaining, FALLBACK_PROBE))
            if pidfd in ready:
                proc.wait()
                raise CalibDBError(
                    f"mariadbd exited with {proc.returncode} while starting over {datadir}; "
                    f"error log {error_log}:\n{log_tail(error_log)}"
                )
            if notify in ready and b"READY=1" not in notify.recv(4096):
                continue  # a STATUS= line: not ready yet
            try:
                _probe(sock, user, database, probe_table)
                break
            except pymysql.err.OperationalError as exc:
                last = str(exc)
                if exc.args and exc.args[0] in _FATAL_CONNECT_ERRORS:
                    stop_process(proc.pid, 5, proc)
                    raise CalibDBError(
                        f"calibration snapshot refuses user {user!r} / database {database!r}: {exc}"
                    ) from None
            except pymysql.err.ProgrammingError as exc:
                stop_process(proc.pid, 5, proc)
                raise CalibDBError(f"calibration snapshot has no {database}.{probe_table} table: {exc}") from None
    finally:
        os.close(pidfd)
        notify.close()
        notify_path.unlink(missing_ok=True)
    ready_seconds = time.monotonic() - start
    log.info("private calibration DB ready in %.3f s (pid %d, socket %s)", ready_seconds, proc.pid, sock)
    endpoint = make_endpoint(
        "mariadb",
        socket=str(sock),
        user=user,
        database=database,
        host="127.0.0.1" if tcp_port else "",
        port=tcp_port or 0,
    )
    return proc, endpoint, ready_seconds


def secure_mariadb(endpoint: Endpoint, instance_dir: Path) -> Endpoint:
    """Give the fresh instance's user a random password, known only to the owner's 0600 file.

    Snapshots come with a passwordless user (``mariadb-install-db`` with normal root
    auth).  The socket lives in the 0700 instance dir already; the password closes the
    TCP port (``tcp_port``) and any socket path outside it to other local users.
    """
    import secrets  # see the imports at the top

    import pymysql

    password = secrets.token_urlsafe(24)
    secret = instance_dir / "password"
    secret.unlink(missing_ok=True)
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    conn = pymysql.connect(unix_socket=endpoint.socket, user=endpoint.user, connect_timeout=10, read_timeout=30)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT user, host FROM mysql.user WHERE user = %s OR user = ''", (endpoint.user,))
            for user, host in cur.fetchall():
                try:
                    if user:
                        cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
                    else:  # anonymous accounts would let anyone on the node in
                        cur.execute("DROP USER %s@%s", (user, host))
                except pymysql.err.OperationalError as exc:
                    # 1396: an account by host name, inert under --skip-name-resolve (no one can match it)
                    if exc.args[0] != 1396:
                        raise
            cur.execute("FLUSH PRIVILEGES")
    except pymysql.MySQLError as exc:
        raise CalibDBError(f"cannot set the private calibration DB's password: {exc}") from None
    finally:
        conn.close()
    return make_endpoint(
        endpoint.backend,
        socket=endpoint.socket,
        user=endpoint.user,
        database=endpoint.database,
        host="127.0.0.1" if endpoint.port else "",
        port=endpoint.port,
        password_file=str(secret),
    )


def stop_process(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGTERM (mariadbd shuts down cleanly on it), SIGKILL after ``timeout``; True if it is gone.

    Waiting is a ``select`` on a pidfd, so it works for a server another process started.
    Pass ``proc`` when we are its parent and want its exit status in ``proc.returncode``.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([pidfd], [], [], timeout)[0]:
            log.warning("mariadbd pid %d ignored SIGTERM for %.0f s: killing it", pid, timeout)
            os.kill(pid, signal.SIGKILL)
            if not select.select([pidfd], [], [], 10)[0]:
                log.error("mariadbd pid %d did not die after SIGKILL", pid)
                return False
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
    if proc is not None:
        proc.wait()  # it has exited: this only reaps it and records the status
        return True
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child
    except ChildProcessError:
        pass
    return True


def sqlite_copy(snapshot: Path, instance_dir: Path) -> tuple[Endpoint, float]:
    """The embedded default: a private, checked copy of the SQLite snapshot; (endpoint, copy seconds)."""
    if not snapshot.is_file():
        raise CalibDBError(f"calibration snapshot {snapshot} does not exist (calibdb.snapshot)")
    start = time.monotonic()
    target = instance_dir / "calib.sqlite"
    shutil.copyfile(snapshot, target)
    import sqlite3  # see the imports at the top: a MariaDB node never needs it

    try:
        conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
        try:
            conn.execute("SELECT COUNT(*) FROM calib").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        target.unlink(missing_ok=True)
        raise CalibDBError(f"calibration snapshot {snapshot} is not a usable SQLite calibration DB: {exc}") from None
    return make_endpoint("sqlite", path=str(target)), time.monotonic() - start
