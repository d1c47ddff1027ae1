"""Submission faults: the batch system refuses for a while, or for good; the daemon must
neither lose the jobs it took nor keep taking jobs it cannot run (circuit breaker)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from compass_pilot.config import load_site_config
from compass_pilot.errors import ErrorCode
from compass_pilot.exitcodes import ExitCode
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from compass_pilot.panda.client import PandaClient
from harvester_plugins.daemon_backend import PluginBatchBackend
from harvester_plugins.saga_backend import BatchError
from tests.faults.conftest import Site, record, submit_reco


class FlakyBackend:
    """The real fork:// backend behind a batch system that refuses the first ``failures`` submissions."""

    def __init__(self, real: Any, failures: int, *, temporary: bool = True) -> None:
        self.real = real
        self.left = failures
        self.temporary = temporary
        self.attempts = 0

    def submit(self, *args: Any) -> str:
        self.attempts += 1
        if self.left:
            self.left -= 1
            raise BatchError("qsub: cannot connect to server pbs01 (errno=111)", temporary=self.temporary)
        return str(self.real.submit(*args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _daemon(
    site: Site, monkeypatch, failures: int, *, temporary: bool = True, **hpc: Any
) -> tuple[MultiJobDaemon, FlakyBackend]:
    monkeypatch.setenv("HOME", str(site.base))
    monkeypatch.setenv("RADICAL_BASE", str(site.base / "radical"))
    site.data["hpc"].update({"submit_backoff": 1, "submit_backoff_max": 2, **hpc})
    config = load_site_config(site.write())
    backend = FlakyBackend(make_backend(config), failures, temporary=temporary)
    return MultiJobDaemon(config, PandaClient(config.panda, config.site), backend), backend


def _run(daemon: MultiJobDaemon, **kwargs: Any) -> int:
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(code=daemon.run(**kwargs)), daemon=True)
    thread.start()
    thread.join(180)
    assert not thread.is_alive(), "daemon did not finish"
    return result["code"]


def test_temporary_submit_failures_keep_the_jobs(site: Site, monkeypatch) -> None:
    submit_reco(site.db, 4)
    daemon, backend = _daemon(site, monkeypatch, failures=2, breaker_threshold=5)
    assert _run(daemon, once=True) == ExitCode.OK
    assert backend.attempts == 3  # two refusals, retried with backoff, then accepted
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 4}
    assert record("temporary submit failure ×2: jobs kept, then run", site.dispatcher)[1:] == (0, 0)


def test_refused_submission_fails_its_jobs_with_the_batch_code(site: Site, monkeypatch) -> None:
    submit_reco(site.db, 3)
    daemon, _ = _daemon(site, monkeypatch, failures=1, temporary=False, breaker_threshold=5)
    assert _run(daemon, once=True) == ExitCode.OK
    rows = site.dispatcher.store.query("SELECT status, error_code FROM jobs")
    assert {(r["status"], r["error_code"]) for r in rows} == {("failed", ErrorCode.BATCH_SYSTEM_FAILED)}
    assert record("permanent submit refusal: jobs failed 1324", site.dispatcher)[1:] == (0, 0)


def test_circuit_breaker_stops_fetching(site: Site, monkeypatch) -> None:
    submit_reco(site.db, 8)
    site.data["hpc"]["max_jobs"] = 4
    daemon, backend = _daemon(site, monkeypatch, failures=100, breaker_threshold=2)
    assert _run(daemon, once=True) == ExitCode.BLACK_HOLE
    assert daemon.source.stats.requests == 1 and backend.attempts == 2
    state = json.loads((Path(site.data["hpc"]["shared_dir"]) / "daemon_state.json").read_text())
    assert state["circuit_breaker"] == "open" and state["healthy"] is False
    assert "consecutive submission failures" in state["unhealthy_reason"]
    jobs = site.dispatcher.summary()["jobs_by_status"]
    assert jobs == {"failed": 4, "activated": 4}  # the held set went back with 1324; the rest never taken
    assert record("batch system down: circuit breaker, --once", site.dispatcher)[1:] == (0, 0)


def test_hung_qstat_does_not_stop_the_rounds(site: Site, monkeypatch) -> None:
    submit_reco(site.db, 4, extra_pars="--event-time 0.1")
    site.data["hpc"].update({"batch_check_interval": 1, "batch_timeout": 2, "heartbeat_interval": 1})
    monkeypatch.setenv("HOME", str(site.base))
    monkeypatch.setenv("RADICAL_BASE", str(site.base / "radical"))
    config = load_site_config(site.write())
    # the plugins' own bound, as the batch broker runs them (a wedged broker: tests/faults/test_broker_faults.py)
    backend = PluginBatchBackend(config)
    never = threading.Event()
    hung: list[str] = []

    def hanging_status(batch_id: str, subdir: Path) -> str:  # qstat that never answers
        hung.append(batch_id)
        never.wait()
        return "running"

    monkeypatch.setattr(backend, "_status", hanging_status)
    daemon = MultiJobDaemon(config, PandaClient(config.panda, config.site), backend)
    try:
        assert _run(daemon, once=True) == ExitCode.OK
    finally:
        never.set()
    assert hung  # asked, hung, given up after batch_timeout — and the rounds went on
    assert daemon.updater.stats.requests >= len(hung)  # reports and heartbeats kept flowing
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 4}
    assert record("hung qstat (status never answers)", site.dispatcher)[1:] == (0, 0)


def test_breaker_closes_again_when_the_batch_system_recovers(site: Site, monkeypatch) -> None:
    """Long-running: the open breaker stops fetching; the held set is retried; once it is accepted
    and the cool-down passed, a preflight lets the next job set in."""
    submit_reco(site.db, 8)
    site.data["hpc"]["max_jobs"] = 4
    daemon, backend = _daemon(site, monkeypatch, failures=2, breaker_threshold=2)
    fetched_while_open: list[int] = []
    real_fetch = daemon.source.fetch

    def watching_fetch(n: int):  # type: ignore[no-untyped-def]
        if daemon.breaker_open:
            fetched_while_open.append(n)
        return real_fetch(n)

    monkeypatch.setattr(daemon.source, "fetch", watching_fetch)
    assert _run(daemon, max_cycles=2) == ExitCode.OK
    assert backend.attempts == 4 and fetched_while_open == []  # 2 refused, then both sets accepted
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 8}
    assert record("batch system down, then back: breaker reopens fetching", site.dispatcher)[1:] == (0, 0)
