"""MultiJobWorkerMaker: many PanDA jobs → one batch worker (Harvester mapType ManyToOne).

Sizing comes from the site's ``hpc`` section (up to 512 jobs a worker, nodes from
slots per node, queue class from the jobs' types) through ``hpc.packing`` — the same
planner the MOM-node daemon uses, so Harvester and the daemon size workers alike.

Queue-config keys: ``hpc`` — a mapping of ``compass_pilot.config.HPCSection`` fields
(validated like the site file), or ``siteConfig`` — path of a site YAML whose ``hpc``
section is used; ``nJobsPerWorker`` — cap below ``hpc.max_jobs``; ``nReadyResources``.

The worker's plan goes to ``WorkSpec.workParams`` (``queue``, ``nodes``,
``slotsPerNode``, ``walltime``, ``pandaIDs``): Harvester persists workParams, so the
submitter — a different instance, maybe a different process — finds it there.

``nJobs`` is left alone: Harvester's submitter calls ``set_num_jobs_with_list()`` after
``make_worker`` (submitter.py l. 260), which *adds* the chunk's length to it.

Sizing under Harvester (HSF/harvester at d561b72): the submitter asks the maker for
``get_num_jobs_per_worker(n_workers)`` every cycle (submitter.py l. 160-175) and
``db_proxy.get_job_chunks_for_workers`` hands out only whole workers of that size
(``int(min(maxJobs, nAvailable)/n)*n``, db_proxy.py l. 1898).  A fixed 512 therefore
means no worker at all until 512 jobs wait.  So the size is dynamic: the number of
this queue's jobs waiting for a worker (subStatus ``prepared`` / ``queued``, the ones
that query counts), read through the ``dbInterface`` Harvester's PluginFactory gives
every plugin, capped by ``nJobsPerWorker`` and the site's 512 jobs / 16 nodes.  5
waiting jobs → one 5-job worker; 600 → 512 now and 88 next cycle.  Without a
Harvester DB (our daemon, CI) it is the cap.
"""

from __future__ import annotations

import math
from typing import Any

from harvester_plugins.compat import PluginBase, WorkSpec
from harvester_plugins.logs import plugin_logger
from harvester_plugins.sections import section_of

log = plugin_logger(__name__)


def params_from_submission(sub: Any, **extra: Any) -> dict[str, Any]:
    """workParams of a worker that runs ``hpc.packing.Submission`` ``sub``."""
    params: dict[str, Any] = {
        "queue": sub.queue,
        "nodes": sub.nodes,
        "slotsPerNode": sub.slots_per_node,
        "walltime": sub.walltime,
        "pandaIDs": [job.panda_id for job in sub.jobs],
    }
    params.update({k: v for k, v in extra.items() if v not in (None, "")})
    return params


def _merge(subs: list[Any], hpc: Any) -> Any:
    """One submission for jobs of several queue classes: the longest queue among them covers all."""
    from hpc.packing import Placement, Submission

    jobs = tuple(job for sub in subs for job in sub.jobs)
    longest = max(subs, key=lambda s: s.walltime)
    placements = tuple(
        Placement(job.panda_id, i // hpc.slots_per_node, i % hpc.slots_per_node) for i, job in enumerate(jobs)
    )
    return Submission(
        queue=longest.queue,
        nodes=math.ceil(len(jobs) / hpc.slots_per_node),
        slots_per_node=hpc.slots_per_node,
        walltime=longest.walltime,
        jobs=jobs,
        placements=placements,
    )


class MultiJobWorkerMaker(PluginBase):
    """Harvester worker maker: one worker for up to ``hpc.max_jobs`` jobs (no state)."""

    def make_worker(
        self, jobspec_list: list[Any], queue_config: Any, job_type: str, resource_type: str, **kwargs: Any
    ) -> Any:
        """A WorkSpec for the jobs, or None (Harvester then returns the jobs to the pool)."""
        from compass_pilot.errors import BadJobSpec
        from compass_pilot.job import JobSpec
        from hpc.packing import plan_submissions

        try:
            hpc = section_of(self, "hpc")
            limit = self.max_jobs_per_worker()
            if not jobspec_list:
                log.error("make_worker: no jobs")
                return None
            if len(jobspec_list) > limit:
                log.error("make_worker: %d jobs exceed %d jobs per worker", len(jobspec_list), limit)
                return None
            jobs = [JobSpec.from_panda(spec.jobParams) for spec in jobspec_list]
            subs = plan_submissions(jobs, hpc)
            sub = subs[0] if len(subs) == 1 else _merge(subs, hpc)
        except (BadJobSpec, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("make_worker: cannot plan a worker: %s", exc)
            return None
        workspec = WorkSpec()
        workspec.mapType = WorkSpec.MT_MultiJobs
        workspec.nCore = sub.nodes * sub.slots_per_node
        workspec.maxWalltime = sub.walltime
        workspec.minRamCount = max((job.min_ram_count for job in jobs), default=0)
        workspec.maxDiskCount = sum(job.max_disk_count for job in jobs)
        workspec.jobType = job_type
        workspec.resourceType = resource_type
        workspec.workParams = params_from_submission(sub, launcher=hpc.launcher, fakeNodes=hpc.fake_nodes or None)
        log.info(
            "worker for %d jobs: queue %s, %d nodes × %d slots, %d s",
            len(jobs),
            sub.queue,
            sub.nodes,
            sub.slots_per_node,
            sub.walltime,
        )
        return workspec

    # -- sizing hooks Harvester's submitter agent calls ----------------------------------
    def max_jobs_per_worker(self) -> int:
        """The cap: ``nJobsPerWorker`` below the site's 512 jobs / nodes × slots."""
        hpc = section_of(self, "hpc")
        cap = min(hpc.max_jobs, hpc.max_nodes * hpc.slots_per_node)
        wanted = getattr(self, "nJobsPerWorker", None)
        return min(cap, int(wanted)) if wanted else cap

    def get_num_jobs_per_worker(self, n_workers: int) -> int:
        """Jobs per worker for this cycle: what waits, up to the cap (never 0: Harvester divides by it)."""
        cap = self.max_jobs_per_worker()
        waiting = self.waiting_jobs(cap)
        if waiting is None:
            return cap
        return max(1, min(cap, waiting))

    def waiting_jobs(self, limit: int) -> int | None:
        """This queue's jobs waiting for a worker (up to ``limit``), or None without a Harvester DB."""
        db = getattr(getattr(self, "dbInterface", None), "dbProxy", None)
        queue = getattr(self, "queueName", None)
        if db is None or not queue:
            return None
        waiting = 0
        try:
            for sub_status in ("prepared", "queued"):  # what get_job_chunks_for_workers takes
                jobs = db.get_jobs_in_sub_status(sub_status, limit) or []
                waiting += sum(1 for job in jobs if getattr(job, "computingSite", queue) == queue)
        except Exception as exc:  # a DB hiccup must not stop submission: use the cap
            log.warning("cannot count the jobs waiting for a worker: %s", exc)
            return None
        return waiting

    def get_num_workers_per_job(self, n_workers: int) -> int:
        return 1  # a COMPASS job runs in one slot of one worker

    def num_ready_resources(self) -> int:
        return int(getattr(self, "nReadyResources", 1))

    def is_resource_ready(self) -> bool:
        return self.num_ready_resources() > 0

    def get_max_workers_per_job_in_total(self) -> int:
        return 1

    def get_max_workers_per_job_per_cycle(self) -> int:
        return 1
