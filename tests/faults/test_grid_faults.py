"""Grid-mode faults: the pilot killed mid-payload, payload killed, tobekilled, a full disk."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil

from compass_pilot.errors import ErrorCode
from compass_pilot.exitcodes import ExitCode
from tests.faults.conftest import Site, record, submit_reco, wait_for


def _payloads(pilot_pid: int) -> list[psutil.Process]:
    """The reco payload processes under a pilot (not their bash wrapper)."""
    return [
        p
        for p in psutil.Process(pilot_pid).children(recursive=True)
        if p.name().startswith("python") and "compass_pilot.demo.reco" in p.cmdline()
    ]


def status(site: Site) -> dict[str, int]:
    return site.dispatcher.summary()["jobs_by_status"]


def test_pilot_killed_mid_payload_is_restarted(site: Site) -> None:
    submit_reco(site.db, 2, extra_pars="--event-time 0.08")  # ~3 s per payload
    pilot = site.pilot()
    wait_for(lambda: status(site).get("running") == 1, 30, "a running job")
    # "running" is reported as the payload is launched: wait until its process exists
    wait_for(lambda: bool(_payloads(pilot.pid)), 10, "the payload")
    payloads = _payloads(pilot.pid)
    os.kill(pilot.pid, signal.SIGKILL)  # the payload lives on in its own session
    pilot.wait(10)
    assert payloads and payloads[0].is_running()
    restarted = site.pilot()
    assert restarted.wait(120) == 0
    assert status(site) == {"finished": 2}  # the orphan was adopted and finished, the other one run
    jobs, lost, duplicated = record("grid pilot kill -9 mid-payload + restart", site.dispatcher)
    assert (jobs, lost, duplicated) == (2, 0, 0)


def test_payload_killed(site: Site) -> None:
    submit_reco(site.db, 1, extra_pars="--event-time 0.1")
    pilot = site.pilot()
    wait_for(lambda: status(site).get("running") == 1, 30, "a running job")
    wait_for(lambda: bool(_payloads(pilot.pid)), 10, "the payload")
    (payload,) = _payloads(pilot.pid)
    payload.kill()
    assert pilot.wait(60) == ExitCode.ALL_JOBS_FAILED  # the pilot ended cleanly; its one job failed
    (job,) = site.dispatcher.store.query("SELECT status, error_code FROM jobs")
    assert (job["status"], job["error_code"]) == ("failed", ErrorCode.SIGKILL)
    assert record("payload kill -9", site.dispatcher)[1:] == (0, 0)


def test_server_says_tobekilled(site: Site) -> None:
    submit_reco(site.db, 2, inject={"cdr11001-275678.raw": "hang"})
    pilot = site.pilot()
    wait_for(lambda: status(site).get("running") == 1, 30, "the hanging job")
    (row,) = site.dispatcher.store.query("SELECT panda_id FROM jobs WHERE status = 'running'")
    site.dispatcher.kill_job(row["panda_id"])
    assert pilot.wait(60) == ExitCode.SOME_JOBS_FAILED
    assert site.dispatcher.job(row["panda_id"])["error_code"] == ErrorCode.KILLED_BY_SERVER
    assert status(site) == {"failed": 1, "finished": 1}  # only that job was killed
    assert record("server command tobekilled", site.dispatcher)[1:] == (0, 0)


def test_full_disk_fails_the_job_not_the_pilot(site: Site, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(small)], capture_output=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (tests run as root): {done.stderr.decode()}"
    try:
        site.data["site"]["workdir"] = str(small)
        site.data["site"]["min_free_mb"] = 0  # past the preflight: the disk fills up during the jobs
        site.data["journal"] = str(tmp_path / "journal.sqlite")
        submit_reco(site.db, 2)
        pilot = site.pilot()
        assert pilot.wait(60) == ExitCode.ALL_JOBS_FAILED  # the pilot survived both jobs (both failed)
        codes = {r["error_code"] for r in site.dispatcher.store.query("SELECT error_code FROM jobs")}
        assert status(site) == {"failed": 2} and codes == {ErrorCode.NO_LOCAL_SPACE}
        assert record("full disk in the work dir", site.dispatcher)[1:] == (0, 0)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
