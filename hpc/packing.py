"""Pack PanDA jobs into batch submissions: queue by job type, nodes × slots, walltime.

The Blue Waters pilot put every job it fetched into one PBS job on one queue, so a
single long reconstruction held 16 nodes hostage and a walltime overrun failed all 512
jobs.  Here jobs are first split by *queue class* (the site config maps each COMPASS job
type to a queue), so merges never wait behind 18 h reconstructions, and each
submission's walltime is what its own jobs need, not the queue's maximum.

Rules (all pure, deterministic, no I/O):

- a submission holds at most ``hpc.max_jobs`` jobs and ``hpc.max_nodes`` nodes; it is
  smaller when fewer jobs are at hand (nodes = ceil(jobs / slots_per_node));
- a job type no queue lists goes to the queue with the longest ``max_walltime`` (the
  first such queue on a tie): an unknown type is most safely given the most time;
- walltime = max over the jobs of ``walltime_limit + walltime_margin``; a job with no
  limit asks for the queue's ``max_walltime``; the result is capped at ``max_walltime``;
- jobs are ordered by priority (highest first) then PandaID, and fill node 0's slots
  first, then node 1's, …: the highest-priority jobs land in the first submission, and
  the same input always gives the same placement (a re-plan after a failed stage-in
  does not shuffle jobs between nodes needlessly);
- submissions come out in the order of ``hpc.queues``, then by chunk.

Every job occupies one slot (COMPASS payloads are single-core, ``coreCount`` 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compass_pilot.config import HPCSection, QueueSection
from compass_pilot.job import JobSpec


@dataclass(frozen=True)
class Placement:
    """Where one job runs inside a submission."""

    panda_id: int
    node: int  # 0-based node index (= MPI rank of that node's agent)
    slot: int  # 0-based slot on that node


@dataclass(frozen=True)
class Submission:
    """One batch job: ``nodes`` nodes of ``slots_per_node`` slots on ``queue`` for ``walltime`` seconds."""

    queue: str
    nodes: int
    slots_per_node: int
    walltime: int  # seconds
    jobs: tuple[JobSpec, ...]  # in placement order
    placements: tuple[Placement, ...]  # placements[i] is jobs[i]'s

    def jobs_on_node(self, node: int) -> list[tuple[Placement, JobSpec]]:
        """The (placement, job) pairs of one node, by slot."""
        return [(p, j) for p, j in zip(self.placements, self.jobs, strict=True) if p.node == node]


def _check_hpc(hpc: HPCSection) -> None:
    for key in ("max_jobs", "max_nodes", "slots_per_node"):
        value = getattr(hpc, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"hpc.{key}: expected a positive integer, got {value!r}")
    if not hpc.queues:
        raise ValueError("hpc.queues: at least one queue is needed to place jobs")
    for i, queue in enumerate(hpc.queues):
        if queue.max_walltime < 1:
            raise ValueError(f"hpc.queues[{i}].max_walltime: expected a positive number of seconds")
        if queue.walltime_margin < 0:
            raise ValueError(f"hpc.queues[{i}].walltime_margin: must not be negative")


def queue_for(job_type: str, hpc: HPCSection) -> QueueSection:
    """The queue class of a job type; unknown types go to the longest queue (first on a tie)."""
    for queue in hpc.queues:
        if job_type in queue.job_types:
            return queue
    longest = max(queue.max_walltime for queue in hpc.queues)
    return next(queue for queue in hpc.queues if queue.max_walltime == longest)


def job_walltime(job: JobSpec, queue: QueueSection) -> int:
    """Seconds one job asks for on a queue: its limit plus the margin, capped; no limit → queue max."""
    limit = job.walltime_limit
    if limit <= 0:
        return queue.max_walltime
    return min(limit + queue.walltime_margin, queue.max_walltime)


def _priority_order(job: JobSpec) -> tuple[int, int]:
    return (-job.current_priority, job.panda_id)


def plan_submissions(jobs: list[JobSpec], hpc: HPCSection) -> list[Submission]:
    """Split jobs into submissions that respect the site's limits (see the module doc)."""
    _check_hpc(hpc)
    seen: set[int] = set()
    for job in jobs:
        if job.panda_id in seen:
            raise ValueError(f"jobs: PandaID {job.panda_id} is listed twice")
        seen.add(job.panda_id)
    per_submission = min(hpc.max_jobs, hpc.max_nodes * hpc.slots_per_node)
    by_queue: dict[int, list[JobSpec]] = {}
    for job in jobs:
        queue = queue_for(job.job_type, hpc)
        by_queue.setdefault(id(queue), []).append(job)
    submissions: list[Submission] = []
    for queue in hpc.queues:
        group = sorted(by_queue.get(id(queue), []), key=_priority_order)
        for start in range(0, len(group), per_submission):
            chunk = tuple(group[start : start + per_submission])
            placements = tuple(
                Placement(job.panda_id, i // hpc.slots_per_node, i % hpc.slots_per_node) for i, job in enumerate(chunk)
            )
            submissions.append(
                Submission(
                    queue=queue.name,
                    nodes=math.ceil(len(chunk) / hpc.slots_per_node),
                    slots_per_node=hpc.slots_per_node,
                    walltime=max(job_walltime(job, queue) for job in chunk),
                    jobs=chunk,
                    placements=placements,
                )
            )
    return submissions
