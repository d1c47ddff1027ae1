"""Crash windows: the process SIGKILLs itself exactly between two steps that must not be
separated (``COMPASS_FAULT_POINT``), is restarted, and every job still ends exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from compass_pilot.exitcodes import ExitCode
from tests.faults.conftest import Site, daemon_logs, record, start_daemon, submit_reco


def test_killed_between_qsub_and_persisting_the_batch_id(site: Site) -> None:
    submit_reco(site.db, 8, extra_pars="--event-time 0.1")
    crashed = start_daemon(site, "--once", env={"COMPASS_FAULT_POINT": "daemon-after-submit"})
    assert crashed.wait(60) == -signal.SIGKILL
    restarted = start_daemon(site, "--once")
    assert restarted.wait(120) == 0
    logs = daemon_logs(site)
    assert "found its batch job" in logs
    # killed while staging in (the batch job is submitted first, hpc.jobset_wait): its waiting
    # agents get their job set from the restarted daemon
    assert "staging its 8 jobs in again" in logs
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 8}
    wrappers = list(site.base.glob("hpc/sub-*/batch_exit_code"))
    assert len(wrappers) == 1  # one batch job: found again, not submitted twice
    assert record("daemon killed between qsub and state.json", site.dispatcher)[1:] == (0, 0)


def _pilot(site: Site, fault: str = "") -> subprocess.Popen[bytes]:
    env = dict(os.environ, HOME=str(site.base))
    env.pop("COMPASS_FAULT_POINT", None)
    if fault:
        env["COMPASS_FAULT_POINT"] = fault
    log = open(site.base / f"pilot-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "compass_pilot.cli", "grid", "--site", str(site.write())],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def test_grid_killed_between_the_final_ack_and_its_journal_commit(site: Site) -> None:
    submit_reco(site.db, 2)
    crashed = _pilot(site, fault="updater-after-final-ack")
    assert crashed.wait(60) == -signal.SIGKILL
    assert site.dispatcher.summary()["jobs_by_status"].get("finished") == 1  # PanDA has it; the journal not
    restarted = _pilot(site)
    assert restarted.wait(120) == 0
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 2}
    assert site.dispatcher.duplicate_finals() == []
    assert record("grid killed between final ack and journal commit", site.dispatcher)[1:] == (0, 0)


def test_daemon_killed_between_the_final_ack_and_its_journal_commit(site: Site) -> None:
    submit_reco(site.db, 4)
    crashed = start_daemon(site, "--once", env={"COMPASS_FAULT_POINT": "updater-after-final-ack"})
    assert crashed.wait(90) == -signal.SIGKILL
    restarted = start_daemon(site, "--once")
    assert restarted.wait(120) in (ExitCode.OK, ExitCode.NO_JOBS)  # it had nothing left to run
    assert "already holds its final state" in daemon_logs(site)
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 4}
    assert site.dispatcher.duplicate_finals() == []
    assert record("daemon killed between final ack and journal commit", site.dispatcher)[1:] == (0, 0)


def test_grid_killed_between_payload_start_and_its_pid_in_the_journal(site: Site) -> None:
    submit_reco(site.db, 1, extra_pars="--event-time 0.1")  # ~4 s payload, outliving its pilot
    crashed = _pilot(site, fault="grid-after-payload-start")
    assert crashed.wait(60) == -signal.SIGKILL
    restarted = _pilot(site)
    assert restarted.wait(120) == 0
    logs = "".join(p.read_text(errors="replace") for p in site.base.glob("pilot-*.log"))
    assert "adopting payload" in logs  # found by its work dir, not failed as "never started"
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 1}
    assert record("grid killed between payload start and pid journaled", site.dispatcher)[1:] == (0, 0)
