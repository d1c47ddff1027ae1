"""A periodic progress line for long work, and the figures behind it for the state file.

A daemon that runs for days logs what happens, but "is it getting anywhere?" should not
need a grep: every ``interval`` seconds (5 min by default, so a 30 s poll gives one line
in ten rounds) it logs one line — ``412/512 finished, 3 failed, 97 in flight in 1
submission; next poll in 30 s`` — and the same figures go into ``daemon_state.json`` for
``compass-pilot status`` and a Prometheus textfile collector.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("compass_pilot.progress")

DEFAULT_INTERVAL = 300.0


class DaemonProgress:
    """Counts the daemon's rounds and logs a progress line at most every ``interval`` seconds."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.rounds = 0
        self.started = time.time()
        self._clock = clock
        self._next = clock() + interval

    def tick(self, daemon: Any, wait: float) -> str | None:
        """One round done; returns (and logs) the progress line when one is due."""
        self.rounds += 1
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self.interval
        line = progress_line(self.figures(daemon), wait)
        log.info("%s", line)
        return line

    def figures(self, daemon: Any) -> dict[str, Any]:
        """The daemon's own figures: rounds, jobs in flight and submissions, finals so far."""
        # outcomes counts every final since start; final_states keeps only the recent ones
        finals = getattr(daemon, "outcomes", None) or Counter(daemon.final_states.values())
        active = [s for s in daemon.submissions.values() if not s.done]
        in_flight = sum(1 for s in active for entry in s.jobs.values() if not entry.final)
        return {
            "started": self.started,
            "rounds": self.rounds,
            "in_flight_jobs": in_flight,
            "in_flight_submissions": len(active),
            "jobs_finished": finals.get("finished", 0),
            "jobs_failed": finals.get("failed", 0),
        }


def progress_line(figures: dict[str, Any], wait: float) -> str:
    finished, failed, in_flight = figures["jobs_finished"], figures["jobs_failed"], figures["in_flight_jobs"]
    subs = figures["in_flight_submissions"]
    return (
        f"{finished}/{finished + failed + in_flight} finished, {failed} failed, {in_flight} in flight in {subs}"
        f" submission{'s' if subs != 1 else ''}; next poll in {wait:.0f} s"
    )
