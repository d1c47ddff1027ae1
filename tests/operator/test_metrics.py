"""/metrics: the Prometheus text format, checked with prometheus_client's own parser."""

from __future__ import annotations

import math

import requests
from prometheus_client.parser import text_string_to_metric_families

from compass_pilot.panda.metrics import MetricWriter, RequestStats, format_value


def test_writer_escapes_and_spells_special_values() -> None:
    text = (
        MetricWriter()
        .family("x_total", "gauge", 'a "help"\nwith \\ newline')
        .sample("x_total", 1.5, {"diag": 'he said "no"\n\\'})
        .sample("x_total", math.inf, {"diag": "inf"})
        .text()
    )
    (family,) = text_string_to_metric_families(text)
    assert family.documentation == 'a "help"\nwith \\ newline'
    values = {s.labels["diag"]: s.value for s in family.samples}
    assert values == {'he said "no"\n\\': 1.5, "inf": math.inf}
    assert format_value(float("nan")) == "NaN" and format_value(3) == "3"


def test_histogram_buckets_are_cumulative() -> None:
    stats = RequestStats()
    for seconds in (0.0005, 0.003, 0.003, 20.0):
        stats.observe("getJob", seconds)
    counts, total = stats.snapshot()["getJob"]
    assert sum(counts) == 4 and counts[-1] == 1 and math.isclose(total, 20.0065)


def test_metrics_endpoint_parses_and_counts_jobs_not_attempts(scenario) -> None:
    dispatcher, _ids = scenario
    answer = requests.get(f"{dispatcher.url}/metrics", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    jobs = {s.labels["state"]: s.value for s in families["compass_dispatcher_jobs"].samples}
    assert jobs["sent"] == 1 and jobs["finished"] == 2 and jobs["failed"] == 1 and jobs["activated"] == 3
    (looping,) = families["compass_dispatcher_job_errors"].samples
    assert looping.labels == {"code": "1150", "name": "LOOPING_JOB"} and looping.value == 1  # one job …
    (attempts,) = families["compass_dispatcher_error_attempts"].samples
    assert attempts.value == 2  # … two attempts
    assert families["compass_dispatcher_stuck_jobs"].samples[0].value == 1
    latency = families["compass_dispatcher_request_seconds"]
    counts = {s.labels["method"]: s.value for s in latency.samples if s.name.endswith("_count")}
    fetches = counts.get("getJob", 0) + counts.get("acquire_jobs", 0)  # legacy or v1 dialect
    updates = counts.get("updateJob", 0) + counts.get("update_job", 0)
    assert (fetches, updates) == (3, 9)  # the scenario's 3 job requests and 9 updates
    ratio = {s.labels["task"]: s.value for s in families["compass_dispatcher_task_done_ratio"].samples}
    assert ratio["P09-reco-W14"] == 0.4
