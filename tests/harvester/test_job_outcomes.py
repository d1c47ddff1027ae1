"""Worker status versus job status, and worker sizing, as Harvester's agents use them.

CI has no Harvester: these replay what its monitor agent and submitter do through
``compat`` (which calls the real ``core_utils`` function when Harvester is importable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compass_pilot.config import HPCSection, SiteConfig, config_to_dict
from compass_pilot.errors import ErrorCode
from harvester_plugins import compat, jobfiles
from harvester_plugins.compat import WorkSpec, job_spec_from_panda
from harvester_plugins.messenger import SharedFileMessenger
from harvester_plugins.monitor import settle_jobs
from harvester_plugins.workermaker import MultiJobWorkerMaker
from hpc.jobset import write_jobset
from hpc.packing import plan_submissions
from tests.core.jobdicts import reco_job_dict
from tests.hpc.conftest import shell_job


def _access_point(tmp_path: Path, ids: list[int]) -> Path:
    """A worker's access point with its job set, one per-job dir each, as our messenger lays it out."""
    ap = tmp_path / "worker"
    (sub,) = plan_submissions([shell_job(i) for i in ids], HPCSection(max_jobs=8, max_nodes=2, slots_per_node=4))
    workdirs = {i: str(ap / str(i)) for i in ids}
    for d in workdirs.values():
        Path(d).mkdir(parents=True)
    write_jobset(ap / "jobset.json", sub, config_to_dict(SiteConfig()), workdirs, str(ap))
    (ap / "reports").mkdir()
    return ap


def _outcome(panda_id: int, status: str, code: int = 0) -> jobfiles.JobOutcome:
    return jobfiles.JobOutcome(panda_id, 1, status, code, "payload failed" if code else "")


def test_worker_ends_finished_only_when_every_job_has_its_outcome(tmp_path: Path) -> None:
    ap = _access_point(tmp_path, [1, 2])
    jobfiles.write_outcome(ap / "1", _outcome(1, "finished"))
    jobfiles.write_outcome(ap / "2", _outcome(2, "failed", ErrorCode.PAYLOAD_FAILED))
    assert settle_jobs(str(ap), "77", WorkSpec.ST_finished, "") == (WorkSpec.ST_finished, "")


def test_jobs_left_without_outcome_fail_with_their_own_code_and_fail_the_worker(tmp_path: Path) -> None:
    ap = _access_point(tmp_path, [1, 2, 3])
    jobfiles.write_outcome(ap / "1", _outcome(1, "finished"))
    (ap / "reports" / "2.started").write_text("123 0\n")  # job 2's payload ran; job 3's never started
    status, diag = settle_jobs(str(ap), "77", WorkSpec.ST_finished, "")
    assert status == WorkSpec.ST_failed and "2 job(s) ended without a result" in diag
    two, three = jobfiles.read_outcome(ap / "2", 2), jobfiles.read_outcome(ap / "3", 3)
    assert two is not None and (two.status, two.error_code) == ("failed", ErrorCode.BATCH_TIME_LIMIT)
    assert three is not None and (three.status, three.error_code) == ("failed", ErrorCode.LOST_CONTACT)
    assert jobfiles.read_outcome(ap / "1", 1).status == "finished"  # type: ignore[union-attr]


def test_harvester_sees_each_jobs_true_status_through_the_messenger(tmp_path: Path) -> None:
    """core_utils.update_job_attributes_with_workers on what our messenger reads: a failed
    payload ends `failed` with its code in a `finished` worker; a finished job keeps its outputs."""
    ap = _access_point(tmp_path, [1, 2])
    out = ap / "1" / "out.root"
    out.write_bytes(b"abc")
    ok = _outcome(1, "finished")
    ok.outputs = [jobfiles.OutputFile.of(out, "output", "guid-1")]
    jobfiles.write_outcome(ap / "1", ok)
    jobfiles.write_outcome(ap / "2", _outcome(2, "failed", ErrorCode.PAYLOAD_FAILED))
    ws = WorkSpec()
    ws.workerID, ws.mapType, ws.accessPoint = 5, WorkSpec.MT_MultiJobs, str(ap)
    jobs = [job_spec_from_panda(reco_job_dict(i)) for i in (1, 2)]
    ws.set_jobspec_list(jobs)
    ws.set_status(WorkSpec.ST_finished)
    messenger = SharedFileMessenger()
    ws.set_work_attributes(messenger.get_work_attributes(ws))
    files = messenger.get_files_to_stage_out(ws)
    compat.update_job_attributes_with_workers(ws.mapType, jobs, [ws], {ws.workerID: files})
    assert [(j.status, j.subStatus) for j in jobs] == [("finished", "to_transfer"), ("failed", "to_transfer")]
    assert jobs[1].get_job_attributes_for_panda()["pilotErrorCode"] == ErrorCode.PAYLOAD_FAILED
    assert jobs[0].get_job_attributes_for_panda()["pilotErrorCode"] == 0
    ((spec,),) = [list(j.get_output_file_specs()) for j in jobs[:1]]
    assert (spec.lfn, spec.fsize, spec.chksum, spec.fileType) == ("out.root", 3, "024d0127", "output")
    assert json.loads((ap / "1" / "jobReport.json").read_text())["exitCode"] == 0
    assert jobs[0].metaData["exitCode"] == 0


class _HarvesterDB:
    """What Harvester's PluginFactory gives every plugin as ``dbInterface`` (its DB is not in CI):
    ``dbProxy.get_jobs_in_sub_status`` over a list of jobs waiting for a worker."""

    def __init__(self, waiting: list[Any]) -> None:
        self.dbProxy = self
        self.waiting = waiting

    def get_jobs_in_sub_status(self, sub_status: str, max_jobs: int) -> list[Any]:
        return [j for j in self.waiting if j.subStatus == sub_status][:max_jobs]


def _waiting(n: int, queue: str = "Q") -> list[Any]:
    jobs = []
    for i in range(n):
        job = job_spec_from_panda(reco_job_dict(1000 + i))
        job.computingSite, job.subStatus = queue, "prepared"
        jobs.append(job)
    return jobs


def _submitter_cycle(waiting: list[Any], **maker_conf: Any) -> list[Any]:
    """Harvester's submitter for a ManyToOne queue: size, cut chunks, make workers, set nJobs."""
    maker = MultiJobWorkerMaker(queueName="Q", dbInterface=_HarvesterDB(waiting), **maker_conf)
    n = maker.get_num_jobs_per_worker(1)
    workers = []
    for chunk in compat.job_chunks_for_workers(waiting, 1, 0, n):
        ws = MultiJobWorkerMaker(queueName="Q", **maker_conf).make_worker(chunk, None, "managed", "SCORE")
        ws.set_jobspec_list(chunk)
        ws.set_num_jobs_with_list()
        workers.append(ws)
    return workers


def test_five_waiting_jobs_get_one_five_job_worker() -> None:
    (ws,) = _submitter_cycle(_waiting(5), nJobsPerWorker=512)
    assert ws.nJobs == 5 and len(ws.workParams["pandaIDs"]) == 5


def test_a_worker_never_exceeds_512_jobs_and_jobs_of_other_queues_do_not_count() -> None:
    waiting = _waiting(600) + _waiting(50, queue="OTHER")
    (ws,) = _submitter_cycle(waiting)
    assert ws.nJobs == 512 and ws.workParams["nodes"] == 16
    assert (
        MultiJobWorkerMaker(queueName="Q", dbInterface=_HarvesterDB(_waiting(3, "OTHER"))).get_num_jobs_per_worker(1)
        == 1
    )  # nothing waits here: never 0 (Harvester divides by it)


def test_fixed_size_without_harvester_db_is_the_cap() -> None:
    assert MultiJobWorkerMaker(nJobsPerWorker=64).get_num_jobs_per_worker(1) == 64
    # and this is why a fixed size is wrong under Harvester: 5 waiting jobs, no worker
    assert compat.job_chunks_for_workers(_waiting(5), 1, 0, 512) == []


def test_panda_times_round_trip_through_the_attributes_file_in_utc() -> None:
    from harvester_plugins.jobfiles import JobOutcome

    outcome = JobOutcome(panda_id=7, attempt_nr=1, status="finished", start_time=1796268948.0, end_time=951782400.0)
    attrs = outcome.attributes()
    assert attrs["startTime"] == "2026-12-03 03:35:48" and attrs["endTime"] == "2000-02-29 00:00:00"
    back = JobOutcome.from_attributes(7, attrs)
    assert back is not None and (back.start_time, back.end_time) == (1796268948.0, 951782400.0)
    for bad in ("2026-13-03 03:35:48", "2026-12-03T03:35:48", "yesterday", None):
        assert JobOutcome.from_attributes(7, {**attrs, "startTime": bad}).start_time == 0.0  # type: ignore[union-attr]
