"""Jobs that end while a burst is staged out are taken into that burst, not left for the next one.

Real parts: the embedded dispatcher over loopback, the daemon's journal, the wake-up
listener on a real UDP socket with signed notices (hpc.notify), the local copytool
writing real files, the node agents' outcome files (harvester_plugins.jobfiles).  Only
the batch system is absent: these jobs' "batch job" is never asked about (the poll
interval is far beyond the test), and the copytool is wrapped to play a node agent
that sends its ``E`` notice while the daemon is busy staging out the first job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from compass_pilot import lifecycle
from compass_pilot.bulk import JobSource
from compass_pilot.config import load_site_config
from compass_pilot.copytools.local import LocalCopyTool
from compass_pilot.job import JobSpec, new_guid
from compass_pilot.modes.multijob import JobEntry, MultiJobDaemon, SubmissionState
from compass_pilot.modes.wakeups import Burst
from compass_pilot.panda.client import PandaClient
from harvester_plugins import jobfiles
from harvester_plugins.jobfiles import JobOutcome, OutputFile
from hpc import notify
from hpc.notify import NotifySender, NotifyTarget
from tests.tasks import serve_task


class NoBatch:
    """The batch system is not part of this test: nothing may ask it anything."""

    def submit(self, *args: Any) -> str:
        raise AssertionError("no submission in this test")

    def status(self, *args: Any) -> str:
        raise AssertionError("no batch status in this test")

    def kill(self, *args: Any) -> None:
        raise AssertionError("no batch kill in this test")


class AgentDuringStageOut(LocalCopyTool):
    """The real local copytool; the first stage-out also plays the agent of ``later``: it writes that
    job's outcome, sends its signed ``E`` and waits until the daemon's reader thread has it."""

    def __init__(self, storage: Any, announce: Any) -> None:
        super().__init__(storage)
        self.announce = announce
        self.max_threads = 1

    def burst(self) -> Any:
        burst = super().burst()
        real = burst.stage_out

        def stage_out(local: Path, dest_path: str, *, guid: str) -> Any:
            if self.announce is not None:
                announce, self.announce = self.announce, None
                announce()
            return real(local, dest_path, guid=guid)

        burst.stage_out = stage_out  # type: ignore[method-assign]
        return burst


def _ended_job(job: JobSpec, workdir: Path) -> None:
    """What a node agent leaves when a payload ended well: outputs, the log tarball, the outcome files."""
    workdir.mkdir(parents=True)
    (workdir / lifecycle.STDOUT_NAME).write_text("End of Job\n")
    (workdir / lifecycle.STDERR_NAME).write_text("")
    files = []
    for spec in job.output_files:
        (workdir / spec.lfn).write_bytes(b"x" * 100)
        files.append(OutputFile.of(workdir / spec.lfn, "output", spec.guid or new_guid()))
    now = time.time()
    outcome = JobOutcome(job.panda_id, job.attempt_nr, "finished", n_events=0, start_time=now - 1, end_time=now)
    outcome.outputs = files
    jobfiles.write_outcome(workdir, outcome)


@pytest.fixture
def served(tmp_path: Path):
    dispatcher = serve_task(tmp_path, 2, "intake")
    try:
        yield dispatcher
    finally:
        dispatcher.stop()


def test_a_job_ending_during_a_burst_joins_it(served, tmp_path: Path) -> None:
    site = load_site_config(None)
    site.panda.url = served.url
    site.hpc.shared_dir = str(tmp_path / "hpc")
    site.hpc.fake_nodes = True  # the listener binds the loopback
    site.hpc.poll_interval = site.hpc.heartbeat_interval = site.hpc.batch_check_interval = 600
    site.storage.output_root = str(tmp_path / "eos")
    client = PandaClient(site.panda, site.site)
    first, later = (JobSpec.from_panda(raw) for raw in JobSource(client).fetch(2))
    daemon: MultiJobDaemon | None = None

    def agent_of_later() -> None:
        assert daemon is not None and daemon.listener is not None
        _ended_job(later, workdirs[later.panda_id])
        sender = NotifySender(target)
        sender.send(notify.ENDED, [later.panda_id])
        sender.close()
        deadline = time.monotonic() + 10
        while not daemon.listener._notices and time.monotonic() < deadline:  # the reader thread took it
            time.sleep(0.01)

    copytool = AgentDuringStageOut(site.storage, agent_of_later)
    daemon = MultiJobDaemon(site, client, NoBatch(), copytool=copytool)
    sub = Path(site.hpc.shared_dir) / "sub-test"
    (sub / "reports").mkdir(parents=True)
    state = SubmissionState("sub-test", "long", 1, 600, str(sub), batch_id="batch-1")
    workdirs = {job.panda_id: sub / "jobs" / f"PandaJob_{job.panda_id}_{job.attempt_nr}" for job in (first, later)}
    target = daemon._notify_target(state)
    assert isinstance(target, NotifyTarget)
    for job in (first, later):
        daemon.journal.job_started(job, str(workdirs[job.panda_id]), mode="multijob", sub_id=state.sub_id)
        state.jobs[str(job.panda_id)] = JobEntry(job.panda_id, job.attempt_nr, str(workdirs[job.panda_id]), "running")
        daemon.held.add(job.panda_id)
    daemon.submissions[state.sub_id] = state
    _ended_job(first, workdirs[first.panda_id])
    try:
        daemon.react(Burst(ended={state.sub_id: {first.panda_id}}))  # names only the first job
        # the later job was announced mid-burst: this one wake-up reported it too
        assert {e.panda_id: e.final for e in state.jobs.values()} == {
            first.panda_id: "finished",
            later.panda_id: "finished",
        }
        assert state.done
        assert [row["status"] for row in served.store.job_status([first.panda_id, later.panda_id])] == [
            "finished",
            "finished",
        ]
        assert all(daemon.journal.final_sent_count(j.panda_id, j.attempt_nr) == 1 for j in (first, later))
        for job in (first, later):  # the outputs are at their destination
            for spec in job.output_files:
                assert any(p.name == spec.lfn for p in Path(site.storage.output_root).rglob(spec.lfn))
    finally:
        if daemon.listener is not None:
            daemon.listener.close()
        daemon.journal.close()
        client.close()
