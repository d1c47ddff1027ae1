"""The pilot's durable journal: every job's state, its pending report, and whether PanDA acked it.

15 % of the jobs in one view of the old production failed as "Sent job didn't receive
reply from pilot within 30 min": the pilot died or lost the server, and what it knew
died with it.  Both modes write this journal (SQLite, WAL, ``synchronous=FULL``)
*before* acting on a transition, so a restarted pilot or daemon knows which jobs it
had, which payloads or batch jobs to look for, and which reports are still owed —
and never re-sends a final state the server already acknowledged.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compass_pilot.filemodes import private_file
from compass_pilot.job import JobReport, JobSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs(
    panda_id INTEGER, attempt_nr INTEGER, state TEXT, mode TEXT, workdir TEXT, spec TEXT,
    pid INTEGER, create_time REAL, sub_id TEXT, batch_id TEXT, final_acked INTEGER DEFAULT 0,
    updated REAL, PRIMARY KEY (panda_id, attempt_nr));
CREATE TABLE IF NOT EXISTS reports(
    panda_id INTEGER, attempt_nr INTEGER, state TEXT, report TEXT, is_final INTEGER, queued REAL,
    PRIMARY KEY (panda_id, attempt_nr));
CREATE TABLE IF NOT EXISTS sent(
    panda_id INTEGER, attempt_nr INTEGER, state TEXT, acked REAL, command TEXT);
"""


def journal_path(site: Any) -> Path:
    """The journal file of a site config: ``journal`` if set, else ``<workdir>/journal.sqlite``."""
    from compass_pilot.config import expand

    return Path(expand(site.journal)) if site.journal else Path(expand(site.site.workdir)) / "journal.sqlite"


@dataclass
class JournalJob:
    """A job without an acknowledged final state, as a restarted pilot finds it."""

    panda_id: int
    attempt_nr: int
    state: str
    mode: str
    workdir: str
    spec: dict[str, Any]
    pid: int | None
    create_time: float | None
    sub_id: str
    batch_id: str


class Journal:
    """One pilot's (or daemon's) journal file; safe to use from several threads.

    A running pilot holds an exclusive ``flock`` on ``<journal>.lock``: pilots sharing a
    work dir each take the first journal no live pilot holds (:meth:`claim`), so a pilot
    restarted after a crash inherits the dead one's journal and never a living one's.
    """

    @classmethod
    def claim(cls, base: str | Path, limit: int = 1000) -> Journal:
        """The first journal (``journal.sqlite``, ``journal-1.sqlite``, …) no live pilot holds."""
        base = Path(base)
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in range(limit):
            path = base if n == 0 else base.with_name(f"{base.stem}-{n}{base.suffix}")
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            journal = cls(path)
            journal._lock_fd = fd
            return journal
        raise RuntimeError(f"no free journal next to {base} ({limit} pilots hold one)")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)  # job states: 0600 (SQLite gives -wal / -shm the same mode)
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # a recorded transition survives a power cut
        self._conn.executescript(SCHEMA)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction() in the thread that holds the lock
        self._lock_fd = -1

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock: the journal may be claimed again
            self._lock_fd = -1

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        """Group many writes into one durable commit (one fsync for a whole submission or round).

        ``durable=False`` (outermost transaction only): committed without an fsync (WAL with
        ``synchronous=NORMAL``) — it survives the process being killed, and becomes durable
        with the next durable commit (the WAL is one sequence), but a power cut before that
        may undo it.  For records whose loss costs a question, not a job: an acknowledgement
        (a restart asks the server before re-sending a final, ``settle_owed_finals``).
        """
        with self._lock:
            lazy = not durable and self._depth == 0
            if lazy:
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                if self._depth == 0:
                    self._conn.execute("BEGIN IMMEDIATE")
                self._depth += 1
                try:
                    yield
                except BaseException:
                    self._depth -= 1
                    if self._depth == 0:
                        self._conn.execute("ROLLBACK")
                    raise
                self._depth -= 1
                if self._depth == 0:
                    self._conn.execute("COMMIT")
            finally:
                if lazy:  # every later commit is durable again, whatever happened here
                    if self._conn.in_transaction:  # a failed COMMIT: nothing of it stays
                        self._conn.execute("ROLLBACK")
                    self._conn.execute("PRAGMA synchronous=FULL")

    def checkpoint(self) -> None:
        """Make everything written so far durable now, inside a long transaction (before acting)."""
        with self._lock:
            if self._depth > 0:
                self._conn.execute("COMMIT")
                self._conn.execute("BEGIN IMMEDIATE")

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self.transaction():
            self._conn.execute(sql, args)

    # -- job transitions -----------------------------------------------------------------
    _STARTED_SQL = (
        "INSERT INTO jobs(panda_id, attempt_nr, state, mode, workdir, spec, sub_id, batch_id, updated)"
        " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(panda_id, attempt_nr) DO UPDATE SET"
        " workdir = excluded.workdir, sub_id = excluded.sub_id, batch_id = excluded.batch_id,"
        " updated = excluded.updated"
    )

    def job_started(self, job: JobSpec, workdir: str, *, mode: str, sub_id: str = "", batch_id: str = "") -> None:
        self.jobs_started([(job, workdir)], mode=mode, sub_id=sub_id, batch_id=batch_id)

    def jobs_started(self, jobs: list[tuple[JobSpec, str]], *, mode: str, sub_id: str = "", batch_id: str = "") -> None:
        """:meth:`job_started` for many ``(job, workdir)``: one statement for a whole job set.

        Why one: each ``execute`` releases the GIL, and while stage-in threads run Python,
        getting it back can take a switch interval (5 ms) — 512 statements in a row then
        cost the daemon's thread seconds of waiting, not microseconds."""
        now = time.time()
        rows = [
            (job.panda_id, job.attempt_nr, "starting", mode, workdir, json.dumps(job.raw), sub_id, batch_id, now)
            for job, workdir in jobs
        ]
        with self.transaction():
            self._conn.executemany(self._STARTED_SQL, rows)

    _STATE_FIELDS = ("workdir", "pid", "create_time", "sub_id", "batch_id")

    def set_state(self, panda_id: int, attempt_nr: int, state: str, **fields: Any) -> None:
        self.set_states([(panda_id, attempt_nr)], state, **fields)

    def set_states(self, keys: list[tuple[int, int]], state: str, **fields: Any) -> None:
        """:meth:`set_state` for many ``(panda_id, attempt_nr)`` with the same fields: one statement
        (see :meth:`jobs_started` for why not one per job)."""
        extra = {k: v for k, v in fields.items() if k in self._STATE_FIELDS}
        sets = ", ".join(["state = ?", "updated = ?", *[f"{k} = ?" for k in extra]])
        now = time.time()
        with self.transaction():
            self._conn.executemany(
                f"UPDATE jobs SET {sets} WHERE panda_id = ? AND attempt_nr = ?",
                [(state, now, *extra.values(), panda_id, attempt_nr) for panda_id, attempt_nr in keys],
            )

    def payload_started(self, panda_id: int, attempt_nr: int, pid: int, create_time: float) -> None:
        self.set_state(panda_id, attempt_nr, "running", pid=pid, create_time=create_time)

    # -- reports (the ReportJournal protocol of compass_pilot.bulk) ----------------------
    _QUEUE_SQL = (
        "INSERT INTO reports(panda_id, attempt_nr, state, report, is_final, queued)"
        " SELECT ?,?,?,?,?,? WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE panda_id = ? AND attempt_nr = ?"
        " AND final_acked = 1)"
        " ON CONFLICT(panda_id, attempt_nr) DO UPDATE SET state = excluded.state, report = excluded.report,"
        " is_final = excluded.is_final, queued = excluded.queued"
        " WHERE reports.is_final = 0 OR excluded.is_final = 1"
    )

    @staticmethod
    def _queue_row(report: JobReport, now: float) -> tuple[Any, ...]:
        return (
            report.panda_id,
            report.attempt_nr,
            report.state,
            json.dumps(report.to_dict()),
            int(report.is_final),
            now,
            report.panda_id,
            report.attempt_nr,
        )

    def report_queued(self, report: JobReport) -> None:
        """Persist the newest pending report of a job; a final one is never replaced by a non-final,
        and nothing more is queued for a job whose final state PanDA already acknowledged."""
        self._write(self._QUEUE_SQL, self._queue_row(report, time.time()))

    def reports_queued(self, reports: list[JobReport]) -> None:
        """:meth:`report_queued` for many reports: one statement prepared once, one commit (a burst's finals)."""
        if not reports:
            return
        now = time.time()
        with self.transaction():
            self._conn.executemany(self._QUEUE_SQL, [self._queue_row(r, now) for r in reports])

    def report_acked(self, report: JobReport, command: str | None) -> None:
        """The server answered this report; a final one ends the job's business with PanDA."""
        self.reports_acked([(report, command)])

    def reports_acked(self, answered: list[tuple[JobReport, str | None]]) -> None:
        """:meth:`report_acked` for a whole bulk answer: each statement prepared once, one commit.

        Not fsync'd (``transaction(durable=False)``): the daemon's thread does not wait for the
        disk after every answer of a burst.  Lost only to a power cut, an ack costs a restart
        one ``getStatus`` before it re-sends that final — never a second final."""
        if not answered:
            return
        now = time.time()
        finals = [(r.state, now, r.panda_id, r.attempt_nr) for r, _ in answered if r.is_final]
        with self.transaction(durable=False):
            self._conn.executemany(
                "INSERT INTO sent(panda_id, attempt_nr, state, acked, command) VALUES (?,?,?,?,?)",
                [(r.panda_id, r.attempt_nr, r.state, now, command) for r, command in answered],
            )
            self._conn.executemany(
                "DELETE FROM reports WHERE panda_id = ? AND attempt_nr = ? AND state = ?",
                [(r.panda_id, r.attempt_nr, r.state) for r, _ in answered],
            )
            if finals:
                self._conn.executemany(
                    "UPDATE jobs SET final_acked = 1, state = ?, updated = ? WHERE panda_id = ? AND attempt_nr = ?",
                    finals,
                )
                self._conn.executemany(
                    "INSERT OR IGNORE INTO jobs(panda_id, attempt_nr, state, final_acked, updated) VALUES (?,?,?,1,?)",
                    [(panda_id, attempt_nr, state, now) for state, now, panda_id, attempt_nr in finals],
                )

    def prune(self, older_than: float) -> int:
        """Forget jobs whose final PanDA acknowledged more than ``older_than`` seconds ago; returns how many.

        A daemon running for months would otherwise keep every job and every sent report
        it ever had.  Only settled business goes: unacknowledged reports and unfinished
        jobs stay whatever their age.
        """
        cutoff = time.time() - older_than
        with self.transaction():
            gone = self._conn.execute(
                "DELETE FROM jobs WHERE final_acked = 1 AND updated < ? AND NOT EXISTS (SELECT 1 FROM reports r"
                " WHERE r.panda_id = jobs.panda_id AND r.attempt_nr = jobs.attempt_nr)",
                (cutoff,),
            ).rowcount
            self._conn.execute("DELETE FROM sent WHERE acked < ?", (cutoff,))
        return int(gone)

    def finals_acked(self, keys: list[tuple[int, int]]) -> set[tuple[int, int]]:
        """Which of these ``(panda_id, attempt_nr)`` have an acknowledged final: one query, not one per job."""
        wanted = set(keys)
        ids = sorted({panda_id for panda_id, _ in wanted})
        acked: set[tuple[int, int]] = set()
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = self._conn.execute(
                    "SELECT panda_id, attempt_nr FROM jobs WHERE final_acked = 1"
                    f" AND panda_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                acked.update(key for key in map(tuple, rows) if key in wanted)
        return acked  # type: ignore[return-value]

    def final_acked(self, panda_id: int, attempt_nr: int) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT final_acked FROM jobs WHERE panda_id = ? AND attempt_nr = ?", (panda_id, attempt_nr)
            ).fetchone()
        return bool(row and row[0])

    # -- recovery ------------------------------------------------------------------------
    def pending_reports(self) -> list[JobReport]:
        """Reports queued but never acknowledged, finals first (re-sent after a restart)."""
        with self._lock:
            rows = self._conn.execute("SELECT report FROM reports ORDER BY is_final DESC, queued").fetchall()
        return [JobReport.from_dict(json.loads(r[0])) for r in rows]

    def unfinished_jobs(self) -> list[JournalJob]:
        """Jobs with no acknowledged final state and no final report pending."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT panda_id, attempt_nr, state, mode, workdir, spec, pid, create_time, sub_id, batch_id"
                " FROM jobs WHERE final_acked = 0 AND NOT EXISTS (SELECT 1 FROM reports r WHERE"
                " r.panda_id = jobs.panda_id AND r.attempt_nr = jobs.attempt_nr AND r.is_final = 1)"
            ).fetchall()
        return [
            JournalJob(
                r[0], r[1], r[2], r[3] or "", r[4] or "", json.loads(r[5] or "{}"), r[6], r[7], r[8] or "", r[9] or ""
            )
            for r in rows
        ]

    def job_spec(self, panda_id: int, attempt_nr: int) -> dict[str, Any] | None:
        """The PanDA spec a job was started with (the daemon keeps none in memory), or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT spec FROM jobs WHERE panda_id = ? AND attempt_nr = ?", (panda_id, attempt_nr)
            ).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def job_specs(self, keys: list[tuple[int, int]]) -> dict[tuple[int, int], dict[str, Any]]:
        """The specs of many jobs (``(panda_id, attempt_nr)`` keys) in one query; missing ones are absent."""
        found: dict[tuple[int, int], dict[str, Any]] = {}
        wanted = set(keys)
        ids = sorted({panda_id for panda_id, _ in wanted})
        with self._lock:
            for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit is 999 on old builds
                chunk = ids[start : start + 500]
                rows = self._conn.execute(
                    f"SELECT panda_id, attempt_nr, spec FROM jobs WHERE panda_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for panda_id, attempt_nr, spec in rows:
                    if (panda_id, attempt_nr) in wanted and spec:
                        found[(panda_id, attempt_nr)] = spec
        return {key: json.loads(spec) for key, spec in found.items()}

    def final_sent_count(self, panda_id: int, attempt_nr: int) -> int:
        """How many acknowledged final reports this journal recorded for a job (the promise: ≤ 1)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM sent WHERE panda_id = ? AND attempt_nr = ? AND state IN ('finished', 'failed')",
                (panda_id, attempt_nr),
            ).fetchone()
        return int(row[0])
