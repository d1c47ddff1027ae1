"""Grid mode end to end: real dispatcher over HTTP, real payload processes, real files."""

from __future__ import annotations

import threading
import time

from compass_pilot.errors import ErrorCode
from compass_pilot.modes.grid import GridPilot
from compass_pilot.panda.client import PandaClient
from compass_pilot.panda.store import connect, insert_jobs, submit_task
from tests.grid.conftest import GridWorld, reco_task


def _pilot(world: GridWorld, **grid) -> GridPilot:
    site = world.site(**grid)
    return GridPilot(site, PandaClient(site.panda, site.site))


def _states(world: GridWorld, panda_id: int) -> list[str]:
    return [u["state"] for u in world.dispatcher.updates(panda_id) if u["accepted"]]


def test_jobs_run_and_every_state_is_reported(world: GridWorld) -> None:
    submit_task(world.db, reco_task(world.chunks))
    summary = _pilot(world, max_jobs=0).run()
    assert sorted(summary.jobs.values()) == ["finished"] * 3
    for panda_id in summary.jobs:
        states = _states(world, panda_id)
        # each state once and in order; `running` repeats only as the 1 s heartbeat on a slow box
        assert [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]] == [
            "starting",
            "running",
            "transferring",
            "finished",
        ]
        assert states.count("finished") == 1
        job = world.dispatcher.job(panda_id)
        assert job["n_events"] == 50 and job["status"] == "finished"
        assert "mDST-275678-" in job["output_report"]
    outputs = sorted(p.relative_to(world.eos).as_posix() for p in world.eos.rglob("*") if p.is_file())
    assert len(outputs) == 12 and "P09/mDST.chunks/mDST-275678-11001-2-7.root" in outputs
    assert world.dispatcher.duplicate_finals() == []
    assert not list((world.base / "work").glob("PandaJob_*"))  # finished jobs leave no work dir behind


def _one_failure(world: GridWorld, inject: str, **task_extra) -> tuple[int, str]:
    chunk = world.chunks[0]
    submit_task(world.db, reco_task([chunk], max_attempts=1, inject={chunk.raw_name: inject}, **task_extra))
    summary = _pilot(world, max_jobs=1).run()
    ((panda_id, state),) = summary.jobs.items()
    job = world.dispatcher.job(panda_id)
    return job["error_code"], state


def test_fatal_error_pattern(world: GridWorld) -> None:
    assert _one_failure(world, "fatal") == (ErrorCode.COMPASS_FATAL_ERROR, "failed")


def test_crash_by_segfault(world: GridWorld) -> None:
    assert _one_failure(world, "segv") == (ErrorCode.COMPASS_CORE_DUMP, "failed")


def test_missing_end_marker(world: GridWorld) -> None:
    assert _one_failure(world, "noend") == (ErrorCode.COMPASS_NO_END_MARKER, "failed")


def test_walltime_exceeded(world: GridWorld) -> None:
    start = time.monotonic()
    assert _one_failure(world, "hang", max_walltime=2) == (ErrorCode.BATCH_TIME_LIMIT, "failed")
    assert time.monotonic() - start < 20


def test_server_kill_command(world: GridWorld) -> None:
    chunk = world.chunks[0]
    submit_task(world.db, reco_task([chunk], max_attempts=1, inject={chunk.raw_name: "hang"}))
    pilot = _pilot(world, max_jobs=1, heartbeat_interval=1)
    thread = threading.Thread(target=pilot.run)
    thread.start()
    deadline = time.time() + 20
    while time.time() < deadline and world.dispatcher.summary()["jobs_by_status"].get("running") != 1:
        time.sleep(0.2)
    (panda_id,) = [j["panda_id"] for j in world.dispatcher.store.query("SELECT panda_id FROM jobs")]
    assert world.dispatcher.kill_job(panda_id)
    thread.join(30)
    assert not thread.is_alive()
    job = world.dispatcher.job(panda_id)
    assert (job["status"], job["error_code"]) == ("failed", ErrorCode.KILLED_BY_SERVER)


def test_missing_input(world: GridWorld) -> None:
    chunk = world.chunks[0]
    (world.castor / chunk.raw_path).unlink()
    submit_task(world.db, reco_task([chunk], max_attempts=1))
    summary = _pilot(world, max_jobs=1).run()
    ((panda_id, state),) = summary.jobs.items()
    assert state == "failed" and world.dispatcher.job(panda_id)["error_code"] == ErrorCode.MISSING_INPUT
    assert _states(world, panda_id) == ["starting", "failed"]


def test_bad_spec_from_the_server_is_failed_not_fatal(world: GridWorld) -> None:
    conn = connect(world.db)
    conn.execute("BEGIN IMMEDIATE")
    insert_jobs(
        conn,
        [
            {"transformation": "compass-demo-reco", "inFiles": "../../etc/passwd", "currentPriority": 9},
            {"transformation": "compass-demo-reco", "outFiles": "-rf", "currentPriority": 8},
        ],
        1,
    )
    conn.execute("COMMIT")
    conn.close()
    submit_task(world.db, reco_task(world.chunks[:1]))
    summary = _pilot(world, max_jobs=0).run()
    states = sorted(summary.jobs.values())
    assert states == ["failed", "failed", "finished"]  # the pilot survived both and ran the good job
    codes = {world.dispatcher.job(pid)["error_code"] for pid, s in summary.jobs.items() if s == "failed"}
    assert codes == {ErrorCode.BAD_JOB_SPEC}


def test_dead_server_at_start_is_a_clean_exit(world: GridWorld) -> None:
    site = world.site()
    world.dispatcher.stop()
    site.panda.retries = 2
    summary = GridPilot(site, PandaClient(site.panda, site.site)).run()
    assert summary.jobs == {}
