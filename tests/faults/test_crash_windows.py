"""Crash windows: the process SIGKILLs itself exactly between two steps that must not be
separated (``COMPASS_FAULT_POINT``), is restarted, and every job still ends exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.faults.conftest import Site, record, submit_reco


def _daemon(site: Site, *args: str, fault: str = "") -> subprocess.Popen[bytes]:
    env = dict(os.environ, HOME=str(site.base), RADICAL_BASE=str(site.base / "radical"))
    env.pop("COMPASS_FAULT_POINT", None)
    if fault:
        env["COMPASS_FAULT_POINT"] = fault
    log = open(site.base / f"daemon-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "compass_pilot.cli", "daemon", "--site", str(site.write()), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _logs(site: Site) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(site.base.glob("daemon-*.log")))


def test_killed_between_qsub_and_persisting_the_batch_id(site: Site) -> None:
    submit_reco(site.db, 8, extra_pars="--event-time 0.1")
    crashed = _daemon(site, "--once", fault="daemon-after-submit")
    assert crashed.wait(60) == -signal.SIGKILL
    restarted = _daemon(site, "--once")
    assert restarted.wait(120) == 0
    assert "found its batch job" in _logs(site)
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 8}
    wrappers = list(site.base.glob("hpc/sub-*/batch_exit_code"))
    assert len(wrappers) == 1  # one batch job: found again, not submitted twice
    assert record("daemon killed between qsub and state.json", site.dispatcher)[1:] == (0, 0)
