"""First-job-starts-it: one calibration DB instance per node, shared by every process there.

Compute nodes cannot talk to each other or to a server, so each node runs its own
instance.  Any number of processes on a node — the node agent, or independent grid
pilots — call :meth:`CalibDB.start`.  All of them take an ``flock`` on
``<instance dir>/lock``; the first one starts the instance *while holding the lock*
and then writes ``state.json``: the ready marker (server pid + creation time and the
endpoint JSON) and the users record (pid + creation time of each process using it).
The others block on the lock — the kernel wakes them when the starter releases it, so
the wait costs nothing and needs no polling — then find the ready marker and join.
flock has no timeout of its own: a helper thread makes the blocking call and the
caller waits on an ``Event`` for at most ``start_timeout + 30`` s; if it gives up, the
thread releases the lock as soon as it gets it.

:meth:`CalibDB.stop` leaves; the last live user (or the node agent with
``stop(force=True)``) stops the instance and removes its scratch copy.  Users that died
without leaving are pruned by pid + creation time, so a reused pid is never a user.

A crashed earlier run leaves a state whose server is gone, a socket, a pid file, or
(if the starter died mid-start) an orphan server with no state at all: all of it is
cleaned up and a fresh instance started.  Every path lives under the instance dir
(``<scratch>/calibdb-<uid>-<backend>-<hash of the snapshot>``), so two scratch dirs on one
host never share anything.

Trust: the instance dir is 0700 and must be ours; a foreign or group/world-writable dir
or ``state.json`` is refused, never joined (see :mod:`calibdb.private`).  The state is
written atomically (temp file, fsync, rename), and what a joiner takes from it is
checked: the socket must lie in our private dirs and the environment handed to
payloads keeps only the DB's connection keys.  A started MariaDB gets a random
password in a 0600 file (:func:`calibdb.backends.secure_mariadb`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from calibdb import backends
from calibdb.endpoint import CONNECTION_KEYS, Endpoint, make_endpoint
from calibdb.private import check_private_file, ensure_private_dir
from compass_pilot.atomic import atomic_write_text
from compass_pilot.errors import CalibDBError
from compass_pilot.sections import CalibDBSection, expand

log = logging.getLogger(__name__)

#: Beyond start_timeout, how long a waiter gives the starter (copy + stop of a stale one).
LOCK_MARGIN = 30.0
_INSTANCE_FILES = (
    "data",
    "tmp",
    "calib.sqlite",
    "mysqld.pid",
    "mysqld.sock",
    "notify.sock",
    "error.log",
    "state.json",
    "state.tmp",
    "password",
)


_BOOT_TIME: float | None = None


def _proc_start(pid: int) -> tuple[float, bool] | None:
    """(creation time, is a zombie) of a process from ``/proc``; None when it is gone.

    The creation time is psutil's (boot time + start ticks), so values recorded by either
    compare equal; read here because importing psutil cost every node agent ~13 ms of
    CPU just to register itself as a user of its node's DB.  Without ``/proc``: psutil.
    """
    global _BOOT_TIME
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as handle:
            stat = handle.read()
        if _BOOT_TIME is None:
            with open("/proc/stat", "rb") as handle:
                _BOOT_TIME = next(float(line.split()[1]) for line in handle if line.startswith(b"btime "))
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # a Linux /proc without this pid: gone
        return _proc_start_psutil(pid)
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # from field 3 (state) on: the name may hold spaces
    return _BOOT_TIME + int(fields[19]) / os.sysconf("SC_CLK_TCK"), fields[0] == b"Z"


def _proc_start_psutil(pid: int) -> tuple[float, bool] | None:
    import psutil

    try:
        proc = psutil.Process(int(pid))
        return proc.create_time(), proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return None


def _process_identity(pid: int) -> list[float]:
    found = _proc_start(pid)
    return [pid, found[0] if found else 0.0]


def _alive(pid: int | None, create_time: float | None = None) -> bool:
    """The very process (pid *and* creation time) still runs; a zombie counts as dead."""
    if not pid:
        return False
    found = _proc_start(int(pid))
    if found is None or found[1]:
        return False
    return create_time is None or abs(found[0] - create_time) < 1.0


class _NodeLock:
    """An exclusive flock with a timeout, waited for without polling."""

    def __init__(self, path: Path, timeout: float, hint: str = "(calibdb.start_timeout + 30 s)") -> None:
        self.path = path
        self.timeout = timeout
        self.hint = hint
        self.fd = -1

    def __enter__(self) -> _NodeLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.fd = fd
            return self
        except BlockingIOError:
            pass
        log.info("%s is held by another process (starting or stopping the DB): waiting", self.path)
        got = threading.Event()
        guard = threading.Lock()
        abandoned = False

        def take() -> None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder releases it (or dies)
            with guard:
                if abandoned:
                    os.close(fd)  # closing releases the lock we got too late
                    return
                got.set()

        threading.Thread(target=take, name="calibdb-lock", daemon=True).start()
        if not got.wait(self.timeout):
            with guard:
                if not got.is_set():
                    abandoned = True
                    raise CalibDBError(
                        f"calibration DB lock {self.path} still held after {self.timeout:.0f} s "
                        f"{self.hint}: the process holding it is stuck"
                    )
        self.fd = fd
        return self

    def __exit__(self, *_: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1


class CalibDB:
    """A node-shared handle on the calibration DB; a context manager giving the :class:`Endpoint`.

    ``tcp_port`` asks the private MariaDB to listen on 127.0.0.1:<port> as well (it has no
    TCP by default); the socket stays the endpoint's primary way in.
    """

    def __init__(self, cfg: CalibDBSection, node_dir: Path | None = None, *, tcp_port: int | None = None) -> None:
        if cfg.backend not in ("sqlite", "mariadb", "external"):
            raise CalibDBError(f"calibdb.backend: expected sqlite, mariadb or external, got {cfg.backend!r}")
        self.cfg = cfg
        self.tcp_port = tcp_port
        self.snapshot = Path(expand(cfg.snapshot)) if cfg.snapshot else None
        root = Path(node_dir) if node_dir is not None else Path(expand(cfg.scratch_dir))
        key = hashlib.sha1(f"{cfg.backend}:{self.snapshot}".encode()).hexdigest()[:10]
        self.dir = root / f"calibdb-{os.geteuid()}-{cfg.backend}-{key}"
        self.endpoint: Endpoint | None = None
        self.started_here = False
        self.ready_seconds = 0.0
        self.copy_seconds = 0.0
        self.server_pid: int | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def _state_file(self) -> Path:
        return self.dir / "state.json"

    def _read_state(self) -> dict[str, Any] | None:
        """The instance's state, or None; CalibDBError for a state file we did not write."""
        if not check_private_file(self._state_file):
            return None
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or not isinstance(state.get("endpoint"), dict):
            return None
        self._check_endpoint(state["endpoint"])
        return state

    def _check_endpoint(self, endpoint: dict[str, Any]) -> None:
        """What a joiner takes from the state: its socket / file in our dirs, only connection keys."""
        env = endpoint.get("env")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise CalibDBError(f"refusing calibration DB state {self._state_file}: malformed env")
        extra = sorted(set(env) - set(CONNECTION_KEYS))
        if extra:
            raise CalibDBError(
                f"refusing calibration DB state {self._state_file}: env has non-connection keys {', '.join(extra)}"
            )
        for key in ("socket", "dsn"):
            value = endpoint.get(key) or ""
            if key == "dsn" and endpoint.get("backend") != "sqlite":
                continue
            if value and not self._ours(Path(value)):
                raise CalibDBError(
                    f"refusing calibration DB state {self._state_file}: {key} {value!r} outside {self.dir}"
                )

    def _ours(self, path: Path) -> bool:
        return path.parent in (self.dir, backends.socket_path(self.dir, create=False).parent)

    def _write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self._state_file, json.dumps(state))

    def _lock(self) -> _NodeLock:
        ensure_private_dir(self.dir)
        return _NodeLock(self.dir / "lock", self.cfg.start_timeout + LOCK_MARGIN)

    @staticmethod
    def _live_users(state: dict[str, Any]) -> list[list[float]]:
        return [u for u in state.get("users", []) if isinstance(u, list) and len(u) == 2 and _alive(u[0], u[1])]

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Endpoint:
        """Join the node's instance, starting it if this is the first user; idempotent."""
        if self.endpoint is not None:
            return self.endpoint
        if self.cfg.backend == "external":
            self.endpoint = self._external()
            return self.endpoint
        me = _process_identity(os.getpid())
        with self._lock():
            state = self._read_state()
            if state and (self.cfg.backend == "sqlite" or _alive(state.get("pid"), state.get("create_time"))):
                state["users"] = [*self._live_users(state), me]
                self._write_state(state)
                self.endpoint = Endpoint.from_dict(state["endpoint"])
                self.server_pid = state.get("pid")
                log.info("joined the node's calibration DB (%s, %d users)", self.endpoint.backend, len(state["users"]))
                return self.endpoint
            self._cleanup_instance(stale=True)
            state = self._start_instance()
            state["users"] = [me]
            self._write_state(state)
        self.started_here = True
        self.endpoint = Endpoint.from_dict(state["endpoint"])
        self.server_pid = state.get("pid")
        return self.endpoint

    def _external(self) -> Endpoint:
        """An existing server: nothing is started, but it must answer now, not hours later in a job."""
        from calibdb.endpoint import connect

        if not self.cfg.host:
            raise CalibDBError("calibdb.host is required for the external backend")
        endpoint = make_endpoint(
            "external",
            host=self.cfg.host,
            port=self.cfg.port,
            user=self.cfg.user,
            database=self.cfg.database,
            password_file=expand(self.cfg.password_file) if self.cfg.password_file else "",
        )
        env = dict(endpoint.env, COMPASS_CALIB_TIMEOUT=str(min(self.cfg.start_timeout, 10.0)))
        connect(env).close()
        log.info("external calibration DB %s:%d answers", self.cfg.host, self.cfg.port)
        return endpoint

    def _start_instance(self) -> dict[str, Any]:
        snapshot = self.snapshot
        if snapshot is None:  # the embedded default: the demo's calibration, built once per scratch dir
            from calibdb.snapshot import demo_snapshot

            cache = ensure_private_dir(self.dir.parent / f"calibdb-{os.geteuid()}-demo-snapshot")
            snapshot = demo_snapshot(self.cfg.backend, cache)
        if self.cfg.backend == "sqlite":
            endpoint, self.copy_seconds = backends.sqlite_copy(snapshot, self.dir)
            return {"pid": None, "endpoint": endpoint.to_dict(), "copy_seconds": self.copy_seconds}
        binary = backends.find_mariadbd(self.cfg.mariadbd)
        datadir = self.dir / "data"
        try:
            self.copy_seconds = backends.copy_snapshot(snapshot, datadir)
            proc, endpoint, self.ready_seconds = backends.start_mariadbd(
                binary,
                datadir,
                self.dir,
                timeout=self.cfg.start_timeout,
                user=self.cfg.user,
                database=self.cfg.database,
                tcp_port=self.tcp_port,
            )
            endpoint = backends.secure_mariadb(endpoint, self.dir)
        except BaseException:
            self._remove_files(keep_log=True)  # the error log stays for the admin; the copy goes
            raise
        log.info(
            "calibration DB started on %s: snapshot copy %.3f s, start-to-ready %.3f s",
            self.dir,
            self.copy_seconds,
            self.ready_seconds,
        )
        return {
            "pid": proc.pid,
            "create_time": _process_identity(proc.pid)[1],
            "endpoint": endpoint.to_dict(),
            "ready_seconds": self.ready_seconds,
            "copy_seconds": self.copy_seconds,
        }

    def _orphan_server(self) -> int | None:
        """A mariadbd of this instance dir that no state records (its starter died mid-start)."""
        try:  # no pid file (every sqlite start, every clean one): nothing to look up
            pid = int((self.dir / "mysqld.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        if os.path.isdir("/proc/self"):
            try:
                cmdline = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
            except OSError:
                return None
        else:
            import psutil

            try:
                cmdline = psutil.Process(pid).cmdline()
            except psutil.Error:
                return None
        return pid if f"--datadir={self.dir / 'data'}" in cmdline else None

    def _cleanup_instance(self, *, stale: bool = False) -> None:
        """Stop this dir's server (recorded or orphaned) and remove the scratch copy; under the lock."""
        state = self._read_state() or {}
        pid = state.get("pid")
        if pid and _alive(pid, state.get("create_time")):
            backends.stop_process(pid, self.cfg.stop_timeout)
        elif stale and (state or (self.dir / "mysqld.pid").exists() or (self.dir / "data").exists()):
            log.warning("stale calibration DB state in %s (server pid %s gone): recovering", self.dir, pid)
        orphan = self._orphan_server()
        if orphan is not None:
            log.warning("stopping orphan mariadbd pid %d left in %s by a crashed start", orphan, self.dir)
            backends.stop_process(orphan, self.cfg.stop_timeout)
        endpoint = state.get("endpoint", {})
        if endpoint.get("socket"):
            Path(endpoint["socket"]).unlink(missing_ok=True)
        self._remove_files()

    def _remove_files(self, *, keep_log: bool = False) -> None:
        backends.remove_sockets(self.dir)
        for name in _INSTANCE_FILES:
            if keep_log and name == "error.log":
                continue
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def stop(self, *, force: bool = False) -> None:
        """Leave; the last live user (or ``force``, for the node agent) stops the instance."""
        if self.endpoint is None or self.cfg.backend == "external":
            self.endpoint = None
            return
        me = _process_identity(os.getpid())
        with self._lock():
            state = self._read_state()
            if state is not None:
                users = self._live_users(state)
                if me in users:
                    users.remove(me)
                if users and not force:
                    state["users"] = users
                    self._write_state(state)
                    log.info("left the node's calibration DB (%d users remain)", len(users))
                else:
                    self._cleanup_instance()
                    log.info("calibration DB on %s stopped (%s)", self.dir, "forced" if force else "last user left")
        self.endpoint = None

    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()


def open_calibdb(cfg: CalibDBSection, *, node_dir: Path | None = None, tcp_port: int | None = None) -> CalibDB:
    """The node-shared calibration DB handle of a site config's ``calibdb`` section."""
    return CalibDB(cfg, node_dir, tcp_port=tcp_port)
