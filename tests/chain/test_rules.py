"""The chain's pure parts: merge planner, cross-check, workflow rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compass_pilot.experiment.crosscheck import MergedOutput, cross_check
from compass_pilot.experiment.merging import ChunkOutput, plan_merges
from compass_pilot.experiment.naming import ProcessingOptions
from compass_pilot.job import JobSpec
from compass_pilot.panda.workflow import JobRow, RunState, chain_columns, next_jobs, run_status

OPTS = ProcessingOptions("P09", 2, 7)
TASK = {"name": "t", "prod": "P09", "year": 2016, "period": "W14", "slt": 2, "phast": 7, "chain": True, "_task_id": 1}

chunk_lists = st.lists(
    st.builds(
        ChunkOutput,
        run=st.sampled_from([275678, 275679, 275680]),
        chunk=st.integers(0, 5000),
        lfn=st.uuids().map(str),
        size=st.integers(0, 3_000),
        events=st.integers(0, 100),
    ),
    max_size=300,
    unique_by=lambda c: c.lfn,
)


@settings(max_examples=300, deadline=None)
@given(chunk_lists, st.integers(1, 5000), st.integers(1, 50))
def test_planner_properties(chunks: list[ChunkOutput], target: int, max_inputs: int) -> None:
    plans = plan_merges(chunks, "mdst", OPTS, target_bytes=target, max_inputs=max_inputs)
    merged = [c.lfn for p in plans for c in p.inputs]
    assert sorted(merged) == sorted(c.lfn for c in chunks)  # every chunk in exactly one plan
    for plan in plans:
        assert 1 <= len(plan.inputs) <= max_inputs
        assert {c.run for c in plan.inputs} == {plan.run}  # runs never mixed
        assert sum(c.size for c in plan.inputs) <= target or len(plan.inputs) == 1
    assert plans == plan_merges(list(reversed(chunks)), "mdst", OPTS, target_bytes=target, max_inputs=max_inputs)
    for run in {p.run for p in plans}:
        parts = [p.part for p in plans if p.run == run]
        assert parts == [None] if len(parts) == 1 else parts == list(range(len(parts)))


def test_part_names() -> None:
    chunks = [ChunkOutput(275678, i, f"c{i}", 10, 1) for i in range(5)]
    names = [p.output for p in plan_merges(chunks, "mdst", OPTS, target_bytes=25)]
    assert names == ["mDST-275678-2-7.root.000", "mDST-275678-2-7.root.001", "mDST-275678-2-7.root.002"]
    assert plan_merges(chunks, "dump", OPTS)[0].output == "evtdump2-275678.raw"


def test_cross_check_names_what_differs() -> None:
    chunks = [ChunkOutput(7, i, f"c{i}", 100, 10) for i in range(3)]
    good = [MergedOutput("m", 300, 30, ("c0", "c1", "c2"))]
    assert cross_check(7, chunks, good).ok
    short = cross_check(7, chunks, [MergedOutput("m", 300, 25, ("c0", "c1", "c2"))])
    assert not short.ok and "run 7" in short.diag and "chunks 30 != merged 25" in short.diag
    missing = cross_check(7, chunks, [MergedOutput("m", 200, 30, ("c0", "c1"))])
    assert "chunks not merged: c2" in missing.diag and "size" in missing.diag
    twice = cross_check(
        7, chunks, [MergedOutput("a", 150, 15, ("c0", "c1", "c2")), MergedOutput("b", 150, 15, ("c2",))]
    )
    assert "merged twice: c2" in twice.diag


def _reco(chunk: int, status: str = "finished") -> JobRow:
    report = {
        f"mDST-275678-{chunk}-2-7.root": {"fsize": 1000, "nevents": 50},
        f"275678-{chunk}-2.root": {"fsize": 100, "nevents": 50},
        f"evtdump2-{chunk}-275678.raw": {"fsize": 200, "nevents": 5},
        f"P09-275678-{chunk}-2-7.job.log.tgz": {"fsize": 10},
    }
    return JobRow(status, "reco", {"_chunk": chunk}, report)


def _with(state: RunState, jobs: list[dict], status: str) -> RunState:
    return RunState(state.run, state.jobs + [JobRow(status, j["processingType"], j) for j in jobs])


def test_rules_walk_the_chain() -> None:
    state = RunState(275678, [_reco(11001), _reco(11002), _reco(11003, "running")])
    assert next_jobs(state, TASK) == []  # merging waits for every chunk
    state = RunState(275678, [_reco(11001), _reco(11002), _reco(11003)])
    merges = next_jobs(state, TASK)
    assert [j["processingType"] for j in merges] == ["merge_mdst"]
    spec = JobSpec.from_panda({**merges[0], "PandaID": 1})  # what the pilot will parse
    assert [f.lfn for f in spec.input_files] == [f"mDST-275678-{c}-2-7.root" for c in (11001, 11002, 11003)]
    assert spec.input_files[0].dataset == "P09/mDST.chunks" and spec.input_files[0].ddm_endpoint == "EOS"
    assert spec.output_files[0].lfn == "mDST-275678-2-7.root" and spec.output_files[0].dblock == "P09/mDST"
    assert next_jobs(_with(state, merges, "running"), TASK) == []
    state = _with(state, merges, "finished")
    (check,) = next_jobs(state, TASK)
    assert check["processingType"] == "xcheck" and "--chunk-events 50,50,50" in check["jobPars"]
    JobSpec.from_panda({**check, "PandaID": 2})
    assert chain_columns(_with(state, [check], "running"))["cross_checked"] == "running"
    failed = RunState(state.run, [*state.jobs, JobRow("failed", "xcheck", check, error_diag="run 275678: events")])
    assert next_jobs(failed, TASK) == [] and run_status(failed).startswith("manual check: run 275678")
    state = _with(state, [check], "finished")
    second = next_jobs(state, TASK)
    assert sorted(j["processingType"] for j in second) == ["merge_dump", "merge_hist"]
    state = _with(state, second, "finished")
    (dump_check,) = next_jobs(state, TASK)
    assert "--kind dump" in dump_check["jobPars"] and "--chunk-events 5,5,5" in dump_check["jobPars"]
    state = _with(state, [dump_check], "finished")
    assert next_jobs(state, TASK) == [] and run_status(state) == "done"
    assert chain_columns(state)["dump_cross_checked"] == "passed"


def test_ddd_runs_merge_dumps_only() -> None:
    rows = [
        JobRow("finished", "ddd", {"_chunk": c}, {f"evtdump2-{c}-275678.raw": {"fsize": 100, "nevents": 4}})
        for c in (1, 2)
    ]
    jobs = next_jobs(RunState(275678, rows), TASK)
    assert [j["processingType"] for j in jobs] == ["merge_dump"]


@pytest.mark.parametrize("bad", [{"kind": "x"}])
def test_planner_rejects_unknown_kind(bad: dict) -> None:
    with pytest.raises(ValueError, match="unknown merge kind"):
        plan_merges([], bad["kind"], OPTS)
