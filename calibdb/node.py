"""First-job-starts-it: one calibration DB instance per node, shared by every process there.

Compute nodes cannot talk to each other or to a server, so each node runs its own
instance.  Any number of processes on a node — the node agent, or independent grid
pilots — call :meth:`CalibDB.start`; under an ``flock`` on a node-local file the first
one starts the instance and records it in ``state.json`` (server pid and endpoint), the
others find it there and join as users.  :meth:`CalibDB.stop` leaves; the last user
stops the instance and removes its scratch copy.  A state left by a crashed run (its
server pid is gone) is cleaned up and a fresh instance started.  Two different scratch
directories never share anything.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import psutil

from calibdb import backends
from calibdb.endpoint import Endpoint, make_endpoint
from compass_pilot.config import CalibDBSection, expand
from compass_pilot.errors import CalibDBError

log = logging.getLogger(__name__)

LOCK_RETRY = 0.1  # seconds between lock attempts: only while another process is starting the DB


def _alive(pid: int | None, create_time: float | None = None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


class _NodeLock:
    """An exclusive flock with a timeout (flock itself cannot time out)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.fd = -1

    def __enter__(self) -> _NodeLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise CalibDBError(
                        f"calibration DB lock {self.path} still held after {self.timeout:.0f} s"
                    ) from None
                time.sleep(LOCK_RETRY)

    def __exit__(self, *_: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class CalibDB:
    """A node-shared handle on the calibration DB; a context manager."""

    def __init__(self, cfg: CalibDBSection, node_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.snapshot = Path(expand(cfg.snapshot)) if cfg.snapshot else None
        root = Path(node_dir) if node_dir is not None else Path(expand(cfg.scratch_dir))
        key = hashlib.sha1(f"{cfg.backend}:{self.snapshot}".encode()).hexdigest()[:10]
        self.dir = root / f"calibdb-{cfg.backend}-{key}"
        self.endpoint: Endpoint | None = None
        self.started_here = False
        self.ready_seconds = 0.0
        self.copy_seconds = 0.0

    # -- state ---------------------------------------------------------------------------
    @property
    def _state_file(self) -> Path:
        return self.dir / "state.json"

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self._state_file)

    def _lock(self) -> _NodeLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return _NodeLock(self.dir / "lock", self.cfg.start_timeout + 30)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Endpoint:
        """Join the node's instance, starting it if this is the first user."""
        if self.endpoint is not None:
            return self.endpoint
        if self.cfg.backend == "external":
            self.endpoint = make_endpoint(
                "external",
                host=self.cfg.host or "localhost",
                port=self.cfg.port,
                user=self.cfg.user,
                database=self.cfg.database,
            )
            return self.endpoint
        me = os.getpid()
        with self._lock():
            state = self._read_state()
            if state and (self.cfg.backend == "sqlite" or _alive(state.get("pid"), state.get("create_time"))):
                state["users"] = [u for u in state.get("users", []) if _alive(u)] + [me]
                self._write_state(state)
                self.endpoint = Endpoint.from_dict(state["endpoint"])
                log.info("joined the node's calibration DB (%s)", self.endpoint.backend)
                return self.endpoint
            if state:
                log.warning(
                    "stale calibration DB state in %s (server pid %s gone): recovering", self.dir, state.get("pid")
                )
                self._cleanup_instance()
            state = self._start_instance()
            state["users"] = [me]
            self._write_state(state)
        self.started_here = True
        self.endpoint = Endpoint.from_dict(state["endpoint"])
        return self.endpoint

    def _start_instance(self) -> dict[str, Any]:
        snapshot = self.snapshot
        if snapshot is None:  # the embedded default: the demo's calibration, built once per scratch dir
            from calibdb.snapshot import demo_snapshot

            snapshot = demo_snapshot(self.cfg.backend, self.dir.parent / "calibdb-demo-snapshot")
        if self.cfg.backend == "sqlite":
            endpoint = backends.sqlite_copy(snapshot, self.dir)
            return {"pid": None, "endpoint": endpoint.to_dict()}
        binary = backends.find_mariadbd(self.cfg.mariadbd)
        datadir = self.dir / "data"
        self.copy_seconds = backends.copy_snapshot(snapshot, datadir)
        proc, endpoint, self.ready_seconds = backends.start_mariadbd(
            binary, datadir, self.dir, timeout=self.cfg.start_timeout, user=self.cfg.user, database=self.cfg.database
        )
        return {
            "pid": proc.pid,
            "create_time": psutil.Process(proc.pid).create_time(),
            "endpoint": endpoint.to_dict(),
            "ready_seconds": self.ready_seconds,
            "copy_seconds": self.copy_seconds,
        }

    def _cleanup_instance(self) -> None:
        state = self._read_state() or {}
        pid = state.get("pid")
        if _alive(pid, state.get("create_time")):
            backends.stop_process(pid, self.cfg.stop_timeout)
        endpoint = state.get("endpoint", {})
        if endpoint.get("socket"):
            Path(endpoint["socket"]).unlink(missing_ok=True)
        for name in ("data", "tmp", "calib.sqlite", "mysqld.pid", "mysqld.sock", "error.log", "state.json"):
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def stop(self, *, force: bool = False) -> None:
        """Leave; the last user (or ``force``, for the node agent) stops the instance."""
        if self.endpoint is None or self.cfg.backend == "external":
            self.endpoint = None
            return
        me = os.getpid()
        with self._lock():
            state = self._read_state()
            if state is not None:
                users = [u for u in state.get("users", []) if _alive(u)]
                if me in users:
                    users.remove(me)
                if users and not force:
                    state["users"] = users
                    self._write_state(state)
                else:
                    self._cleanup_instance()
                    log.info("calibration DB stopped (last user left)")
        self.endpoint = None

    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()


def open_calibdb(cfg: CalibDBSection, *, node_dir: Path | None = None) -> CalibDB:
    """The node-shared calibration DB handle of a site config's ``calibdb`` section."""
    return CalibDB(cfg, node_dir)
