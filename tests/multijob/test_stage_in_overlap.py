"""Stage-in overlapped with the batch job's start (``hpc.jobset_wait``): the daemon submits
first and writes the job set when the inputs are in; a failed stage-in fails only its job,
once (real dispatcher, fork:// through radical.saga, mpiexec, node agents)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from compass_pilot import lifecycle
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from harvester_plugins import jobfiles
from hpc.jobset import read_jobset
from tests.multijob.test_daemon import _run, _summary, mom  # noqa: F401  (mom: the fixture)


def _watch_stage_in(monkeypatch: pytest.MonkeyPatch, wait_for_script: bool) -> list[bool]:
    """Each stage-in records whether the submission's batch script existed when it began;
    ``wait_for_script``: it first waits (≤ 20 s) for that script, as a slow tape recall would."""
    seen: list[bool] = []
    real = lifecycle.prepare_job

    def prepare(job, site, copytool, timing=None):  # type: ignore[no-untyped-def]
        script = Path(site.site.workdir).parent / "worker.sh"  # <subdir>/jobs is the jobs' work dir root
        deadline = time.monotonic() + (20 if wait_for_script else 0)
        while not script.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.append(script.exists())
        return real(job, site, copytool, timing)

    monkeypatch.setattr(lifecycle, "prepare_job", prepare)
    return seen


def test_the_batch_job_is_submitted_while_inputs_are_staged_in(mom, monkeypatch, mocker) -> None:  # noqa: F811
    site, client, dispatcher, submit = mom
    submit(8)
    seen = _watch_stage_in(monkeypatch, wait_for_script=True)
    dump_reads = mocker.spy(jobfiles, "read_event_counts")
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon)
    assert seen == [True] * 8  # every stage-in ran after the batch job was submitted
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 8}
    assert dispatcher.duplicate_finals() == []
    (sub,) = daemon.submissions.values()
    assert "--jobset-wait 600" in (Path(sub.subdir) / "worker.sh").read_text()  # its agents wait for the job set
    assert not json.loads((Path(sub.subdir) / "state.json").read_text())["jobset_pending"]
    # lean outcomes: one file per job, the event counts in it; no outputs dump was read
    assert read_jobset(Path(sub.subdir) / "jobset.json").lean_outcomes and dump_reads.call_count == 0


def test_jobset_wait_zero_stages_in_before_submitting(mom, monkeypatch) -> None:  # noqa: F811
    site, client, dispatcher, submit = mom
    site.hpc.jobset_wait = 0
    submit(4)
    seen = _watch_stage_in(monkeypatch, wait_for_script=False)
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon)
    assert seen == [False] * 4  # the old order: no batch job while staging in
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 4}
    (sub,) = daemon.submissions.values()
    assert "--jobset-wait" not in (Path(sub.subdir) / "worker.sh").read_text()


def _run_losing_inputs(mom, jobs: int, lost: int):  # type: ignore[no-untyped-def]  # noqa: F811
    """``jobs`` jobs whose first ``lost`` inputs are gone from storage, run by one daemon: each
    job ends once; returns the jobs by status and the daemon's one submission."""
    site, client, dispatcher, submit = mom
    submit(jobs)
    for raw in sorted(Path(site.storage.input_root).rglob("*.raw"))[:lost]:
        raw.unlink()
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon)
    assert dispatcher.duplicate_finals() == []
    (sub,) = daemon.submissions.values()
    return _summary(dispatcher.url)["jobs_by_status"], sub


def test_a_failed_stage_in_after_submission_fails_only_its_job(mom) -> None:  # noqa: F811
    by_status, sub = _run_losing_inputs(mom, 8, 1)
    assert by_status == {"finished": 7, "failed": 1}
    jobset = read_jobset(Path(sub.subdir) / "jobset.json")
    placed = {nj.panda_id for node_jobs in jobset.node_jobs.values() for nj in node_jobs}
    failed = {e.panda_id for e in sub.jobs.values() if e.final == "failed"}
    assert len(failed) == 1 and len(placed) == 7 and not failed & placed  # the job set runs the other seven
    assert jobset.nodes == sub.nodes  # on the nodes the batch job asked for


def test_every_stage_in_failed_ends_the_batch_job(mom) -> None:  # noqa: F811
    by_status, sub = _run_losing_inputs(mom, 4, 4)
    assert by_status == {"failed": 4}
    assert sub.done and (Path(sub.subdir) / "jobset.json").exists()  # empty: an agent that started ends at once


@pytest.mark.parametrize("wait", [600.0, 0.0])
def test_a_job_set_the_shared_disk_refuses_fails_its_jobs_once(mom, monkeypatch, wait: float) -> None:  # noqa: F811
    """A full shared file system when the job set is written (after the qsub with jobset_wait, before
    it without): the jobs fail 1098 once each, the batch job is cancelled, the daemon goes on."""
    import errno

    import hpc.jobset

    site, client, dispatcher, submit = mom
    site.hpc.jobset_wait = wait
    submit(4)

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hpc.jobset, "write_jobset", full)
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon)  # returns: no exception out of the daemon
    assert _summary(dispatcher.url)["jobs_by_status"] == {"failed": 4}
    assert dispatcher.duplicate_finals() == []
    (sub,) = daemon.submissions.values()
    assert sub.done and not sub.jobset_pending
    codes = {code for _, _, code, _ in daemon.recent_errors}
    assert codes == {1098}
    if wait:  # it was submitted: cancelled, so no node waits 600 s for a job set that cannot come
        assert sub.batch_id and make_backend(site).status(sub.batch_id, Path(sub.subdir)) == "cancelled"


def test_a_resubmission_asks_for_every_node_of_the_written_job_set(mom, tmp_path: Path) -> None:  # noqa: F811
    """A restarted daemon submits a state again whose job set is written: jobs that failed since
    must not shrink the batch job below the job set's nodes (a node without a rank fails its jobs)."""
    from compass_pilot.job import JobSpec
    from compass_pilot.modes.multijob import JobEntry, SubmissionState
    from tests.core.jobdicts import reco_job_dict

    site, client, _dispatcher, _submit = mom
    daemon = MultiJobDaemon(site, client, make_backend(site))
    subdir = tmp_path / "sub-x"
    subdir.mkdir()
    state = SubmissionState("sub-x", "long", 2, 3600, str(subdir))
    for panda_id in (1, 2, 3):  # 3 jobs left: one node of 8 slots would do
        job = JobSpec.from_panda(reco_job_dict(panda_id))
        daemon.journal.job_started(job, str(subdir / f"PandaJob_{panda_id}_1"), mode="multijob", sub_id="sub-x")
        daemon.held.add(panda_id)
        state.jobs[str(panda_id)] = JobEntry(panda_id, 1, str(subdir / f"PandaJob_{panda_id}_1"), node=panda_id % 2)
    assert daemon._replan(state).nodes == 1  # no job set written: packed anew
    (subdir / "jobset.json").write_text(json.dumps({"nodes": 2}))
    assert daemon._replan(state).nodes == 2  # the written job set's nodes
