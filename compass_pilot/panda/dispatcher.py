"""The embedded PanDA-compatible job dispatcher: stdlib HTTP server + SQLite (WAL).

It speaks what a pilot uses of the real PanDA server, in both dialects, with the real
wire format (see compass_pilot/panda/client.py for the field lists and sources), so
our pilots and an unmodified PanDA pilot3 can both take its jobs:

- legacy ``/server/panda/getJob`` (nJobs → ``{"StatusCode":0,"jobs":[…]}``; without
  nJobs the job's fields at the top level, as pilot3 expects), ``updateJob``,
  ``updateJobsInBulk`` (``[true, ["<json>", …]]``), ``getStatus``;
- current ``/api/v1/pilot/acquire_jobs``, ``update_job``, ``update_jobs_bulk``,
  ``get_job_status`` with ``{"success", "message", "data"}`` answers.

Hand-out is atomic (``BEGIN IMMEDIATE``): a job goes to exactly one pilot.  Every
update is recorded with its time in ``updates``; a final state repeated for the same
attempt is acknowledged but not re-applied and is marked duplicate — the fault suite
counts those.  A job sent but never started within ``sent_timeout`` fails with
dispatcher code 102, a running job without heartbeat for ``heartbeat_timeout`` with
code 100, and a new attempt is activated while attempts remain.

Design choice: a new attempt keeps its PandaID and gets ``attemptNr + 1`` (JEDI would
clone the job under a new PandaID).  Keeping the id makes the per-run table count each
chunk once and makes a late update from the lost attempt's pilot a *stale attemptNr*,
which the real server answers with ``tobekilled`` — and so do we.
"""

from __future__ import annotations

import html
import json
import logging
import sqlite3
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from compass_pilot.experiment.naming import ProcessingOptions
from compass_pilot.experiment.naming import job_name as prodsys_job_name
from compass_pilot.panda import tasks as task_rules
from compass_pilot.panda.fields import wire_to_attr

log = logging.getLogger(__name__)

VALID_STATES = ("running", "failed", "finished", "holding", "starting", "transferring")
ACTIVE_STATES = ("starting", "running", "transferring", "holding")
FINAL_STATES = ("finished", "failed")
SENT_TIMEOUT_CODE, SENT_TIMEOUT_DIAG = 102, "Sent job didn't receive reply from pilot within 30 min"
HEARTBEAT_CODE, HEARTBEAT_DIAG = 100, "lost heartbeat"
MAX_BODY = 32 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks(
    task_id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, spec TEXT, created REAL);
CREATE TABLE IF NOT EXISTS jobs(
    panda_id INTEGER PRIMARY KEY AUTOINCREMENT, task_id INTEGER, status TEXT, attempt_nr INTEGER,
    max_attempts INTEGER, priority INTEGER, spec TEXT, run INTEGER, chunk INTEGER, job_type TEXT,
    created REAL, modified REAL, heartbeat REAL, start_time TEXT, end_time TEXT, node TEXT,
    pilot_id TEXT, n_events INTEGER, error_code INTEGER, error_diag TEXT, command TEXT,
    output_report TEXT);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, priority);
CREATE TABLE IF NOT EXISTS updates(
    id INTEGER PRIMARY KEY AUTOINCREMENT, panda_id INTEGER, attempt_nr INTEGER, state TEXT, time REAL,
    error_code INTEGER, error_diag TEXT, accepted INTEGER, duplicate INTEGER, command TEXT,
    dialect TEXT, auth TEXT, node TEXT);
CREATE INDEX IF NOT EXISTS updates_by_job ON updates(panda_id, attempt_nr);
CREATE TABLE IF NOT EXISTS errors(
    panda_id INTEGER, attempt_nr INTEGER, code INTEGER, diag TEXT, source TEXT, time REAL);
"""


def connect(db_path: str) -> sqlite3.Connection:
    """A connection in WAL mode; every writer takes ``BEGIN IMMEDIATE`` itself."""
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


class _Tx:
    """``with _Tx(conn):`` — an IMMEDIATE transaction (the write lock taken up front)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def submit_task(db_path: str, task: dict[str, Any]) -> int:
    """Define a task's jobs (status activated); returns the task id."""
    task_rules.validate_task(task)
    conn = connect(db_path)
    try:
        with _Tx(conn):
            cur = conn.execute(
                "INSERT INTO tasks(name, spec, created) VALUES (?, ?, ?)", (task["name"], json.dumps(task), time.time())
            )
            task_id = int(cur.lastrowid or 0)
            jobs = task_rules.build_jobs(task, task_id)
            insert_jobs(conn, jobs, int(task.get("max_attempts", 5)))
    finally:
        conn.close()
    log.info("task %d (%s): %d jobs defined", task_id, task["name"], len(jobs))
    return task_id


def insert_jobs(conn: sqlite3.Connection, jobs: list[dict[str, Any]], max_attempts: int) -> list[int]:
    """Insert job dicts as activated jobs (inside the caller's transaction)."""
    now = time.time()
    ids = []
    for job in jobs:
        cur = conn.execute(
            "INSERT INTO jobs(task_id, status, attempt_nr, max_attempts, priority, spec, run, chunk, job_type,"
            " created, modified) VALUES (?, 'activated', 1, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.get("taskID"),
                max_attempts,
                int(job.get("currentPriority", 0)),
                json.dumps(job),
                job.get("_run"),
                job.get("_chunk"),
                job.get("processingType", ""),
                now,
                now,
            ),
        )
        ids.append(int(cur.lastrowid or 0))
    return ids


def _wire_job(row: sqlite3.Row) -> dict[str, Any]:
    """The job dict a pilot receives: the stored spec plus PandaID, attemptNr and jobName."""
    spec = json.loads(row["spec"])
    job = {k: v for k, v in spec.items() if not k.startswith("_")}
    job["PandaID"] = row["panda_id"]
    job["attemptNr"] = row["attempt_nr"]
    if "_year" in spec:  # a ProdSys chunk job: its name carries PandaID and attempt
        opts = ProcessingOptions(str(spec.get("_prod", "")), int(spec.get("_slt", 0)), int(spec.get("_phast", 0)))
        job["jobName"] = prodsys_job_name(
            int(spec["_year"]),
            int(spec.get("_run", 0)),
            int(spec.get("_chunk", 0)),
            opts,
            row["panda_id"],
            row["attempt_nr"],
        )
    job.setdefault("jobName", f"compass-{row['panda_id']}-{row['attempt_nr']}")
    return job


class JobStore:
    """All dispatcher state transitions, each one SQLite transaction."""

    def __init__(self, db_path: str, *, sent_timeout: float, heartbeat_timeout: float) -> None:
        self.db_path = db_path
        self.conn = connect(db_path)
        self.lock = threading.Lock()  # one connection, many handler threads
        self.sent_timeout = sent_timeout
        self.heartbeat_timeout = heartbeat_timeout
        # hooks of the ProdSys workflow (chain of merge / cross-check jobs)
        self.on_final: list[Callable[[sqlite3.Connection, int], None]] = []
        self.summary_extensions: list[Callable[[JobStore, list[dict[str, Any]]], None]] = []
        self.request_counts: Counter[str] = Counter()  # method → HTTP requests served (benchmarks, tests)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # -- hand-out ------------------------------------------------------------------------
    def get_jobs(self, n: int, node: str = "") -> list[dict[str, Any]]:
        n = max(0, min(int(n), 10000))
        now = time.time()
        with self.lock, _Tx(self.conn) as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE status = 'activated' ORDER BY priority DESC, panda_id LIMIT ?", (n,)
            ).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE jobs SET status = 'sent', modified = ?, heartbeat = ?, node = ? WHERE panda_id = ?",
                    (now, now, node[:128], row["panda_id"]),
                )
        return [_wire_job(row) for row in rows]

    # -- updates -------------------------------------------------------------------------
    def update(self, fields: dict[str, Any], dialect: str, auth: str) -> tuple[int, str | None, str]:
        """Apply one pilot update; returns (StatusCode, command, message)."""
        try:
            panda_id = int(fields.get("panda_id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return 30, None, "job id is missing or not an integer"
        state = str(fields.get("state", ""))
        if state not in VALID_STATES:
            return 30, None, f"Invalid job status: {state}"
        attempt_raw = fields.get("attempt_nr")
        try:
            attempt = int(attempt_raw) if attempt_raw not in (None, "") else None
        except (TypeError, ValueError):
            attempt = None
        code = _opt_int(fields.get("pilot_error_code"))
        diag = str(fields.get("pilot_error_diag") or "")[:500]
        now = time.time()
        with self.lock, _Tx(self.conn) as conn:
            row = conn.execute("SELECT * FROM jobs WHERE panda_id = ?", (panda_id,)).fetchone()
            record_attempt = attempt if attempt is not None else (row["attempt_nr"] if row else 0)
            final_before = conn.execute(
                "SELECT COUNT(*) FROM updates WHERE panda_id = ? AND attempt_nr = ? AND accepted = 1"
                " AND state IN ('finished', 'failed')",
                (panda_id, record_attempt),
            ).fetchone()[0]

            def record(accepted: int, duplicate: int, command: str | None) -> None:
                conn.execute(
                    "INSERT INTO updates(panda_id, attempt_nr, state, time, error_code, error_diag, accepted,"
                    " duplicate, command, dialect, auth, node) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        panda_id,
                        record_attempt,
                        state,
                        now,
                        code,
                        diag,
                        accepted,
                        duplicate,
                        command,
                        dialect,
                        auth,
                        str(fields.get("node") or "")[:128],
                    ),
                )

            is_final = state in FINAL_STATES
            if row is None:
                record(0, 0, "tobekilled")
                return 0, "tobekilled", "unknown job"
            if final_before and is_final:
                record(0, 1, None)  # a repeated final report: acknowledged, not re-applied
                return 0, None, "already done"
            if attempt is not None and attempt != row["attempt_nr"]:
                record(0, 0, "tobekilled")
                return 0, "tobekilled", f"stale attemptNr {attempt} (current {row['attempt_nr']})"
            if row["status"] in FINAL_STATES:
                record(0, 0, "tobekilled")
                return 0, "tobekilled", "job already ended"
            command = row["command"] or None
            record(1, 0, command)
            start_time = fields.get("start_time") or row["start_time"]
            if not is_final:
                conn.execute(
                    "UPDATE jobs SET status = ?, modified = ?, heartbeat = ?, start_time = ?, node = ?,"
                    " pilot_id = ? WHERE panda_id = ?",
                    (
                        state,
                        now,
                        now,
                        start_time,
                        str(fields.get("node") or row["node"] or "")[:128],
                        str(fields.get("pilot_id") or "")[:200],
                        panda_id,
                    ),
                )
                return 0, command, ""
            n_events = _opt_int(fields.get("n_events"))
            conn.execute(
                "UPDATE jobs SET modified = ?, heartbeat = ?, start_time = ?, end_time = ?, n_events = ?,"
                " output_report = ? WHERE panda_id = ?",
                (now, now, start_time, fields.get("end_time"), n_events, fields.get("output_report"), panda_id),
            )
            if state == "finished":
                conn.execute("UPDATE jobs SET status = 'finished', command = NULL WHERE panda_id = ?", (panda_id,))
            else:
                self._fail(conn, row, code or 1220, diag or "failed without a diagnostic", "pilot")
            for hook in self.on_final:
                hook(conn, panda_id)
            return 0, None, ""

    def _fail(self, conn: sqlite3.Connection, row: sqlite3.Row, code: int, diag: str, source: str) -> None:
        """Record a failure; activate the next attempt while attempts remain."""
        now = time.time()
        conn.execute(
            "INSERT INTO errors(panda_id, attempt_nr, code, diag, source, time) VALUES (?,?,?,?,?,?)",
            (row["panda_id"], row["attempt_nr"], code, diag[:500], source, now),
        )
        if row["attempt_nr"] < row["max_attempts"]:
            conn.execute(
                "UPDATE jobs SET status = 'activated', attempt_nr = attempt_nr + 1, command = NULL, modified = ?,"
                " error_code = ?, error_diag = ?, n_events = NULL WHERE panda_id = ?",
                (now, code, diag[:500], row["panda_id"]),
            )
            log.info(
                "job %d: attempt %d failed (%d), attempt %d activated",
                row["panda_id"],
                row["attempt_nr"],
                code,
                row["attempt_nr"] + 1,
            )
        else:
            conn.execute(
                "UPDATE jobs SET status = 'failed', command = NULL, modified = ?, error_code = ?, error_diag = ?"
                " WHERE panda_id = ?",
                (now, code, diag[:500], row["panda_id"]),
            )

    def check_timeouts(self) -> int:
        """Fail jobs that went silent (102 sent / 100 lost heartbeat); returns how many."""
        now = time.time()
        failed = 0
        with self.lock, _Tx(self.conn) as conn:
            sent = conn.execute(
                "SELECT * FROM jobs WHERE status = 'sent' AND modified < ?", (now - self.sent_timeout,)
            ).fetchall()
            for row in sent:
                self._fail(conn, row, SENT_TIMEOUT_CODE, SENT_TIMEOUT_DIAG, "jobdispatcher")
            silent = conn.execute(
                f"SELECT * FROM jobs WHERE status IN ({','.join('?' * len(ACTIVE_STATES))}) AND heartbeat < ?",
                (*ACTIVE_STATES, now - self.heartbeat_timeout),
            ).fetchall()
            for row in silent:
                self._fail(conn, row, HEARTBEAT_CODE, HEARTBEAT_DIAG, "jobdispatcher")
            failed = len(sent) + len(silent)
        if failed:
            log.warning("%d job(s) failed by the heartbeat checker", failed)
        return failed

    def kill_job(self, panda_id: int) -> bool:
        """Ask the job's pilot to kill it: the next update is answered ``tobekilled``."""
        with self.lock, _Tx(self.conn) as conn:
            row = conn.execute("SELECT status FROM jobs WHERE panda_id = ?", (panda_id,)).fetchone()
            if row is None or row["status"] in FINAL_STATES:
                return False
            if row["status"] == "activated":
                conn.execute(
                    "UPDATE jobs SET status = 'failed', error_code = 1144, error_diag = 'killed before dispatch'"
                    " WHERE panda_id = ?",
                    (panda_id,),
                )
                return True
            conn.execute("UPDATE jobs SET command = 'tobekilled' WHERE panda_id = ?", (panda_id,))
        return True

    def job_status(self, ids: list[int]) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for panda_id in ids:
                row = self.conn.execute(
                    "SELECT status, attempt_nr FROM jobs WHERE panda_id = ?", (panda_id,)
                ).fetchone()
                if row is None:
                    out.append({"job_id": panda_id, "status": "not found", "attempt_number": 0})
                else:
                    out.append({"job_id": panda_id, "status": row["status"], "attempt_number": row["attempt_nr"]})
            return out

    # -- reading -------------------------------------------------------------------------
    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(row) for row in self.conn.execute(sql, args).fetchall()]

    def summary(self) -> dict[str, Any]:
        by_status = {r["status"]: r["n"] for r in self.query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")}
        attempts = {
            str(r["attempt_nr"]): r["n"]
            for r in self.query("SELECT attempt_nr, COUNT(*) AS n FROM jobs GROUP BY attempt_nr")
        }
        errors = self.query(
            "SELECT code, COUNT(*) AS count, MAX(diag) AS sample, MAX(source) AS source FROM errors GROUP BY code"
            " ORDER BY count DESC"
        )
        events = self.query(
            "SELECT COALESCE(SUM(n_events), 0) AS n FROM jobs WHERE status = 'finished' AND job_type IN ('reco', 'ddd')"
        )[0]["n"]
        runs = []
        for r in self.query(
            "SELECT run, COUNT(*) AS chunks,"
            " SUM(status = 'activated') AS defined, SUM(status = 'sent') AS sent,"
            " SUM(status IN ('starting', 'running', 'transferring', 'holding')) AS running,"
            " SUM(status = 'failed') AS failed, SUM(status = 'finished') AS finished,"
            " COALESCE(SUM(CASE WHEN status = 'finished' THEN n_events END), 0) AS events"
            " FROM jobs WHERE job_type IN ('reco', 'ddd') GROUP BY run ORDER BY run"
        ):
            runs.append(r)
        for extend in self.summary_extensions:
            extend(self, runs)
        duplicates = self.query("SELECT COUNT(*) AS n FROM updates WHERE duplicate = 1")[0]["n"]
        total = sum(by_status.values())
        final = by_status.get("finished", 0) + by_status.get("failed", 0)
        return {
            "jobs_by_status": by_status,
            "total_jobs": total,
            "open_jobs": total - final,
            "activated_jobs": by_status.get("activated", 0),
            "attempts": attempts,
            "events": events,
            "errors": errors,
            "runs": runs,
            "duplicate_final_updates": duplicates,
            "updates": self.query("SELECT COUNT(*) AS n FROM updates")[0]["n"],
            "requests": dict(self.request_counts),
        }


def _opt_int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "", "NULL") else None
    except (TypeError, ValueError):
        return None


# the store reads these attributes of an update; names per dialect come from panda/fields.py
_STORED = {
    "panda_id",
    "state",
    "attempt_nr",
    "pilot_error_code",
    "pilot_error_diag",
    "n_events",
    "start_time",
    "end_time",
    "output_report",
    "node",
    "pilot_id",
}
_LEGACY = {wire: attr for wire, attr in wire_to_attr("legacy").items() if attr in _STORED}
_V1 = {wire: attr for wire, attr in wire_to_attr("v1").items() if attr in _STORED}


def _map(fields: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names[k]: v for k, v in fields.items() if k in names}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    # -- I/O -----------------------------------------------------------------------------
    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request too large")
        raw = self.rfile.read(length) if length else b""
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if kind == "application/json":
            data = json.loads(raw.decode("utf-8") or "{}")
            if not isinstance(data, dict):
                raise ValueError("JSON body must be an object")
            return data
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        body = (
            payload
            if isinstance(payload, bytes)
            else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _legacy_reply(self, data: dict[str, Any] | list[Any]) -> None:
        if "application/json" in (self.headers.get("Accept") or "") or isinstance(data, list):
            self._send(200, data)
        else:
            from urllib.parse import urlencode

            self._send(
                200,
                urlencode({k: v if isinstance(v, str | int) else json.dumps(v) for k, v in data.items()}),
                "text/plain",
            )

    def _auth(self) -> str:
        if self.headers.get("Authorization", "").startswith("Bearer "):
            return "token"
        sock = self.connection
        if isinstance(sock, ssl.SSLSocket) and sock.getpeercert():
            return "x509"
        return "none"

    # -- routes --------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = urlparse(self.path).path
        store = self.server.store
        if path == "/":
            self._send(200, render_html(store.summary()), "text/html; charset=utf-8")
        elif path == "/api/summary":
            self._send(200, store.summary())
        elif path.startswith("/api/jobs/"):
            try:
                panda_id = int(path.rsplit("/", 1)[1])
            except ValueError:
                self._send(400, {"error": "bad job id"})
                return
            jobs = store.query("SELECT * FROM jobs WHERE panda_id = ?", (panda_id,))
            if not jobs:
                self._send(404, {"error": "no such job"})
                return
            job = jobs[0]
            job["updates"] = store.query("SELECT * FROM updates WHERE panda_id = ? ORDER BY id", (panda_id,))
            self._send(200, job)
        else:
            self._send(404, {"error": f"no such path {path}"})

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        try:
            fields = self._body()
        except (ValueError, UnicodeDecodeError) as exc:
            self._send(400, {"StatusCode": 30, "errorDialog": f"bad request body: {exc}"})
            return
        self.server.store.request_counts[path.rsplit("/", 1)[-1]] += 1
        try:
            if path.startswith("/server/panda/"):
                self._legacy(path.rsplit("/", 1)[1], fields)
            elif path.startswith("/api/v1/pilot/"):
                self._v1(path.rsplit("/", 1)[1], fields)
            elif path == "/admin/submit":
                task_id = submit_task(self.server.store.db_path, fields)
                self._send(200, {"task_id": task_id})
            elif path == "/admin/kill":
                ok = self.server.store.kill_job(int(fields.get("panda_id", 0)))
                self._send(200, {"ok": ok})
            else:
                self._send(404, {"error": f"no such path {path}"})
        except task_rules.TaskError as exc:
            self._send(400, {"error": str(exc)})
        except Exception as exc:  # a server bug must answer 500, not drop the connection
            log.exception("error serving %s", path)
            self._send(500, {"StatusCode": 30, "errorDialog": f"internal error: {type(exc).__name__}"})

    def _legacy(self, method: str, fields: dict[str, Any]) -> None:
        store = self.server.store
        if method == "getJob":
            bulk = "nJobs" in fields
            n = _opt_int(fields.get("nJobs")) or 1
            jobs = store.get_jobs(n, str(fields.get("node", "")))
            if not jobs:
                self._legacy_reply({"StatusCode": 20, "errorDialog": "no jobs in PanDA"})
            elif bulk:
                self._legacy_reply({"StatusCode": 0, "jobs": jobs})
            else:
                self._legacy_reply({"StatusCode": 0, **jobs[0]})
        elif method == "updateJob":
            code, command, message = store.update(_map(fields, _LEGACY), "legacy", self._auth())
            answer: dict[str, Any] = {"StatusCode": code, "command": command or "NULL"}
            if message and code:
                answer["errorDialog"] = message
            self._legacy_reply(answer)
        elif method == "updateJobsInBulk":
            try:
                job_list = json.loads(fields.get("jobList", "[]"))
                assert isinstance(job_list, list)
            except (ValueError, AssertionError):
                self._send(200, [False, "jobList is not a JSON list"])
                return
            out = []
            for item in job_list:
                item = item if isinstance(item, dict) else {}
                code, command, _ = store.update(_map(item, _LEGACY), "legacy", self._auth())
                out.append(json.dumps({"StatusCode": code, "command": command or "NULL"}))
            self._send(200, [True, out])
        elif method == "getStatus":
            ids = [int(i) for i in str(fields.get("ids", "")).split(",") if i.strip().isdigit()]
            statuses = store.job_status(ids)
            self._legacy_reply(
                {
                    "StatusCode": 0,
                    "jobs": [s["status"] for s in statuses],
                    "attemptNrs": [s["attempt_number"] for s in statuses],
                }
            )
        else:
            self._send(404, {"StatusCode": 30, "errorDialog": f"unknown method {method}"})

    def _v1(self, method: str, fields: dict[str, Any]) -> None:
        store = self.server.store
        if method == "acquire_jobs":
            if not fields.get("site_name"):
                self._send(200, {"success": False, "message": "site_name is required", "data": None})
                return
            jobs = store.get_jobs(_opt_int(fields.get("n_jobs")) or 1, str(fields.get("node", "")))
            if not jobs:
                self._send(200, {"success": False, "message": "No jobs in PanDA", "data": None})
            else:
                self._send(200, {"success": True, "message": "", "data": {"StatusCode": 0, "jobs": jobs}})
        elif method == "update_job":
            self._send(200, self._v1_update(fields))
        elif method == "update_jobs_bulk":
            job_list = fields.get("job_list")
            if isinstance(job_list, str):
                try:
                    job_list = json.loads(job_list)
                except ValueError:
                    job_list = None
            if not isinstance(job_list, list):
                self._send(200, {"success": False, "message": "job_list must be a list", "data": []})
                return
            data = [self._v1_update(item if isinstance(item, dict) else {}) for item in job_list]
            self._send(200, {"success": True, "message": "", "data": data})
        elif method == "get_job_status":
            raw = fields.get("job_ids", [])
            ids = raw if isinstance(raw, list) else [i for i in str(raw).split(",") if i]
            self._send(200, {"success": True, "message": "", "data": store.job_status([int(i) for i in ids])})
        else:
            self._send(404, {"success": False, "message": f"unknown method {method}", "data": None})

    def _v1_update(self, fields: dict[str, Any]) -> dict[str, Any]:
        code, command, message = self.server.store.update(_map(fields, _V1), "v1", self._auth())
        return {
            "success": code == 0,
            "message": message if code else "",
            "data": {"StatusCode": code, "command": command},
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    store: JobStore

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_sockets: set[Any] = set()
        self.sockets_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Cut kept-alive connections too: a stopped server must look dead to its clients."""
        import socket

        with self.sockets_lock:
            for sock in list(self.open_sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


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
    ) -> None:
        self.store = JobStore(db_path, sent_timeout=sent_timeout, heartbeat_timeout=heartbeat_timeout)
        from compass_pilot.panda import workflow

        workflow.install(self.store)  # the ProdSys chain for tasks with `chain: true`
        self.server = _Server((host, port), _Handler)
        self.server.store = self.store
        scheme = "http"
        if certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            if cafile:
                context.load_verify_locations(cafile)
                context.verify_mode = ssl.CERT_OPTIONAL
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
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


# -- the summary page ---------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summary: dict[str, Any]) -> str:
    """A page in the spirit of the PanDA monitor: status counts, attempts, errors, runs."""
    status_rows = [{"status": k, "jobs": v} for k, v in sorted(summary["jobs_by_status"].items())]
    attempt_rows = [{"attemptNr": k, "jobs": v} for k, v in sorted(summary["attempts"].items())]
    error_rows = [
        {"code": e["code"], "count": e["count"], "source": e["source"], "sample diagnostic": e["sample"]}
        for e in summary["errors"]
    ]
    run_columns = list(summary["runs"][0]) if summary["runs"] else ["run", "chunks"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>compass-pilot dispatcher</title>"
        "<style>body{font-family:sans-serif} table{border-collapse:collapse;margin:0 0 1em}"
        " td,th{border:1px solid #999;padding:2px 8px}</style></head><body>"
        f"<h1>compass-pilot dispatcher</h1><p>{summary['total_jobs']} jobs, {summary['open_jobs']} open,"
        f" {summary['events']} events reconstructed, {summary['updates']} updates"
        f" ({summary['duplicate_final_updates']} duplicate final)</p>"
        f"<h2>Jobs by status</h2>{_table(status_rows, ['status', 'jobs'])}"
        f"<h2>Attempts</h2>{_table(attempt_rows, ['attemptNr', 'jobs'])}"
        f"<h2>Errors by code</h2>{_table(error_rows, ['code', 'count', 'source', 'sample diagnostic'])}"
        f"<h2>Runs</h2>{_table(summary['runs'], run_columns)}"
        "</body></html>"
    )
