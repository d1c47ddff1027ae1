"""What a payload needs to reach the calibration DB, and how it connects.

CORAL finds its calibration database through environment variables (``CDBSERVER``,
``MYSQL_UNIX_PORT``); the endpoint carries exactly those plus a DSN, so the same
payload runs against the node-private MariaDB on an HPC node, an external server on
a grid site, or the SQLite file of the embedded default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compass_pilot.errors import CalibDBError

CONNECT_TIMEOUT = 10

#: Everything an endpoint may put in a payload's environment: how to reach the DB, no more.
CONNECTION_KEYS = (
    "CDBSERVER",
    "MYSQL_UNIX_PORT",
    "COMPASS_CALIB_BACKEND",
    "COMPASS_CALIB_DSN",
    "COMPASS_CALIB_DB",
    "COMPASS_CALIB_USER",
    "COMPASS_CALIB_PORT",
    "COMPASS_CALIB_PASSWORD_FILE",
    "COMPASS_CALIB_TIMEOUT",
)


@dataclass(frozen=True)
class Endpoint:
    """How to reach one running calibration DB."""

    backend: str  # "sqlite" | "mariadb" | "external"
    dsn: str  # sqlite: file path; mariadb: mysql://user@localhost/db?unix_socket=…
    socket: str = ""
    host: str = ""
    port: int = 0
    user: str = ""
    database: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoint:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def make_endpoint(
    backend: str,
    *,
    path: str = "",
    socket: str = "",
    host: str = "",
    port: int = 0,
    user: str = "",
    database: str = "",
    password_file: str = "",
) -> Endpoint:
    """Build an endpoint and the environment a payload gets from it.

    A password never enters the environment (it would show in ``/proc/*/environ`` and
    in job dumps): the payload gets ``COMPASS_CALIB_PASSWORD_FILE`` and reads the file.
    """
    if backend == "sqlite":
        env = {"COMPASS_CALIB_BACKEND": "sqlite", "COMPASS_CALIB_DSN": path, "COMPASS_CALIB_DB": "main"}
        return Endpoint("sqlite", path, env=env)
    env = {
        "COMPASS_CALIB_BACKEND": "mysql",
        "COMPASS_CALIB_USER": user,
        "COMPASS_CALIB_DB": database,
        "CDBSERVER": host or "localhost",
    }
    if port:
        env["COMPASS_CALIB_PORT"] = str(port)
    if password_file:
        env["COMPASS_CALIB_PASSWORD_FILE"] = password_file
    if socket:
        env["MYSQL_UNIX_PORT"] = socket
        dsn = f"mysql://{user}@localhost/{database}?unix_socket={socket}"
    else:
        dsn = f"mysql://{user}@{host}:{port}/{database}"
    env["COMPASS_CALIB_DSN"] = dsn
    return Endpoint(
        backend, dsn, socket=socket, host=host or "localhost", port=port, user=user, database=database, env=env
    )


def _timeout(env: dict[str, str]) -> float:
    raw = env.get("COMPASS_CALIB_TIMEOUT", "")
    if not raw:
        return CONNECT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise CalibDBError(f"COMPASS_CALIB_TIMEOUT={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise CalibDBError(f"COMPASS_CALIB_TIMEOUT={raw!r} must be positive")
    return value


def connect(env: dict[str, str]) -> Any:
    """A DB-API connection from a payload's environment; CalibDBError (1244) when it fails.

    Connect, read and write are bounded (``COMPASS_CALIB_TIMEOUT`` seconds, default
    10), so a dead or frozen server fails the job with 1244 instead of hanging it.
    """
    backend = env.get("COMPASS_CALIB_BACKEND", "")
    timeout = _timeout(env)
    try:
        if backend == "sqlite":
            path = env.get("COMPASS_CALIB_DSN", "")
            if not path or not os.path.isfile(path):
                raise CalibDBError(f"can't connect to CDB database (sqlite): no file at COMPASS_CALIB_DSN={path!r}")
            import sqlite3  # here: node agents import this module for its constants only

            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
            conn.execute("SELECT 1 FROM calib LIMIT 1")
            return conn
        if backend == "mysql":
            import pymysql

            kwargs: dict[str, Any] = {
                "user": env.get("COMPASS_CALIB_USER", "root"),
                "database": env.get("COMPASS_CALIB_DB", "calib"),
                "connect_timeout": timeout,
                "read_timeout": timeout,
                "write_timeout": timeout,
            }
            if env.get("MYSQL_UNIX_PORT"):
                kwargs["unix_socket"] = env["MYSQL_UNIX_PORT"]
            else:
                kwargs["host"] = env.get("CDBSERVER", "localhost")
                kwargs["port"] = int(env.get("COMPASS_CALIB_PORT", "3306"))
            if env.get("COMPASS_CALIB_PASSWORD_FILE"):
                kwargs["password"] = Path(env["COMPASS_CALIB_PASSWORD_FILE"]).read_text().strip()
            return pymysql.connect(**kwargs)
    except CalibDBError:
        raise
    except Exception as exc:
        raise CalibDBError(f"can't connect to CDB database ({backend}): {exc}") from None
    raise CalibDBError(f"no calibration DB in the environment (COMPASS_CALIB_BACKEND={backend!r})")


def read_constants(conn: Any, run: int) -> dict[str, float]:
    """Calibration constants of one run: detector → constant."""
    # The one SQL difference between the two drivers: sqlite3's paramstyle is qmark,
    # pymysql's is format.
    import sqlite3

    placeholder = "?" if isinstance(conn, sqlite3.Connection) else "%s"
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT detector, constant FROM calib WHERE run = {placeholder}", (int(run),))
        rows = cur.fetchall()
    except Exception as exc:
        raise CalibDBError(f"calibration query failed for run {run}: {exc}") from None
    return {str(det): float(value) for det, value in rows}
