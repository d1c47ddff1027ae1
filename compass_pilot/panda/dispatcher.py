"""The embedded PanDA-compatible job dispatcher: stdlib HTTP server + SQLite (WAL).

Three parts, each changeable alone: ``store`` (every state transition, SQLite),
``wire`` (the HTTP routes of both PanDA dialects, the operator endpoints) and ``page``
(the operator's view).  This module is the lifecycle around them: it binds the socket
(optionally TLS), installs the ProdSys chain rules (``workflow``) into the store, and
runs the server and the heartbeat checker in background threads.  The names other
modules import from here (``submit_task``, ``insert_jobs``, ``JobStore``, the codes)
are re-exported so callers need not know the split.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import ssl
import threading
from typing import Any

from compass_pilot.errors import ConfigError
from compass_pilot.panda.auth import Authenticator, is_loopback, load_key
from compass_pilot.panda.store import (  # noqa: F401  (re-exported)
    ACTIVE_STATES,
    FINAL_STATES,
    HEARTBEAT_CODE,
    HEARTBEAT_DIAG,
    KILLED_CODE,
    RETRY_DELAY,
    SENT_TIMEOUT_CODE,
    SENT_TIMEOUT_DIAG,
    VALID_STATES,
    JobStore,
    connect,
    insert_jobs,
    submit_task,
)
from compass_pilot.panda.wire import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    REQUEST_TIMEOUT,
    _Handler,
    _Server,
)

log = logging.getLogger(__name__)


class Dispatcher:
    """The embedded dispatcher: HTTP(S) server + heartbeat checker, in background threads."""

    def __init__(
        self,
        db_path: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sent_timeout: float = 1800,
        heartbeat_timeout: float = 7200,
        certfile: str | None = None,
        keyfile: str | None = None,
        cafile: str | None = None,
        check_interval: float = 60,
        retry_delay: float = RETRY_DELAY,
        token_key_file: str | None = None,
        pilot_dns: tuple[str, ...] | list[str] = (),
        admin_dns: tuple[str, ...] | list[str] = (),
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
    ) -> None:
        auth = Authenticator(
            token_key=load_key(token_key_file) if token_key_file else None,
            x509=bool(cafile),
            pilot_dns=pilot_dns,
            admin_dns=admin_dns,
        )
        if cafile and not certfile:
            raise ConfigError("dispatcher: a client CA (--ca) needs a server certificate (--cert) to serve HTTPS")
        if not auth.required and not is_loopback(host):
            raise ConfigError(
                f"dispatcher: refusing to serve {host or 'every interface'} without authentication "
                "(give --token-key and/or --cert with --ca, or bind 127.0.0.1)"
            )
        self.store = JobStore(
            db_path, sent_timeout=sent_timeout, heartbeat_timeout=heartbeat_timeout, retry_delay=retry_delay
        )
        from compass_pilot.panda import workflow

        workflow.install(self.store)  # the ProdSys chain for tasks with `chain: true`
        self.server = _Server((host, port), _Handler)
        self.server.store = self.store
        self.server.auth = auth
        self.server.request_timeout = request_timeout
        if max_connections < 1 or max_connections_per_client < 1:
            raise ConfigError("dispatcher: connection limits must be at least 1")
        self.server.max_connections = max_connections
        self.server.max_connections_per_client = max_connections_per_client
        scheme = "http"
        if certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            if cafile:
                if os.path.isdir(cafile):  # a grid CA dir (/etc/grid-security/certificates): hashed names
                    context.load_verify_locations(capath=cafile)
                else:
                    context.load_verify_locations(cafile=cafile)
                # a certificate presented is always verified; it is required unless tokens are accepted too
                context.verify_mode = ssl.CERT_OPTIONAL if auth.token_key else ssl.CERT_REQUIRED
                context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS  # RFC 3820 proxies, as pilots carry
            self.server.tls = context
            scheme = "https"
        bound_host, bound_port = self.server.server_address[:2]
        self.url = f"{scheme}://{'localhost' if certfile else bound_host}:{bound_port}"
        self.check_interval = max(0.5, check_interval)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Dispatcher:
        serve = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
        check = threading.Thread(target=self._check_loop, daemon=True)
        self._threads = [serve, check]
        for thread in self._threads:
            thread.start()
        log.info("dispatcher serving on %s", self.url)
        return self

    def _check_loop(self) -> None:
        while not self._stop.wait(self.check_interval):
            try:
                self.store.check_timeouts()
            except sqlite3.Error as exc:
                log.error("heartbeat check failed: %s", exc)

    def stop(self) -> None:
        """Stop serving (idempotent: a test may stop it early to play a dead server)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.server.close_open_connections()
        for thread in self._threads:
            thread.join(5)
        self.store.close()

    # -- conveniences for the demo, the CLI and the tests --------------------------------
    def kill_job(self, panda_id: int) -> bool:
        return self.store.kill_job(panda_id)

    def summary(self) -> dict[str, Any]:
        return self.store.summary()

    def job(self, panda_id: int) -> dict[str, Any]:
        rows = self.store.query("SELECT * FROM jobs WHERE panda_id = ?", (panda_id,))
        return rows[0] if rows else {}

    def updates(self, panda_id: int | None = None) -> list[dict[str, Any]]:
        if panda_id is None:
            return self.store.query("SELECT * FROM updates ORDER BY id")
        return self.store.query("SELECT * FROM updates WHERE panda_id = ? ORDER BY id", (panda_id,))

    def duplicate_finals(self) -> list[tuple[int, int]]:
        """(PandaID, attempt) pairs whose final state was reported more than once."""
        rows = self.store.query("SELECT panda_id, attempt_nr FROM updates WHERE duplicate = 1")
        return [(r["panda_id"], r["attempt_nr"]) for r in rows]

    def final_updates(self) -> dict[tuple[int, int], int]:
        """How many accepted final updates each (PandaID, attempt) got (1 is the promise)."""
        rows = self.store.query(
            "SELECT panda_id, attempt_nr, COUNT(*) AS n FROM updates WHERE state IN ('finished', 'failed')"
            " AND accepted = 1 GROUP BY panda_id, attempt_nr"
        )
        return {(r["panda_id"], r["attempt_nr"]): r["n"] for r in rows}
