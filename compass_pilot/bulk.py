"""The two bulk mechanisms, named as Balsam names them: a job source and a status updater.

The Blue Waters pilot asked for jobs one request at a time and reported one
``updateJob`` per job per round; with 512 jobs that is what overloaded both the
pilot and the server.  Here:

- :class:`JobSource` fetches a whole job set in ONE ``get_jobs(n)`` request and backs
  off (doubling, capped) while the server has none;
- :class:`StatusUpdater` pools every pending state change into ONE ``update_jobs``
  request per round.  Intermediate states are coalesced (only the newest per job is
  sent); a final state stays pending until the server acknowledges it, and once
  acknowledged it is never sent again.

Both modes use them, so neither has a per-job request loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from compass_pilot.errors import ServerError
from compass_pilot.faults import crash_point
from compass_pilot.job import JobReport

log = logging.getLogger(__name__)


#: A final the server answers and refuses this many times is given up (pilot3 retries an update 10 times).
#: Only real answers count: a server that cannot be reached keeps every final pending.
MAX_FINAL_REJECTIONS = 10

#: Acknowledged finals remembered in memory (a daemon running for months must not grow with every job).
ACKED_MEMORY = 4096


class ReportJournal(Protocol):
    """What the status updater needs from the durable journal (compass_pilot.journal)."""

    def report_queued(self, report: JobReport) -> None: ...
    def report_acked(self, report: JobReport, command: str | None) -> None: ...
    def final_acked(self, panda_id: int, attempt_nr: int) -> bool: ...

    # optional, for bursts: finals_acked(keys) -> set of keys, reports_queued(reports),
    # reports_acked([(report, command)])


@dataclass
class SourceStats:
    requests: int = 0
    jobs: int = 0
    empty: int = 0
    last_contact: float = 0.0


class JobSource:
    """Prefetch job sets in one request each; exponential backoff while PanDA is empty."""

    def __init__(self, client: Any, *, backoff: float = 60.0, backoff_max: float = 1800.0) -> None:
        self.client = client
        self.backoff_first = backoff
        self.backoff_max = backoff_max
        self._next_try = 0.0
        self._backoff = backoff
        self.stats = SourceStats()

    def ready(self, now: float | None = None) -> bool:
        """Whether a fetch is allowed now (not inside a no-jobs backoff)."""
        return (now or time.time()) >= self._next_try

    def seconds_until_ready(self) -> float:
        return max(0.0, self._next_try - time.time())

    def fetch(self, n: int) -> list[dict[str, Any]]:
        """Up to n raw job dicts in one request; [] (and a longer backoff) when there are none."""
        if n <= 0 or not self.ready():
            return []
        self.stats.requests += 1
        try:
            jobs = self.client.get_jobs(n)
        except ServerError as exc:
            log.warning("getJob failed: %s", exc)
            self._defer()
            return []
        self.stats.last_contact = time.time()
        if not jobs:
            self.stats.empty += 1
            self._defer()
            log.info("no jobs from PanDA; next try in %.0f s", self._backoff / 2)
            return []
        self._backoff = self.backoff_first
        self._next_try = 0.0
        self.stats.jobs += len(jobs)
        return list(jobs)

    def _defer(self) -> None:
        self._next_try = time.time() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)


@dataclass
class UpdaterStats:
    requests: int = 0
    updates_sent: int = 0
    finals_acked: int = 0
    failures: int = 0
    last_contact: float = 0.0
    per_round: deque[int] = field(default_factory=lambda: deque(maxlen=1000))  # the last rounds only


class StatusUpdater:
    """Pools job updates into one bulk request per flush; finals are retried until acknowledged."""

    def __init__(self, client: Any, journal: ReportJournal | None = None) -> None:
        self.client = client
        self.journal = journal
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], JobReport] = {}
        # recent acknowledged finals (a fast in-memory guard; the journal is the durable one), bounded
        self._acked_final: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._volatile: set[tuple[int, int]] = set()  # pending heartbeats, not in the journal
        self.commands: dict[int, str] = {}  # PandaID → last non-NULL command from the server
        self._rejections: dict[tuple[int, int], int] = {}  # finals the server answered "no" to, and how often
        self.stats = UpdaterStats()

    def _remember_acked(self, key: tuple[int, int]) -> None:
        """(lock held) Remember an acknowledged final; the oldest are forgotten past ACKED_MEMORY."""
        self._acked_final[key] = None
        self.commands.pop(key[0], None)
        while len(self._acked_final) > ACKED_MEMORY:
            self._acked_final.popitem(last=False)

    def queue(self, report: JobReport) -> None:
        """Queue an update; a newer state of the same job replaces an older non-final one."""
        key = (report.panda_id, report.attempt_nr)
        with self._lock:
            if key in self._acked_final or (self.journal is not None and self.journal.final_acked(*key)):
                log.info("job %d attempt %d: final state already acknowledged, not re-sent", *key)
                return
            if self._take(report, key) and self.journal is not None:
                self.journal.report_queued(report)

    def _take(self, report: JobReport, key: tuple[int, int]) -> bool:
        """(lock held) Make ``report`` the job's pending update; False when it would downgrade
        a pending final state (never done: a final is the last word)."""
        current = self._pending.get(key)
        if current is not None and current.is_final and not report.is_final:
            return False
        self._pending[key] = report
        self._volatile.discard(key)
        return True

    def queue_heartbeats(self, reports: list[JobReport]) -> None:
        """Running heartbeats for the next flush, kept out of the journal.

        A heartbeat says nothing new: one lost in a crash is replaced by the next one a
        restarted pilot sends, so journaling 512 of them every round (and their acks)
        would cost a disk commit and thousands of rows for nothing.  A job that already
        has an update pending needs no heartbeat: that update is one.
        """
        with self._lock:
            for report in reports:
                key = (report.panda_id, report.attempt_nr)
                if key in self._pending or key in self._acked_final:
                    continue
                self._pending[key] = report
                self._volatile.add(key)

    def _journal_tx(self) -> Any:
        """One journal commit for a whole batch (one fsync, not one per job)."""
        transaction = getattr(self.journal, "transaction", None)
        return transaction() if transaction is not None else contextlib.nullcontext()

    def queue_many(self, reports: list[JobReport]) -> None:
        """Queue a batch of updates (a burst's finals, a submission's starts): one journal query for
        what PanDA already acknowledged, one statement for the lot, one commit — not three per job."""
        if not reports:
            return
        finals_acked = getattr(self.journal, "finals_acked", None)
        queued_many = getattr(self.journal, "reports_queued", None)
        if finals_acked is None or queued_many is None:  # a journal without batch calls: one by one
            with self._journal_tx():
                for report in reports:
                    self.queue(report)
            return
        keys = [(r.panda_id, r.attempt_nr) for r in reports]
        with self._lock:
            unknown = [key for key in keys if key not in self._acked_final]
        acked = finals_acked(unknown) if unknown else set()
        to_journal: list[JobReport] = []
        with self._journal_tx(), self._lock:
            for report, key in zip(reports, keys, strict=True):
                if key in self._acked_final or key in acked:
                    log.info("job %d attempt %d: final state already acknowledged, not re-sent", *key)
                    continue
                if self._take(report, key):
                    to_journal.append(report)
            queued_many(to_journal)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending_finals(self) -> int:
        with self._lock:
            return sum(1 for r in self._pending.values() if r.is_final)

    def flush(self) -> dict[int, str | None]:
        """Send everything pending in ONE request; returns PandaID → command for the answered jobs."""
        with self._lock:
            batch = list(self._pending.values())
        if not batch:
            return {}
        self.stats.requests += 1
        self.stats.per_round.append(len(batch))
        try:
            answers = self.client.update_jobs(batch)
        except ServerError as exc:
            self.stats.failures += 1
            log.warning("bulk update of %d jobs failed, kept for the next round: %s", len(batch), exc)
            return {}
        self.stats.last_contact = time.time()
        self.stats.updates_sent += len(batch)
        if any(r.is_final for r in batch):
            crash_point("updater-after-final-ack")  # acknowledged by PanDA, not yet in the journal
        commands: dict[int, str | None] = {}
        answered: list[tuple[JobReport, str | None]] = []
        with self._journal_tx(), self._lock:
            for report, answer in zip(batch, answers, strict=False):
                key = (report.panda_id, report.attempt_nr)
                command = getattr(answer, "command", None)
                commands[report.panda_id] = command
                if command:
                    self.commands[report.panda_id] = command
                if not getattr(answer, "ok", False) and report.is_final and command != "tobekilled":
                    rejected = self._rejections.get(key, 0) + 1
                    self._rejections[key] = rejected
                    if rejected < MAX_FINAL_REJECTIONS:
                        continue  # keep it: a final state must be acknowledged
                    # the server answered, and said no, every time: retrying forever helps nobody
                    log.error(
                        "job %d: final %s rejected %d times (%s): given up",
                        report.panda_id,
                        report.state,
                        rejected,
                        getattr(answer, "message", "") or getattr(answer, "status_code", "?"),
                    )
                    command = "rejected"
                self._rejections.pop(key, None)
                # a rejected intermediate update, or a job the server told us to drop, is done with
                volatile = False
                if self._pending.get(key) is report:
                    del self._pending[key]
                    volatile = key in self._volatile
                    self._volatile.discard(key)
                if report.is_final:
                    self._remember_acked(key)
                    self.stats.finals_acked += 1
                if self.journal is not None and not volatile:
                    answered.append((report, command))
            if answered and self.journal is not None:
                acked_many = getattr(self.journal, "reports_acked", None)
                if acked_many is not None:
                    acked_many(answered)  # one statement per table for the whole answer
                else:
                    for report, command in answered:
                        self.journal.report_acked(report, command)
        return commands

    def settle_owed_finals(self) -> int:
        """Drop owed finals the server already holds (their ack was lost in a crash); returns how many.

        A process killed after PanDA acknowledged a final but before the journal committed
        that ack would re-send it after a restart: a second final for one job.  So before
        re-sending, the server is asked (``getStatus``) what it holds; a job it already has
        in a final state with the same attempt is acknowledged locally, never sent again.
        If the server cannot be asked, the finals are sent (at least once beats never).
        """
        with self._lock:
            finals = [r for r in self._pending.values() if r.is_final]
        if not finals:
            return 0
        try:
            held = server_states(self.client, [r.panda_id for r in finals])
        except (ServerError, OSError, ValueError) as exc:
            log.warning("cannot ask PanDA which owed finals it holds (%s): re-sending them", exc)
            return 0
        settled = 0
        with self._journal_tx(), self._lock:
            for report in finals:
                state, attempt = held.get(report.panda_id, ("", -1))
                if state not in ("finished", "failed") or attempt != report.attempt_nr:
                    continue
                key = (report.panda_id, report.attempt_nr)
                if self._pending.get(key) is report:
                    del self._pending[key]
                self._remember_acked(key)
                if self.journal is not None:
                    self.journal.report_acked(report, "server-had-it")
                settled += 1
                log.warning("job %d: PanDA already holds its final state %s: not re-sent", report.panda_id, state)
        return settled


def server_states(client: Any, panda_ids: list[int]) -> dict[int, tuple[str, int]]:
    """PandaID → (status, attemptNr) from ONE status request (``PandaClient.get_status``).

    A client without it (a test double, an older client) answers nothing: the caller then
    re-sends, which the server acknowledges as a duplicate — never a lost final.
    """
    getter = getattr(client, "get_status", None)
    return dict(getter(panda_ids)) if getter is not None else {}
