"""``/metrics``: the dispatcher's figures in the Prometheus text exposition format (0.0.4).

A small writer instead of ``prometheus_client``: the dispatcher has no dependency beyond
the standard library, and the format is a few rules (``# HELP`` / ``# TYPE`` once per
family, label values escaped, ``+Inf`` / ``NaN`` spelled so) that the tests check against
``prometheus_client``'s own parser.  Request latencies are observed in the wire's request
handler (one lock, a few additions per request); everything else comes from the page's
cached overview, so a scrape never touches the hand-out or update paths.
"""

from __future__ import annotations

import math
import threading
from typing import Any

#: request latency buckets (seconds): a getJob takes ~1 ms, a 512-job bulk update ~100 ms
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class MetricWriter:
    """Families in order; each family's HELP and TYPE written once, before its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._families: set[str] = set()

    def family(self, name: str, kind: str, help_text: str) -> MetricWriter:
        if name in self._families:
            raise ValueError(f"metric family {name} written twice")
        self._families.add(name)
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        return self

    def sample(self, name: str, value: float, labels: dict[str, Any] | None = None) -> MetricWriter:
        label_text = ""
        if labels:
            label_text = "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"
        self.lines.append(f"{name}{label_text} {format_value(value)}")
        return self

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class RequestStats:
    """Requests served and their latency, per method (a Prometheus histogram per method)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, list[int]] = {}  # method → per-bucket counts (not cumulative) + overflow
        self.sums: dict[str, float] = {}

    def observe(self, method: str, seconds: float) -> None:
        index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        with self._lock:
            counts = self.counts.setdefault(method, [0] * (len(BUCKETS) + 1))
            counts[index] += 1
            self.sums[method] = self.sums.get(method, 0.0) + seconds

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        with self._lock:
            return {m: (list(c), self.sums[m]) for m, c in self.counts.items()}


def render_metrics(overview: Any, requests: RequestStats, states: tuple[str, ...]) -> str:
    """The whole exposition: jobs by state, errors by code, tasks, queue age, requests."""
    out = MetricWriter()
    out.family("compass_dispatcher_jobs", "gauge", "Jobs by PanDA job state (current attempt).")
    for state in states:
        out.sample("compass_dispatcher_jobs", overview.by_state.get(state, 0), {"state": state})
    for state, n in sorted(overview.by_state.items()):
        if state not in states:
            out.sample("compass_dispatcher_jobs", n, {"state": state})
    out.family("compass_dispatcher_job_errors", "gauge", "Jobs that failed at least one attempt, by pilot error code.")
    for error in overview.errors:
        out.sample("compass_dispatcher_job_errors", error["jobs"], {"code": error["code"], "name": error["name"]})
    out.family("compass_dispatcher_error_attempts", "gauge", "Failed attempts by pilot error code.")
    for error in overview.errors:
        out.sample(
            "compass_dispatcher_error_attempts", error["attempts"], {"code": error["code"], "name": error["name"]}
        )
    out.family("compass_dispatcher_stuck_jobs", "gauge", "Jobs sent or running whose pilot went quiet.")
    out.sample("compass_dispatcher_stuck_jobs", len(overview.stuck))
    out.family(
        "compass_dispatcher_queue_age_seconds", "gauge", "How long the oldest activated job has waited (0: none)."
    )
    out.sample("compass_dispatcher_queue_age_seconds", round(overview.queue_age, 3))
    out.family("compass_dispatcher_task_done_ratio", "gauge", "Fraction of a task's jobs finished.")
    for task in overview.tasks:
        out.sample("compass_dispatcher_task_done_ratio", round(task["pct_done"] / 100, 4), {"task": task["name"]})
    out.family("compass_dispatcher_events", "gauge", "Events reconstructed by finished reco / DDD jobs.")
    out.sample("compass_dispatcher_events", overview.events)
    out.family("compass_dispatcher_duplicate_final_updates", "gauge", "Final states reported more than once.")
    out.sample("compass_dispatcher_duplicate_final_updates", overview.duplicates)
    out.family("compass_dispatcher_request_seconds", "histogram", "Time to serve a pilot request, by method.")
    for method, (counts, total) in sorted(requests.snapshot().items()):
        cumulative = 0
        for bound, n in zip((*BUCKETS, math.inf), counts, strict=True):
            cumulative += n
            le = "+Inf" if math.isinf(bound) else format_value(bound)
            out.sample("compass_dispatcher_request_seconds_bucket", cumulative, {"method": method, "le": le})
        out.sample("compass_dispatcher_request_seconds_sum", round(total, 6), {"method": method})
        out.sample("compass_dispatcher_request_seconds_count", cumulative, {"method": method})
    out.family("compass_dispatcher_as_of_seconds", "gauge", "When these figures were computed (Unix time).")
    out.sample("compass_dispatcher_as_of_seconds", round(overview.as_of, 3))
    return out.text()
