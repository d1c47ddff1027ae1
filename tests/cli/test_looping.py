"""grid.looping_timeout: a payload whose files stop changing is killed with pilot3's 1150."""

from __future__ import annotations

import sys
from pathlib import Path

from compass_pilot.errors import ErrorCode
from compass_pilot.looping import LoopingWatchdog
from compass_pilot.modes.grid import GridPilot
from compass_pilot.panda.client import PandaClient
from compass_pilot.panda.store import submit_task
from compass_pilot.payload import PayloadProcess
from tests.grid.conftest import GridWorld, reco_task, world  # noqa: F401 - the fixture


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_counts_quiet_time_from_the_last_change(tmp_path: Path) -> None:
    proc = PayloadProcess([sys.executable, "-c", "import time; time.sleep(600)"], tmp_path, {}, grace=1).start()
    clock = Clock()
    watchdog = LoopingWatchdog(proc, 100, clock=clock)
    try:
        assert not watchdog.check()  # first look: the stdout/stderr files exist
        clock.now += 90
        (tmp_path / "out.root").write_bytes(b"x")  # the payload wrote: quiet time starts again
        assert not watchdog.check()
        clock.now += 99
        assert not watchdog.check()
        clock.now += 2
        assert watchdog.check() and watchdog.fired
        result = proc.wait(30)
        assert result is not None and result.error() is not None
        assert result.error()[0] == ErrorCode.LOOPING_JOB
    finally:
        proc.kill("pilot", grace=0)


def test_zero_timeout_never_watches(tmp_path: Path) -> None:
    proc = PayloadProcess([sys.executable, "-c", "pass"], tmp_path, {}).start()
    watchdog = LoopingWatchdog(proc, 0).start()
    assert proc.wait(30) is not None and not watchdog.fired


def test_grid_pilot_fails_a_hanging_job_as_looping(world: GridWorld, caplog) -> None:  # noqa: F811
    caplog.set_level("INFO", logger="compass_pilot.modes.grid")
    chunk = world.chunks[0]
    submit_task(world.db, reco_task([chunk], max_attempts=1, inject={chunk.raw_name: "hang"}, max_walltime=3600))
    site = world.site(max_jobs=1, looping_timeout=2)
    summary = GridPilot(site, PandaClient(site.panda, site.site)).run()
    ((panda_id, state),) = summary.jobs.items()
    job = world.dispatcher.job(panda_id)
    assert (state, job["error_code"]) == ("failed", ErrorCode.LOOPING_JOB)
    assert "looping" in job["error_diag"].lower()
    # while it ran, one progress line per heartbeat (1 s here)
    assert any(f"job {panda_id}: running" in r.getMessage() and "next heartbeat in 1 s" in r.getMessage()
               for r in caplog.records)  # fmt: skip
