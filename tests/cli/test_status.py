"""``compass-pilot status``: alive and ours, fresh, breaker closed → 0; anything else → 29 with the reason."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compass_pilot.exitcodes import ExitCode
from compass_pilot.job import JobSpec, failed_report
from compass_pilot.journal import Journal
from tests.cli.conftest import run_cli
from tests.core.jobdicts import reco_job_dict


@pytest.fixture
def fake_daemon() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line reads like ``python -m compass_pilot.cli daemon`` (it only sleeps)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "compass_pilot.cli", "daemon"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _write(tmp_path: Path, **fields: object) -> str:
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    state = {
        "pid": 0,
        "site": "MOM1",
        "updated": time.time(),
        "healthy": True,
        "last_server_contact": time.time() - 5,
        "jobs_by_state": {"running": 3},
        "submissions": [
            {
                "batch_id": "1234.pbs",
                "queue": "long",
                "nodes": 1,
                "jobs": 3,
                "created": time.time() - 600,
                "batch_status": "running",
            }
        ],
        "circuit_breaker": "closed",  # as the daemon writes it
        "consecutive_submit_failures": 0,
        **fields,
    }
    (shared / "daemon_state.json").write_text(json.dumps(state))
    site = tmp_path / "site.yaml"
    site.write_text(f"hpc:\n  shared_dir: {shared}\n  poll_interval: 30\n")
    return str(site)


def test_healthy_daemon(tmp_path: Path, fake_daemon: subprocess.Popen[bytes]) -> None:
    out = run_cli("status", "--site", _write(tmp_path, pid=fake_daemon.pid), cwd=tmp_path)
    assert out.rc == ExitCode.OK, out.stdout + out.stderr
    assert out.stdout.startswith("HEALTHY") and "(running)" in out.stdout and "circuit breaker: closed" in out.stdout
    assert "1234.pbs" in out.stdout and "10 min ago" in out.stdout


def test_dead_pid_is_unhealthy(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = run_cli("status", "--site", _write(tmp_path, pid=gone.pid), cwd=tmp_path)
    assert out.rc == ExitCode.UNHEALTHY
    assert f"daemon pid {gone.pid} is not running" in out.stdout and "(NOT running)" in out.stdout


def test_live_pid_that_is_not_a_daemon(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        out = run_cli("status", "--site", _write(tmp_path, pid=other.pid), cwd=tmp_path)
    finally:
        other.kill()
        other.wait()
    assert out.rc == ExitCode.UNHEALTHY and "not a compass-pilot daemon" in out.stdout


def test_stale_state_and_open_breaker(tmp_path: Path, fake_daemon: subprocess.Popen[bytes]) -> None:
    site = _write(
        tmp_path,
        pid=fake_daemon.pid,
        updated=time.time() - 3600,
        circuit_breaker={"open": True, "consecutive_failures": 3, "since": time.time() - 120},
    )
    out = run_cli("status", "--site", site, cwd=tmp_path)
    assert out.rc == ExitCode.UNHEALTHY
    assert "state is stale" in out.stdout and "[STALE]" in out.stdout
    assert "circuit breaker open after 3 failed submissions" in out.stdout


def test_journal_truth_and_json(tmp_path: Path, fake_daemon: subprocess.Popen[bytes]) -> None:
    """The state file still says 'starting'; the journal holds the job's failed final report, not yet acked."""
    site = _write(tmp_path, pid=fake_daemon.pid, jobs_by_state={"starting": 1})
    journal = Journal(tmp_path / "shared/daemon-journal.sqlite")
    job = JobSpec.from_panda(reco_job_dict(7001))
    journal.job_started(job, str(tmp_path / "w"), mode="multijob")
    journal.report_queued(failed_report(7001, job.attempt_nr, 1305, "payload failed"))
    journal.close()
    out = run_cli("status", "--site", site, cwd=tmp_path)
    assert "jobs by state (journal): failed (not acknowledged) 1" in out.stdout
    doc = json.loads(run_cli("status", "--json", "--site", site, cwd=tmp_path).stdout)
    assert doc["healthy"] is True and doc["pid_ours"] is True
    assert doc["journal_jobs_by_state"] == {"failed (not acknowledged)": 1}
    assert doc["daemon"]["site"] == "MOM1"


def test_breaker_open_as_the_daemon_writes_it(tmp_path: Path, fake_daemon: subprocess.Popen[bytes]) -> None:
    site = _write(tmp_path, pid=fake_daemon.pid, circuit_breaker="open", consecutive_submit_failures=5)
    out = run_cli("status", "--site", site, cwd=tmp_path)
    assert out.rc == ExitCode.UNHEALTHY and "circuit breaker open after 5 failed submissions" in out.stdout
    assert "circuit breaker: OPEN (5 consecutive submission failures)" in out.stdout


def test_prometheus_textfile(tmp_path: Path, fake_daemon: subprocess.Popen[bytes]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    site = _write(tmp_path, pid=fake_daemon.pid, rounds=12, in_flight_jobs=97, jobs_finished=412, jobs_failed=3)
    out = run_cli("status", "--prometheus", "--site", site, cwd=tmp_path)
    assert out.rc == ExitCode.OK
    values = {(s.name, s.labels.get("state")): s.value for f in text_string_to_metric_families(out.stdout)
              for s in f.samples}  # fmt: skip
    assert values[("compass_daemon_healthy", None)] == 1 and values[("compass_daemon_rounds", None)] == 12
    assert (
        values[("compass_daemon_jobs_final", "failed")] == 3 and values[("compass_daemon_in_flight_jobs", None)] == 97
    )
    assert (
        "12 rounds · 97 jobs in flight · 412 finished, 3 failed"
        in run_cli("status", "--site", site, cwd=tmp_path).stdout
    )
