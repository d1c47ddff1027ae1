"""hpc.packing: limits, queues, walltimes and placements, with hypothesis properties."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compass_pilot.config import HPCSection, QueueSection
from hpc.packing import Submission, plan_submissions, queue_for
from tests.hpc.conftest import shell_job

JOB_TYPES = ["reco", "ddd", "merge_mdst", "merge_hist", "xcheck", "mystery"]


def _jobs(specs: list[tuple[str, int, int]]) -> list:
    return [shell_job(1000 + i, job_type=t, priority=p, walltime=w) for i, (t, p, w) in enumerate(specs)]


def test_512_jobs_make_one_full_submission() -> None:
    jobs = _jobs([("reco", 2000, 3600)] * 512)
    (sub,) = plan_submissions(jobs, HPCSection())
    assert (sub.queue, sub.nodes, sub.slots_per_node, len(sub.jobs)) == ("long", 16, 32, 512)
    assert sub.walltime == 3600 + 600


def test_fewer_jobs_give_a_smaller_submission_and_overflow_splits() -> None:
    (small,) = plan_submissions(_jobs([("reco", 2000, 100)] * 33), HPCSection())
    assert small.nodes == 2 and len(small.jobs) == 33
    subs = plan_submissions(_jobs([("reco", 2000, 100)] * 600), HPCSection())
    assert [len(s.jobs) for s in subs] == [512, 88]
    assert [s.nodes for s in subs] == [16, 3]


def test_queues_by_job_type_and_unknown_goes_to_longest() -> None:
    hpc = HPCSection()
    subs = plan_submissions(_jobs([("merge_hist", 5000, 60), ("reco", 2000, 60), ("mystery", 1, 60)]), hpc)
    by_queue = {s.queue: sorted(j.job_type for j in s.jobs) for s in subs}
    assert by_queue == {"long": ["mystery", "reco"], "short": ["merge_hist"]}
    assert [s.queue for s in subs] == ["long", "short"]  # config order
    tie = dataclasses.replace(hpc, queues=[QueueSection("a", [], 100), QueueSection("b", [], 100)])
    assert queue_for("x", tie).name == "a"


def test_walltime_margin_cap_and_no_limit() -> None:
    hpc = HPCSection()
    (sub,) = plan_submissions(_jobs([("merge_hist", 1, 600), ("merge_hist", 1, 1200)]), hpc)
    assert sub.walltime == 1200 + 600
    (capped,) = plan_submissions(_jobs([("merge_hist", 1, 2 * 3600)]), hpc)
    assert capped.walltime == 2 * 3600
    (unlimited,) = plan_submissions(_jobs([("merge_mdst", 1, 0), ("merge_mdst", 1, 60)]), hpc)
    assert unlimited.walltime == 6 * 3600


def test_priority_then_pandaid_fill_node_zero_first() -> None:
    hpc = HPCSection(slots_per_node=2, max_nodes=4, max_jobs=8)
    jobs = [shell_job(7, priority=1), shell_job(5, priority=9), shell_job(6, priority=9), shell_job(3, priority=1)]
    (sub,) = plan_submissions(jobs, hpc)
    assert [(p.panda_id, p.node, p.slot) for p in sub.placements] == [(5, 0, 0), (6, 0, 1), (3, 1, 0), (7, 1, 1)]
    assert [j.panda_id for j, _ in [(j, p) for p, j in sub.jobs_on_node(1)]] == [3, 7]


def test_bad_input_names_the_problem() -> None:
    with pytest.raises(ValueError, match="PandaID 5 is listed twice"):
        plan_submissions([shell_job(5), shell_job(5)], HPCSection())
    with pytest.raises(ValueError, match=r"hpc\.slots_per_node"):
        plan_submissions([shell_job(5)], HPCSection(slots_per_node=0))
    with pytest.raises(ValueError, match=r"hpc\.queues"):
        plan_submissions([shell_job(5)], HPCSection(queues=[]))
    assert plan_submissions([], HPCSection()) == []


_job_specs = st.lists(
    st.tuples(st.sampled_from(JOB_TYPES), st.integers(-5, 5000), st.integers(0, 30 * 3600)), max_size=300
)
_limits = st.tuples(st.integers(1, 40), st.integers(1, 6), st.integers(1, 8))


def _check_invariants(jobs: list, subs: list[Submission], hpc: HPCSection) -> None:
    placed = [j.panda_id for s in subs for j in s.jobs]
    assert sorted(placed) == sorted(j.panda_id for j in jobs)  # none lost, none duplicated
    for s in subs:
        assert 1 <= len(s.jobs) <= hpc.max_jobs
        assert 1 <= s.nodes <= hpc.max_nodes
        assert s.nodes == -(-len(s.jobs) // s.slots_per_node)
        assert [p.panda_id for p in s.placements] == [j.panda_id for j in s.jobs]
        cells = {(p.node, p.slot) for p in s.placements}
        assert len(cells) == len(s.placements)
        assert all(0 <= n < s.nodes and 0 <= k < s.slots_per_node for n, k in cells)
        queue = next(q for q in hpc.queues if q.name == s.queue)
        assert all(queue_for(j.job_type, hpc) is queue for j in s.jobs)
        assert 0 < s.walltime <= queue.max_walltime
        for j in s.jobs:
            need = j.walltime_limit + queue.walltime_margin if j.walltime_limit else queue.max_walltime
            assert s.walltime >= min(need, queue.max_walltime)
        order = [(-j.current_priority, j.panda_id) for j in s.jobs]
        assert order == sorted(order)


@settings(max_examples=60, deadline=None)
@given(specs=_job_specs, limits=_limits)
def test_properties(specs: list[tuple[str, int, int]], limits: tuple[int, int, int]) -> None:
    max_jobs, max_nodes, slots = limits
    hpc = HPCSection(max_jobs=max_jobs, max_nodes=max_nodes, slots_per_node=slots)
    jobs = _jobs(specs)
    subs = plan_submissions(jobs, hpc)
    _check_invariants(jobs, subs, hpc)
    assert plan_submissions(list(reversed(jobs)), hpc) == subs  # deterministic, input order irrelevant
