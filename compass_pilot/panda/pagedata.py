"""What the operator's page and ``/metrics`` show, computed from the store and cached.

Every query here runs on the store's *reading* connection (WAL: it never waits for, nor
holds up, a getJob or an update) and its result is cached for a few seconds, so a page
left open with auto-refresh or a Prometheus scrape every 15 s costs the hot paths
nothing.  The queries live here, not in ``store``, so the store's own work (hand-out,
updates) can be optimised without the page in the way.

One vocabulary: the states are PanDA's job states (``activated``, ``sent``, ``starting``,
``running``, ``transferring``, ``holding``, ``finished``, ``failed``) in lifecycle order,
with the colours the PanDA monitor uses for them.
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from compass_pilot.errors import ERROR_MESSAGES, ErrorCode

#: lifecycle order, as the PanDA monitor lists them
STATES = ("activated", "sent", "starting", "running", "transferring", "holding", "finished", "failed")
ACTIVE = ("sent", "starting", "running", "transferring", "holding")
#: the PanDA monitor's colours (background) for each state
COLOURS = {
    "activated": "#3b78c4",
    "sent": "#8f6dd1",
    "starting": "#2aa7b8",
    "running": "#34a853",
    "transferring": "#8bc34a",
    "holding": "#f29d38",
    "finished": "#1e7b34",
    "failed": "#d93025",
}
#: codes the dispatcher itself gives (panda-server's jobdispatcher numbers)
DISPATCHER_ERRORS = {100: "LOST_HEARTBEAT", 102: "SENT_TIMEOUT"}
PLOT_POINTS = 120  # the history plot's resolution
MAX_DELTA_KEYS = 4000  # history buckets kept in memory before they are merged in pairs


def error_name(code: int) -> str:
    """pilot3's name for a code (the first ``ErrorCode`` constant with that number)."""
    if code in DISPATCHER_ERRORS:
        return DISPATCHER_ERRORS[code]
    for name, value in vars(ErrorCode).items():
        if not name.startswith("_") and value == code:
            return name
    return "UNKNOWN"


def error_message(code: int, sent_timeout: float, heartbeat_timeout: float) -> str:
    if code == 102:
        return f"Sent job didn't receive reply from pilot within {_duration(sent_timeout)}"
    if code == 100:
        return f"lost heartbeat (none for {_duration(heartbeat_timeout)})"
    return ERROR_MESSAGES.get(code, "")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class StateHistory:
    """Jobs by state over time, rebuilt from the store's records and extended incrementally.

    A job enters ``activated`` at its creation; every accepted pilot update moves it to
    that update's state; a failure the dispatcher decides (102 / 100) moves it to
    ``failed``.  Each move is a +1/-1 pair in its time bucket.  The three record streams
    are each in time order already (by primary key), so they are merged as they are read,
    never held in memory, and a refresh reads only rows newer than the last ones seen.
    A job's current state is one byte in an array indexed by PandaID (1 MB per million
    jobs), and buckets are merged in pairs when there are too many: a long production
    gets a coarser plot, not a bigger process.
    """

    def __init__(self) -> None:
        self.resolution = 1.0  # seconds per bucket
        self.deltas: dict[int, Counter[str]] = {}
        self.current = bytearray()  # PandaID → 1 + index in STATES (0: not seen)
        self.last_job = 0
        self.last_update = 0
        self.last_error_rowid = 0
        self.first_time: float | None = None

    def _move(self, panda_id: int, state: str, when: float) -> None:
        if state not in STATES or panda_id < 0:
            return
        if panda_id >= len(self.current):
            self.current.extend(bytes(max(panda_id + 1 - len(self.current), len(self.current) // 2)))
        new = STATES.index(state) + 1
        old = self.current[panda_id]
        if old == new:
            return
        bucket = self.deltas.setdefault(int(when // self.resolution), Counter())
        if old:
            bucket[STATES[old - 1]] -= 1
        bucket[state] += 1
        self.current[panda_id] = new
        if self.first_time is None or when < self.first_time:
            self.first_time = when
        if len(self.deltas) > MAX_DELTA_KEYS:
            self._coarsen()

    def refresh(self, conn: Any) -> None:
        def jobs() -> Iterator[tuple[float, int, int, str]]:
            for panda_id, created in conn.execute(
                "SELECT panda_id, created FROM jobs WHERE panda_id > ? ORDER BY panda_id", (self.last_job,)
            ):
                self.last_job = panda_id
                yield (created or 0.0, 0, panda_id, "activated")

        def updates() -> Iterator[tuple[float, int, int, str]]:
            for row_id, panda_id, state, when in conn.execute(
                "SELECT id, panda_id, state, time FROM updates WHERE id > ? AND accepted = 1 ORDER BY id",
                (self.last_update,),
            ):
                self.last_update = row_id
                yield (when or 0.0, 1, panda_id, state)

        def errors() -> Iterator[tuple[float, int, int, str]]:
            for row_id, panda_id, when in conn.execute(
                "SELECT rowid, panda_id, time FROM errors WHERE rowid > ? AND source != 'pilot' ORDER BY rowid",
                (self.last_error_rowid,),
            ):
                self.last_error_rowid = row_id
                yield (when or 0.0, 2, panda_id, "failed")

        for when, _order, panda_id, state in heapq.merge(jobs(), updates(), errors()):
            self._move(panda_id, state, when)

    def _coarsen(self) -> None:
        merged: dict[int, Counter[str]] = {}
        for key, delta in self.deltas.items():
            merged.setdefault(key // 2, Counter()).update(delta)
        self.deltas = merged
        self.resolution *= 2

    def series(self, now: float, points: int = PLOT_POINTS) -> tuple[list[float], dict[str, list[int]]]:
        """(times, state → counts at those times), ``points`` samples from the first job to now."""
        if self.first_time is None:
            return [], {}
        start = self.first_time
        step = max((now - start) / max(points - 1, 1), 1e-3)
        times = [start + i * step for i in range(points)]
        counts: Counter[str] = Counter()
        out: dict[str, list[int]] = {s: [] for s in STATES}
        keys = sorted(self.deltas)
        k = 0
        for t in times:
            while k < len(keys) and keys[k] * self.resolution <= t:
                counts.update(self.deltas[keys[k]])
                k += 1
            for s in STATES:
                out[s].append(max(counts.get(s, 0), 0))
        return times, {s: v for s, v in out.items() if any(v)}


@dataclass
class Overview:
    """One cached snapshot of everything the front page and /metrics show."""

    as_of: float
    by_state: dict[str, int]
    tasks: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    stuck: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    sites: list[dict[str, Any]]  # from the worker nodes pilots described (update_worker_node)
    workers: dict[str, int]
    queue_age: float  # seconds the oldest activated job has been waiting (0 = none waiting)
    events: int
    duplicates: int
    history: tuple[list[float], dict[str, list[int]]] = field(default_factory=lambda: ([], {}))
    harvesters: list[dict[str, Any]] = field(default_factory=list)  # instances reporting through harvester_api
    dialogs: list[dict[str, Any]] = field(default_factory=list)  # their newest warnings and errors

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


class PageData:
    """The page's queries, cached ``max_age`` seconds; one per store."""

    def __init__(self, store: Any, *, max_age: float = 5.0) -> None:
        self.store = store
        self.max_age = max_age
        self._lock = threading.Lock()
        self._cached: Overview | None = None
        self._history = StateHistory()
        self._reader: sqlite3.Connection | None = None
        self.compute_seconds = 0.0  # how long the last overview took (sets the cache's age)
        self.rendered: dict[tuple[float, bool], str] = {}  # the page's HTML for the cached overview

    def _connection(self) -> sqlite3.Connection:
        """The page's own read-only connection: a long history rebuild never holds the store's reader.

        (``get_job_status`` and ``/api/summary`` share the store's reading connection; WAL
        lets this one read beside them and beside every write.)
        """
        if self._reader is None:
            self._reader = sqlite3.connect(
                f"file:{self.store.db_path}?mode=ro",
                uri=True,
                timeout=30,
                check_same_thread=False,
                isolation_level=None,
            )
            self._reader.row_factory = sqlite3.Row
        return self._reader

    @property
    def stuck_sent_after(self) -> float:
        """A sent job is stuck when no pilot said "starting" within a third of the 102 timeout."""
        return float(self.store.sent_timeout) / 3

    @property
    def stuck_active_after(self) -> float:
        """A running job is stuck when its heartbeats stopped for a quarter of the lost-heartbeat timeout."""
        return float(self.store.heartbeat_timeout) / 4

    def overview(self) -> Overview:
        """The cached overview; recomputed when older than ``max_age`` — or, for a big store, older
        than 20 times its last computation, so however hard the page is polled its queries take
        at most 5 % of a core from the pilots (150K jobs: ~0.6 s to compute, so at most every ~13 s)."""
        with self._lock:
            cached = self._cached
            if cached is not None and time.time() - cached.as_of < max(self.max_age, 20 * self.compute_seconds):
                return cached
            started = time.perf_counter()
            self._cached = self._compute()
            self.compute_seconds = time.perf_counter() - started
            return self._cached

    def _compute(self) -> Overview:
        now = time.time()
        store = self.store
        summary = store.summary(max_age=self.max_age)
        by_state = {s: n for s, n in summary["jobs_by_status"].items() if n}
        conn = self._connection()  # used under self._lock only (overview)
        conn.execute("BEGIN")  # one read snapshot for every figure on the page
        try:
            tasks = [dict(r) for r in conn.execute(_TASKS_SQL)]
            stuck = [
                dict(r)
                for r in conn.execute(
                    "SELECT panda_id, task_id, run, chunk, status, modified, heartbeat, node, pilot_id, attempt_nr"
                    " FROM jobs WHERE (status = 'sent' AND modified < ?)"
                    " OR (status IN ('starting', 'running', 'transferring', 'holding') AND heartbeat < ?)"
                    " ORDER BY heartbeat LIMIT 200",
                    (now - self.stuck_sent_after, now - self.stuck_active_after),
                )
            ]
            errors = [dict(r) for r in conn.execute(_ERRORS_SQL)]
            nodes = [dict(r) for r in conn.execute(_NODES_SQL)]
            sites = [dict(r) for r in conn.execute(_SITES_SQL)]
            workers = {r[0] or "?": r[1] for r in conn.execute("SELECT status, COUNT(*) FROM workers GROUP BY status")}
            oldest = conn.execute("SELECT MIN(modified) FROM jobs WHERE status = 'activated'").fetchone()[0]
            harvesters = [dict(r) for r in conn.execute(_HARVESTERS_SQL)]
            dialogs = [dict(r) for r in conn.execute(_DIALOGS_SQL)]
            self._history.refresh(conn)
        finally:
            conn.execute("COMMIT")
        for task in tasks:
            task["type"] = task["type"] or ""
            task["chain"] = bool(task["chain"])
            task["pct_done"] = 100.0 * task["finished"] / task["jobs"] if task["jobs"] else 0.0
            task["status"] = _task_status(task)
        for error in errors:
            error["name"] = error_name(error["code"])
            error["message"] = error_message(error["code"], store.sent_timeout, store.heartbeat_timeout)
        for job in stuck:
            job["age_in_state"] = now - (job["modified"] or now)
            job["heartbeat_age"] = now - (job["heartbeat"] or now)
            limit = store.sent_timeout if job["status"] == "sent" else store.heartbeat_timeout
            since = job["modified"] if job["status"] == "sent" else job["heartbeat"]
            job["fails_in"] = max(0.0, (since or now) + limit - now)
        runs = [_run_row(r) for r in summary["runs"]]
        return Overview(
            as_of=now,
            by_state=by_state,
            tasks=tasks,
            runs=runs,
            stuck=stuck,
            errors=errors,
            nodes=nodes,
            sites=sites,
            workers=workers,
            queue_age=now - oldest if oldest else 0.0,
            events=summary["events"],
            duplicates=summary["duplicate_final_updates"],
            history=_ending_at(self._history.series(now), by_state),
            harvesters=harvesters,
            dialogs=dialogs,
        )

    # -- the job list and the job page: not cached (an operator asked for exactly this) --------
    def jobs(self, filters: dict[str, str], limit: int = 500) -> list[dict[str, Any]]:
        """Jobs matching the filters (task, run, status, error code in any attempt, node); newest first.

        Raises ValueError naming the filter when a number is not a number.
        """
        where: list[str] = []
        args: list[Any] = []
        for key, column, kind in (("task", "task_id", int), ("run", "run", int), ("status", "status", str),
                                  ("node", "node", str)):  # fmt: skip
            value = filters.get(key, "")
            if value:
                where.append(f"{column} = ?")
                args.append(_as(kind, key, value))
        if filters.get("error"):  # any attempt that failed with the code, not only the job's latest error
            code = _as(int, "error", filters["error"])
            where.append("(error_code = ? OR panda_id IN (SELECT panda_id FROM errors WHERE code = ?))")
            args += [code, code]
        sql = (
            "SELECT panda_id, task_id, run, chunk, job_type, status, attempt_nr, max_attempts, node, modified,"
            " heartbeat, error_code, error_diag FROM jobs"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY panda_id DESC LIMIT ?"
        )
        return self.store.query(sql, (*args, limit))

    def job(self, panda_id: int) -> dict[str, Any] | None:
        rows = self.store.query("SELECT * FROM jobs WHERE panda_id = ?", (panda_id,))
        if not rows:
            return None
        job = rows[0]
        job["spec"] = json.loads(job["spec"] or "{}")
        job["updates"] = self.store.query(
            "SELECT time, attempt_nr, state, node, error_code, error_diag, accepted, duplicate, command, dialect"
            " FROM updates WHERE panda_id = ? ORDER BY id",
            (panda_id,),
        )
        job["errors"] = self.store.query(
            "SELECT time, attempt_nr, code, diag, source FROM errors WHERE panda_id = ? ORDER BY time", (panda_id,)
        )
        return job


_TASKS_SQL = """
SELECT t.task_id, t.name, json_extract(t.spec, '$.job_type') AS type, json_extract(t.spec, '$.chain') AS chain,
       t.created, COUNT(j.panda_id) AS jobs,
       COALESCE(SUM(j.status = 'finished'), 0) AS finished, COALESCE(SUM(j.status = 'failed'), 0) AS failed,
       COALESCE(SUM(j.status IN ('sent', 'starting', 'running', 'transferring', 'holding')), 0) AS active,
       COALESCE(SUM(j.attempt_nr), 0) AS attempts
FROM tasks t LEFT JOIN jobs j ON j.task_id = t.task_id GROUP BY t.task_id ORDER BY t.task_id DESC
"""

# errors counted by JOBS (distinct PandaIDs), with the attempts beside, and the LATEST diagnostic
_ERRORS_SQL = """
SELECT e.code, COUNT(DISTINCT e.panda_id) AS jobs, COUNT(*) AS attempts, MAX(e.time) AS last_time,
       (SELECT e2.diag FROM errors e2 WHERE e2.code = e.code ORDER BY e2.time DESC LIMIT 1) AS latest_diag,
       (SELECT e3.source FROM errors e3 WHERE e3.code = e.code ORDER BY e3.time DESC LIMIT 1) AS source
FROM errors e GROUP BY e.code ORDER BY jobs DESC, e.code
"""

_NODES_SQL = """
SELECT node, COUNT(*) AS jobs, COUNT(DISTINCT pilot_id) AS pilots,
       SUM(status IN ('sent', 'starting', 'running', 'transferring', 'holding')) AS active,
       SUM(status = 'finished') AS finished, SUM(status = 'failed') AS failed, MAX(modified) AS last_seen
FROM jobs WHERE node IS NOT NULL AND node != '' GROUP BY node ORDER BY last_seen DESC LIMIT 200
"""


def _ending_at(
    history: tuple[list[float], dict[str, list[int]]], by_state: dict[str, int]
) -> tuple[list[float], dict[str, list[int]]]:
    """The plot's last point is the store's current count (hand-outs to "sent" leave no update row)."""
    times, series = history
    if not times:
        return history
    for state in set(series) | set(by_state):
        values = series.setdefault(state, [0] * len(times))
        values[-1] = by_state.get(state, 0)
    return times, {s: v for s, v in series.items() if any(v)}


def _as(kind: type, key: str, value: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"filter {key}: {value!r} is not a number") from None


_SITES_SQL = """
SELECT site, COUNT(*) AS nodes, GROUP_CONCAT(DISTINCT panda_queue) AS queues, MAX(last_seen) AS last_seen
FROM worker_nodes GROUP BY site ORDER BY last_seen DESC LIMIT 100
"""
#: Harvester instances with their workers by status (harvester_api); a handful of rows
_HARVESTERS_SQL = (
    "SELECT i.harvester_id, i.owner, i.last_seen,"
    " (SELECT group_concat(status || ' ' || n, ', ') FROM (SELECT status, COUNT(*) AS n FROM harvester_workers w"
    "  WHERE w.harvester_id = i.harvester_id GROUP BY status ORDER BY status)) AS workers"
    " FROM harvester_instances i ORDER BY i.last_seen DESC LIMIT 50"
)
#: the newest warnings and errors Harvester instances sent (add_dialogs)
_DIALOGS_SQL = (
    "SELECT harvester_id, module, identifier, level, message, time FROM harvester_dialogs"
    " WHERE level IN ('WARNING', 'ERROR', 'CRITICAL') ORDER BY time DESC, diag_id DESC LIMIT 20"
)


def _task_status(task: dict[str, Any]) -> str:
    """ProdSys-like task status from its jobs: running / done / finished with failures / ready."""
    if task["jobs"] == 0:
        return "defined"
    if task["finished"] + task["failed"] == task["jobs"]:
        return "done" if task["failed"] == 0 else "finished (with failures)"
    return "running" if task["active"] or task["finished"] or task["failed"] else "ready"


def _run_row(row: dict[str, Any]) -> dict[str, Any]:
    """The per-run row in the page's one vocabulary: PanDA's ``activated``, not ``defined``."""
    out = {}
    for key, value in row.items():
        out["activated" if key == "defined" else key] = value
    return out
