"""One cycle of each Harvester agent, replayed through ``compat`` where Harvester cannot run.

CI cannot fetch HSF/harvester, so it cannot run Harvester's agents.  This replays, in
their order, the plugin calls those agents make for a ManyToOne queue, with the
decisions they take on the answers (HSF/harvester at d561b72):

* JobFetcher (job_fetcher.py l. 116-154): ``convert_job_json``, one input FileSpec per
  ``inFiles`` entry.
* Preparator (preparator.py l. 83-136, 253-299): ``trigger_preparation`` →
  True: ``check_stage_in_status`` → ``resolve_input_paths`` → subStatus ``prepared``;
  False: job ``failed`` / ``failed_to_prepare`` with ``set_pilot_error(1099, …)`` (which
  keeps a code the plugin set first); None: again next cycle.
* Submitter (submitter.py l. 160-300): ``get_num_jobs_per_worker`` → db_proxy's whole
  worker chunks → ``make_worker`` → ``set_jobspec_list`` + ``set_num_jobs_with_list`` →
  ``accessPoint`` from the messenger section → ``setup_access_points`` → ``feed_jobs`` →
  ``submit_workers``.
* Monitor (monitor.py l. 363-420, 637-720): ``check_workers`` → ``set_status``; a
  ``failed`` worker gets 1008 + its diag as worker pilot error; ``get_work_attributes``
  and ``get_files_to_stage_out`` → ``core_utils.update_job_attributes_with_workers``.
* Stager (stager.py l. 60-160): ``trigger_stage_out`` / ``check_stage_out_status``; a
  False fails the job (``failed_to_stage_out``, 1137 unless the job has a code).
* Sweeper: ``kill_worker`` for live workers, ``sweep_worker``.

It is a replay, not Harvester: scripts/harvester_conformance.py runs the real agents
when given Harvester's source tree, and CI's tests hold this replay to the same table.
"""

from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass, field
from typing import Any

from harvester_plugins import compat
from harvester_plugins.compat import WorkSpec

STAGEIN_FAILED = 1099  # Harvester's PilotErrors.STAGEINFAILED
STAGEOUT_FAILED = 1137  # PilotErrors.STAGEOUTFAILED
GENERAL_ERROR = 1008  # PilotErrors.GENERALERROR


class _WaitingJobs:
    """What a worker maker's ``dbInterface.dbProxy.get_jobs_in_sub_status`` answers from Harvester's DB."""

    def __init__(self, jobs: list[Any]) -> None:
        self.dbProxy = self
        self.jobs = jobs

    def get_jobs_in_sub_status(self, sub_status: str, max_jobs: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [j for j in self.jobs if j.subStatus == sub_status][:max_jobs]


@dataclass
class AgentCycle:
    """A queue's plugins driven as Harvester's agents drive them; one instance per queue."""

    queue_name: str
    queue_dict: dict[str, Any]
    jobs: list[Any] = field(default_factory=list)
    workers: list[Any] = field(default_factory=list)
    _next_worker_id: int = 1

    def plugin(self, section: str, **extra: Any) -> Any:
        """A NEW plugin instance, as PluginFactory builds one for every call."""
        conf = dict(compat.plugin_sections(self.queue_name, self.queue_dict)[section], **extra)
        return compat.get_plugin(conf)

    # -- JobFetcher --------------------------------------------------------------------------
    def fetch(self, job_dicts: list[dict[str, Any]]) -> list[Any]:
        for data in job_dicts:
            job = compat.add_input_files(compat.job_spec_from_panda(data))
            job.computingSite, job.status, job.subStatus = self.queue_name, "starting", "fetched"
            self.jobs.append(job)
        return self.jobs

    # -- Preparator --------------------------------------------------------------------------
    def prepare(self) -> None:
        for job in [j for j in self.jobs if j.subStatus in ("fetched", "preparing")]:
            status, diag = self.plugin("preparator").trigger_preparation(job)
            if status is False:
                job.status, job.subStatus = "failed", "failed_to_prepare"
                job.set_pilot_error(STAGEIN_FAILED, f"stage-in failed with {diag}")
                continue
            if status is None:
                job.subStatus = "preparing"
                continue
            status, diag = self.plugin("preparator").check_stage_in_status(job)
            if status is not True:
                job.subStatus = "preparing"
                continue
            if self.plugin("preparator").resolve_input_paths(job)[0] is not False:
                job.set_all_input_ready()
                job.subStatus = "prepared"

    # -- Submitter ---------------------------------------------------------------------------
    def submit(self, n_workers: int = 1) -> list[Any]:
        waiting = [j for j in self.jobs if j.subStatus == "prepared"]
        maker = self.plugin("workerMaker", dbInterface=_WaitingJobs(waiting))
        n_jobs = maker.get_num_jobs_per_worker(n_workers)
        made = []
        for chunk in compat.job_chunks_for_workers(waiting, n_workers, 0, n_jobs):
            workspec = self.plugin("workerMaker").make_worker(chunk, None, "managed", "SCORE")
            if workspec is None:
                for job in chunk:
                    job.status, job.subStatus = "failed", "failed_to_make"
                    job.set_pilot_error(1008, "failed to make a worker")
                continue
            workspec.workerID, self._next_worker_id = self._next_worker_id, self._next_worker_id + 1
            workspec.isNew, workspec.hasJob = True, 1
            workspec.set_jobspec_list(chunk)
            workspec.set_num_jobs_with_list()
            workspec.mapType = self.queue_dict.get("mapType", WorkSpec.MT_MultiJobs)
            workspec.computingSite = self.queue_name
            workspec.accessPoint = self.queue_dict["messenger"]["accessPoint"]
            workspec.status = WorkSpec.ST_submitted
            for job in chunk:
                job.subStatus = "submitted"
            made.append(workspec)
        if made:
            messenger = self.plugin("messenger")
            messenger.setup_access_points(made)
            for workspec in made:
                messenger.feed_jobs(workspec, workspec.get_jobspec_list())
            results = self.plugin("submitter").submit_workers(made)
            for workspec, (ok, diag) in zip(made, results, strict=True):
                if ok is not True:
                    workspec.set_status(WorkSpec.ST_failed)
                    workspec.set_dialog_message(diag)
            self.workers.extend(made)
        return made

    # -- Monitor -----------------------------------------------------------------------------
    def monitor(self) -> None:
        active = [w for w in self.workers if not w.is_post_processed()]
        if not active:
            return
        _, results = self.plugin("monitor").check_workers(active)
        messenger = self.plugin("messenger")
        for workspec, (status, diag) in zip(active, results, strict=True):
            workspec.set_status(status)
            workspec.set_dialog_message(diag)
            if status == WorkSpec.ST_failed and not workspec.has_pilot_error():
                workspec.set_pilot_error(GENERAL_ERROR, diag)
            workspec.set_work_attributes(messenger.get_work_attributes(workspec))
            files = messenger.get_files_to_stage_out(workspec)
            jobs = [j for j in workspec.get_jobspec_list() if j.status not in ("finished", "failed", "cancelled")]
            compat.update_job_attributes_with_workers(workspec.mapType, jobs, [workspec], {workspec.workerID: files})
            messenger.acknowledge_events_files(workspec)
            if workspec.is_final_status():
                workspec.post_processed()

    def wait_workers(self, timeout: float, check_every: float = 1.0) -> None:
        """Monitor cycles until every worker is final (Harvester's monitor runs on its own interval)."""
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        pause = threading.Event()
        while True:
            self.monitor()
            if all(w.is_final_status() for w in self.workers) or datetime.datetime.now() > deadline:
                return
            pause.wait(check_every)

    # -- Stager ------------------------------------------------------------------------------
    def stage_out(self) -> None:
        for job in [j for j in self.jobs if j.subStatus == "to_transfer"]:
            if not job.outFiles:
                job.subStatus = "staged" if job.status != "failed" else "failed"
                continue
            status, diag = self.plugin("stager").trigger_stage_out(job)
            if status is True:
                status, diag = self.plugin("stager").check_stage_out_status(job)
            if status is None:
                continue
            if status is False:
                job.set_pilot_error(STAGEOUT_FAILED, f"stage-out failed with {diag}")
                job.status, job.subStatus = "failed", "failed_to_stage_out"
            else:
                job.subStatus = "staged"

    # -- Sweeper -----------------------------------------------------------------------------
    def sweep(self) -> None:
        for workspec in self.workers:
            if not workspec.is_final_status():
                self.plugin("sweeper").kill_worker(workspec)
            self.plugin("sweeper").sweep_worker(workspec)


__all__ = ["AgentCycle"]
