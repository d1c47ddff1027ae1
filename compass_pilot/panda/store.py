"""The dispatcher's store: every job state transition, each one SQLite transaction (WAL).

This is the dispatcher's model, apart from how requests reach it (``wire``) and how it is
shown (``page``), so that each can change alone.  Hand-out is atomic (``BEGIN IMMEDIATE``):
a job goes to exactly one pilot.  Every update is recorded with its time in ``updates``; a
final state repeated for the same attempt is acknowledged but not re-applied and is marked
duplicate — the fault suite counts those.  A job sent but never started within
``sent_timeout`` fails with dispatcher code 102, a running job without heartbeat for
``heartbeat_timeout`` with code 100, and a new attempt is activated while attempts remain.

Design choice: a new attempt keeps its PandaID and gets ``attemptNr + 1`` (JEDI would
clone the job under a new PandaID).  Keeping the id makes the per-run table count each
chunk once and makes a late update from the lost attempt's pilot a *stale attemptNr*,
which the real server answers with ``tobekilled`` — and so do we.

The ProdSys chain rules (``workflow``) register hooks here (``on_final``,
``summary_extensions``); the store never imports them.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from compass_pilot.experiment.naming import ProcessingOptions
from compass_pilot.experiment.naming import job_name as prodsys_job_name
from compass_pilot.filemodes import private_file
from compass_pilot.panda import tasks as task_rules
from compass_pilot.panda.checkpoint import Checkpointer
from compass_pilot.panda.jobdict import complete as complete_job

log = logging.getLogger("compass_pilot.panda.dispatcher")

VALID_STATES = ("running", "failed", "finished", "holding", "starting", "transferring")
ACTIVE_STATES = ("starting", "running", "transferring", "holding")
FINAL_STATES = ("finished", "failed")
SENT_TIMEOUT_CODE, SENT_TIMEOUT_DIAG = 102, "Sent job didn't receive reply from pilot within 30 min"
HEARTBEAT_CODE, HEARTBEAT_DIAG = 100, "lost heartbeat"
KILLED_CODE = 1144  # pilot3's PANDAKILL: the job was killed by the server / an operator
#: seconds a failed attempt waits before it is handed out again: a job failing on a missing
#: input must not bounce between pilots several times a second (JEDI retries after minutes)
RETRY_DELAY = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks(
    task_id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, spec TEXT, created REAL);
CREATE TABLE IF NOT EXISTS jobs(
    panda_id INTEGER PRIMARY KEY AUTOINCREMENT, task_id INTEGER, status TEXT, attempt_nr INTEGER,
    max_attempts INTEGER, priority INTEGER, spec TEXT, run INTEGER, chunk INTEGER, job_type TEXT,
    created REAL, modified REAL, heartbeat REAL, start_time TEXT, end_time TEXT, node TEXT,
    pilot_id TEXT, n_events INTEGER, error_code INTEGER, error_diag TEXT, command TEXT,
    output_report TEXT, ready_at REAL, owner TEXT);
DROP INDEX IF EXISTS jobs_by_status;
CREATE INDEX IF NOT EXISTS jobs_hand_out ON jobs(status, priority DESC, panda_id);
CREATE INDEX IF NOT EXISTS jobs_by_run ON jobs(run, task_id);
CREATE INDEX IF NOT EXISTS jobs_sent ON jobs(modified) WHERE status = 'sent';
CREATE TABLE IF NOT EXISTS updates(
    id INTEGER PRIMARY KEY AUTOINCREMENT, panda_id INTEGER, attempt_nr INTEGER, state TEXT, time REAL,
    error_code INTEGER, error_diag TEXT, accepted INTEGER, duplicate INTEGER, command TEXT,
    dialect TEXT, auth TEXT, node TEXT);
CREATE INDEX IF NOT EXISTS updates_by_job ON updates(panda_id, attempt_nr);
CREATE INDEX IF NOT EXISTS updates_duplicates ON updates(panda_id) WHERE duplicate = 1;
CREATE TABLE IF NOT EXISTS errors(
    panda_id INTEGER, attempt_nr INTEGER, code INTEGER, diag TEXT, source TEXT, time REAL);
CREATE TABLE IF NOT EXISTS workers(
    harvester_id TEXT, worker_id TEXT, status TEXT, node_id TEXT, time REAL,
    PRIMARY KEY (harvester_id, worker_id));
CREATE TABLE IF NOT EXISTS worker_nodes(
    site TEXT, host_name TEXT, panda_queue TEXT, cpu_model TEXT, attributes TEXT, last_seen REAL,
    PRIMARY KEY (site, host_name));
-- Harvester's own reports (compass_pilot/panda/harvester_api.py)
CREATE TABLE IF NOT EXISTS harvester_instances(
    harvester_id TEXT PRIMARY KEY, owner TEXT, data TEXT, last_seen REAL);
CREATE TABLE IF NOT EXISTS harvester_workers(
    harvester_id TEXT, worker_id INTEGER, status TEXT, computing_site TEXT, batch_id TEXT, n_jobs INTEGER,
    panda_ids TEXT, attributes TEXT, time REAL, PRIMARY KEY (harvester_id, worker_id));
CREATE TABLE IF NOT EXISTS harvester_dialogs(
    harvester_id TEXT, diag_id INTEGER, module TEXT, identifier TEXT, level TEXT, message TEXT, created TEXT,
    time REAL, PRIMARY KEY (harvester_id, diag_id));
CREATE TABLE IF NOT EXISTS harvester_worker_stats(
    harvester_id TEXT, panda_queue TEXT, statistics TEXT, time REAL, PRIMARY KEY (harvester_id, panda_queue));
CREATE TABLE IF NOT EXISTS harvester_metrics(
    harvester_id TEXT, host TEXT, created TEXT, metrics TEXT, PRIMARY KEY (harvester_id, host));
"""
# Job counts by status, kept by triggers so every writer (this store, ``submit_task``'s own
# connection, the chain rules) keeps them true and the page / metrics read them in O(1).
COUNTERS = (
    "CREATE TABLE status_counts(status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN"
    " INSERT INTO status_counts(status, n) VALUES (new.status, 1) ON CONFLICT(status) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs WHEN old.status IS NOT new.status BEGIN"
    " UPDATE status_counts SET n = n - 1 WHERE status = old.status;"
    " INSERT INTO status_counts(status, n) VALUES (new.status, 1) ON CONFLICT(status) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN"
    " UPDATE status_counts SET n = n - 1 WHERE status = old.status; END",
    "INSERT INTO status_counts(status, n) SELECT status, COUNT(*) FROM jobs GROUP BY status",
)
#: bulk updates are applied this many per write transaction: few commits, yet the write
#: lock is never held so long that a pilot's single request waits behind a whole bulk
GROUP_COMMIT = 128


def connect(db_path: str) -> sqlite3.Connection:
    """A connection in WAL mode; every writer takes ``BEGIN IMMEDIATE`` itself."""
    if db_path != ":memory:":
        private_file(db_path)  # jobs and pilot identities: 0600 (-wal / -shm follow its mode)
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages: the hot indexes stay in memory at 1M jobs
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    if "ready_at" not in columns:  # a database made before the retry back-off
        conn.execute("ALTER TABLE jobs ADD COLUMN ready_at REAL")
    if "owner" not in columns:  # a database made before authentication (owner: the identity a job went to)
        conn.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
    if not _has_counters(conn):
        conn.execute("BEGIN IMMEDIATE")  # checked again under the write lock: one connection creates them
        try:
            if not _has_counters(conn):
                for statement in COUNTERS:
                    conn.execute(statement)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return conn


def _has_counters(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'status_counts'").fetchone())


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


def _wire_job(row: sqlite3.Row, n_sent: int = 0) -> dict[str, Any]:
    """The job dict a pilot receives: every field of a real getJob job (``jobdict``) and our jobName."""
    spec = json.loads(row["spec"])
    job = complete_job(
        {k: v for k, v in spec.items() if not k.startswith("_")}, row["panda_id"], row["attempt_nr"], n_sent
    )
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


#: what an update reads of its job (not the spec: an update never needs it, and it is the row's bulk)
_UPDATE_ROW = (
    "SELECT panda_id, task_id, run, status, attempt_nr, max_attempts, command, owner, start_time, end_time,"
    " node, pilot_id FROM jobs WHERE panda_id = ?"
)


class JobStore:
    """All dispatcher state transitions, each one SQLite transaction."""

    def __init__(
        self, db_path: str, *, sent_timeout: float, heartbeat_timeout: float, retry_delay: float = RETRY_DELAY
    ) -> None:
        self.db_path = db_path
        self.retry_delay = retry_delay
        self.conn = connect(db_path)
        # one writing connection, many handler threads; re-entrant so a bulk update's group
        # transaction can run the single-update code inside it
        self.lock = threading.RLock()
        # WAL checkpoints (copy back + fsync) in a thread of their own, not inside a request's COMMIT
        self.checkpointer = Checkpointer(db_path, self.conn) if db_path != ":memory:" else None
        # reads for the operator (page, /api, metrics) use their own connection: WAL lets them
        # run beside a write, so a summary never holds the hand-out and update paths
        self.reader = connect(db_path)
        self.read_lock = threading.Lock()
        self._summary: tuple[float, dict[str, Any]] | None = None
        self.sent_timeout = sent_timeout
        self.heartbeat_timeout = heartbeat_timeout
        # hooks of the ProdSys workflow (chain of merge / cross-check jobs)
        # (a final update's hook gets the job's row as it was: panda_id, task_id, run, …)
        self.on_final: list[Callable[[sqlite3.Connection, sqlite3.Row], None]] = []
        self.summary_extensions: list[Callable[[JobStore, list[dict[str, Any]]], None]] = []
        self.request_counts: Counter[str] = Counter()  # method → HTTP requests served (benchmarks, tests)

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        with self.lock:
            self.conn.close()
        with self.read_lock:
            self.reader.close()

    @contextmanager
    def group(self) -> Iterator[None]:
        """Group commit: the updates made inside share one write transaction (a bulk request's)."""
        with self._write():
            yield

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The write lock and an IMMEDIATE transaction; joins one already open on this thread."""
        with self.lock:
            if self.conn.in_transaction:  # only the lock holder opens transactions: it is ours
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            if self.checkpointer is not None:
                self.checkpointer.committed()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The reading connection (committed state; never blocks or is blocked by a write)."""
        with self.read_lock:
            yield self.reader

    # -- hand-out ------------------------------------------------------------------------
    def get_jobs(self, n: int, node: str = "", owner: str = "") -> list[dict[str, Any]]:
        """Hand out up to n activated jobs whose retry back-off has passed.

        A new attempt starts clean: the previous attempt's error, events, times and
        pilot are cleared (the real server gives each attempt a fresh job record).
        ``nSent`` is, as on the real server, how many jobs went out in the last minute.
        ``owner`` is the authenticated identity the jobs go to: only it may update them.
        """
        n = max(0, min(int(n), 10000))
        now = time.time()
        with self._write() as conn:
            # served in order by the jobs_hand_out index: only the n rows handed out are read
            rows = conn.execute(
                "SELECT * FROM jobs WHERE status = 'activated' AND (ready_at IS NULL OR ready_at <= ?)"
                " ORDER BY priority DESC, panda_id LIMIT ?",
                (now, n),
            ).fetchall()
            n_sent = conn.execute(  # the partial index jobs_sent: only jobs in 'sent' are looked at
                "SELECT COUNT(*) FROM jobs WHERE status = 'sent' AND modified > ?", (now - 60,)
            ).fetchone()[0]
            conn.executemany(
                "UPDATE jobs SET status = 'sent', modified = ?, heartbeat = ?, node = ?, error_code = NULL,"
                " error_diag = NULL, n_events = NULL, start_time = NULL, end_time = NULL, pilot_id = NULL,"
                " output_report = NULL, ready_at = NULL, owner = ? WHERE panda_id = ?",
                [(now, now, node[:128], owner or None, row["panda_id"]) for row in rows],
            )
        return [_wire_job(row, n_sent) for row in rows]  # parsed and shaped outside the lock

    # -- updates -------------------------------------------------------------------------
    def update(
        self, fields: dict[str, Any], dialect: str, auth: str, identity: str = ""
    ) -> tuple[int, str | None, str]:
        """Apply one pilot update; returns (StatusCode, command, message).

        A job handed to an authenticated identity takes updates from that identity only
        (StatusCode 70, permission): another pilot cannot finish or fail it.
        """
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
        code = opt_int(fields.get("pilot_error_code"))
        diag = str(fields.get("pilot_error_diag") or "")[:500]
        now = time.time()
        is_final = state in FINAL_STATES
        with self._write() as conn:
            row = conn.execute(_UPDATE_ROW, (panda_id,)).fetchone()
            record_attempt = attempt if attempt is not None else (row["attempt_nr"] if row else 0)
            final_before = (
                is_final
                and conn.execute(
                    "SELECT COUNT(*) FROM updates WHERE panda_id = ? AND attempt_nr = ? AND accepted = 1"
                    " AND state IN ('finished', 'failed')",
                    (panda_id, record_attempt),
                ).fetchone()[0]
            )

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

            if row is None:
                record(0, 0, "tobekilled")
                return 0, "tobekilled", "unknown job"
            if row["owner"] and identity != row["owner"]:
                record(0, 0, None)
                return 70, None, "permission denied: the job was dispatched to another pilot identity"
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
            start_time = server_time(fields.get("start_time")) or row["start_time"]
            node = str(fields.get("node") or row["node"] or "")[:128]
            pilot_id = str(fields.get("pilot_id") or row["pilot_id"] or "")[:200]
            if not is_final:
                conn.execute(
                    "UPDATE jobs SET status = ?, modified = ?, heartbeat = ?, start_time = ?, node = ?,"
                    " pilot_id = ? WHERE panda_id = ?",
                    (state, now, now, start_time, node, pilot_id, panda_id),
                )
                return 0, command, ""
            n_events = opt_int(fields.get("n_events"))
            output_report = _with_job_report_events(fields.get("output_report"), fields.get("meta_data"))
            end_time = server_time(fields.get("end_time")) or row["end_time"]
            finished = (
                ", status = 'finished', command = NULL, error_code = NULL, error_diag = NULL"
                if state == "finished"
                else ""
            )  # one write of the row for a finished job
            conn.execute(
                "UPDATE jobs SET modified = ?, heartbeat = ?, start_time = ?, end_time = ?, n_events = ?,"
                f" output_report = ?, node = ?, pilot_id = ?{finished} WHERE panda_id = ?",
                (now, now, start_time, end_time, n_events, output_report, node, pilot_id, panda_id),
            )
            if state != "finished":
                self._fail(conn, row, code or 1220, diag or "failed without a diagnostic", "pilot")
            for hook in self.on_final:
                hook(conn, row)
            return 0, None, ""

    def update_many(
        self, items: list[dict[str, Any]], dialect: str, auth: str, identity: str = ""
    ) -> list[tuple[int, str | None, str]]:
        """A bulk update: each item as :meth:`update`, ``GROUP_COMMIT`` of them per transaction."""
        out: list[tuple[int, str | None, str]] = []
        for start in range(0, len(items), GROUP_COMMIT):
            with self.group():
                out.extend(
                    self.update(fields, dialect, auth, identity) for fields in items[start : start + GROUP_COMMIT]
                )
        return out

    def _fail(self, conn: sqlite3.Connection, row: sqlite3.Row, code: int, diag: str, source: str) -> None:
        """Record a failure; activate the next attempt while attempts remain."""
        now = time.time()
        conn.execute(
            "INSERT INTO errors(panda_id, attempt_nr, code, diag, source, time) VALUES (?,?,?,?,?,?)",
            (row["panda_id"], row["attempt_nr"], code, diag[:500], source, now),
        )
        killed = row["command"] == "tobekilled"  # an operator's kill is final: no new attempt
        if row["attempt_nr"] < row["max_attempts"] and not killed:
            conn.execute(
                "UPDATE jobs SET status = 'activated', attempt_nr = attempt_nr + 1, command = NULL, modified = ?,"
                " error_code = ?, error_diag = ?, n_events = NULL, ready_at = ? WHERE panda_id = ?",
                (now, code, diag[:500], now + self.retry_delay, row["panda_id"]),
            )
            log.info(
                "job %d: attempt %d failed (%d), attempt %d activated in %.0f s",
                row["panda_id"],
                row["attempt_nr"],
                code,
                row["attempt_nr"] + 1,
                self.retry_delay,
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
        with self._write() as conn:
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
        with self._write() as conn:
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

    def update_worker(self, harvester_id: str, worker_id: str, status: str, node_id: str | None) -> None:
        """A pilot's word on its Harvester worker (``updateWorkerPilotStatus`` / ``update_worker_status``)."""
        with self.lock, _Tx(self.conn) as conn:
            conn.execute(
                "INSERT INTO workers(harvester_id, worker_id, status, node_id, time) VALUES (?,?,?,?,?)"
                " ON CONFLICT(harvester_id, worker_id) DO UPDATE SET status = excluded.status,"
                " node_id = COALESCE(excluded.node_id, node_id), time = excluded.time",
                (harvester_id, worker_id, status, node_id, time.time()),
            )

    def update_worker_node(
        self, site: str, host_name: str, panda_queue: str | None, cpu_model: str, attrs: str
    ) -> None:
        """A worker node's description (``update_worker_node``): added once, then only ``last_seen`` moves."""
        host = host_name.split("@", 1)[-1]  # "slot1@wn.example.org" → the node, as the server parses it
        with self.lock, _Tx(self.conn) as conn:
            conn.execute(
                "INSERT INTO worker_nodes(site, host_name, panda_queue, cpu_model, attributes, last_seen)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(site, host_name) DO UPDATE SET last_seen = excluded.last_seen",
                (site, host, panda_queue, cpu_model, attrs, time.time()),
            )

    def job_status(self, ids: list[int]) -> list[dict[str, Any]]:
        with self.read() as conn:
            out = []
            for panda_id in ids:
                row = conn.execute("SELECT status, attempt_nr FROM jobs WHERE panda_id = ?", (panda_id,)).fetchone()
                if row is None:
                    out.append({"job_id": panda_id, "status": "not found", "attempt_number": 0})
                else:
                    out.append({"job_id": panda_id, "status": row["status"], "attempt_number": row["attempt_nr"]})
            return out

    # -- reading -------------------------------------------------------------------------
    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.read() as conn:
            return [dict(row) for row in conn.execute(sql, args).fetchall()]

    def status_counts(self) -> dict[str, int]:
        """Jobs by status, O(1): the trigger-kept counters (for ``/metrics`` and the page header)."""
        return {r["status"]: r["n"] for r in self.query("SELECT status, n FROM status_counts WHERE n > 0")}

    def summary(self, max_age: float = 0.0) -> dict[str, Any]:
        """The operator's aggregate view; with ``max_age`` a copy at most that old is reused.

        Its queries scan the jobs table (per run, per attempt), so a page or a metrics
        scraper polled at scale should pass a ``max_age`` of a few seconds; they run on
        the reading connection either way and never hold the hand-out or update paths.
        """
        cached = self._summary
        if max_age > 0 and cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        result = self._compute_summary()
        self._summary = (time.monotonic(), result)
        return result

    def _compute_summary(self) -> dict[str, Any]:
        by_status = self.status_counts()
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


def _with_job_report_events(output_report: Any, meta_data: Any) -> Any:
    """The file report with each file's ``nevents`` from the job report, where the server's Adder takes it.

    panda-server reads per-file event counts only from ``meta_data``
    (``files.output[].subFiles[].{name, nentries}``); a ``nevents`` in the file report is
    kept only for a file the job report does not name (reports of older pilots).
    """
    try:
        files = json.loads(output_report) if isinstance(output_report, str) else None
        meta = json.loads(meta_data) if isinstance(meta_data, str) else meta_data
        counts = {
            str(sub["name"]): int(sub["nentries"])
            for item in meta["files"]["output"]
            for sub in item["subFiles"]
            if "nentries" in sub
        }
    except (ValueError, TypeError, KeyError):
        return output_report
    if not isinstance(files, dict):
        return output_report
    for lfn, entry in files.items():
        if lfn in counts and isinstance(entry, dict):
            entry["nevents"] = counts[lfn]
    return json.dumps(files)


def server_time(value: Any) -> str | None:
    """A start/end time as the real server takes it: ``%Y-%m-%d %H:%M:%S`` (UTC), anything else dropped.

    panda-server parses these with ``time.strptime(value, "%Y-%m-%d %H:%M:%S")`` and silently
    ignores a value that does not parse (an epoch number, an ISO "T" form), so do we.
    """
    if not isinstance(value, str):
        return None
    if _CANONICAL_TIME.fullmatch(value):  # the usual form: checked by datetime (C), ~50× faster than strptime
        try:
            datetime.datetime(*map(int, _TIME_PARTS.split(value)))  # type: ignore[misc]
            return value
        except ValueError:
            pass  # out of range for datetime (a leap second, …): strptime decides
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.strptime(value, "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None


_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_TIME_PARTS = re.compile(r"[- :]")


def opt_int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "", "NULL") else None
    except (TypeError, ValueError):
        return None
