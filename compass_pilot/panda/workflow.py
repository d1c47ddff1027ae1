"""The ProdSys chain of a run, as pure rules: run state → jobs to define next.

reco (or DDD) chunk jobs → when every one of the run is finished: mDST merge jobs →
when those are finished: the mDST cross-check → if it passes: histogram and
event-dump merge jobs → when the dump merges are finished: the event-dump
cross-check.  A failed cross-check stops the run's chain ("manual check").  DDD runs
have no mDST: their chain is event-dump merging and its cross-check.

``next_jobs`` is pure and tested on its own; :func:`install` hooks it into the
embedded dispatcher, where it runs inside the transaction of the final update that
completes a step — so a step's jobs are defined exactly once.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from compass_pilot.experiment.merging import ChunkOutput, plan_merges
from compass_pilot.experiment.naming import ProcessingOptions, merge_log, output_dir

CHUNK_TYPES = ("reco", "ddd")
MERGE_PRIORITY = 5000
#: output kind of a chunk job → (merge kind, merge job type, chunk output dir key, merged dir key)
STEPS = {
    "mdst": ("merge_mdst", "mdst", "merged_mdst"),
    "hist": ("merge_hist", "hist", "merged_hist"),
    "dump": ("merge_dump", "evtdump", "merged_dump"),
}


@dataclass
class JobRow:
    """What the rules need of one dispatcher job."""

    status: str
    job_type: str
    spec: dict[str, Any]
    output_report: dict[str, dict[str, Any]] = field(default_factory=dict)
    error_diag: str = ""

    @property
    def kind(self) -> str:
        return str(self.spec.get("_kind", ""))


@dataclass
class RunState:
    run: int
    jobs: list[JobRow]

    def of_type(self, job_type: str, kind: str | None = None) -> list[JobRow]:
        return [j for j in self.jobs if j.job_type == job_type and (kind is None or j.kind == kind)]

    @property
    def chunk_jobs(self) -> list[JobRow]:
        return [j for j in self.jobs if j.job_type in CHUNK_TYPES]


def _all_finished(jobs: list[JobRow]) -> bool:
    return bool(jobs) and all(j.status == "finished" for j in jobs)


def _chunk_outputs(state: RunState, kind: str) -> list[ChunkOutput]:
    """The chunk files of one kind, with sizes and events from the chunk jobs' final reports."""
    prefix = {"mdst": "mDST-", "dump": "evtdump", "hist": ""}[kind]
    out = []
    for job in state.chunk_jobs:
        for lfn, entry in job.output_report.items():
            if lfn.endswith(".job.log.tgz"):
                continue
            is_kind = lfn.startswith(prefix) if prefix else not lfn.startswith(("mDST-", "evtdump"))
            if is_kind:
                events = int(entry.get("nevents") or 0)
                out.append(
                    ChunkOutput(state.run, int(job.spec.get("_chunk", 0)), lfn, int(entry.get("fsize", 0)), events)
                )
    return out


def _opts(task: dict[str, Any]) -> ProcessingOptions:
    return ProcessingOptions(str(task["prod"]), int(task.get("slt", 0)), int(task.get("phast", 0)))


def _job(
    task: dict[str, Any],
    run: int,
    job_type: str,
    kind: str,
    transformation: str,
    pars: str,
    inputs: list[tuple[str, str]],
    outputs: list[tuple[str, str]],
    log_name: str,
) -> dict[str, Any]:
    """A chain job dict with real PanDA fields; inputs/outputs are (lfn, storage dir)."""
    opts = _opts(task)
    outs = [*outputs, (log_name, output_dir("log", opts))]
    walltime = int(task.get("max_walltime", 6 * 3600))
    return {
        "taskID": task.get("_task_id"),
        "jobsetID": task.get("_task_id"),
        "attemptNr": 1,
        "jobName": f"{opts.prod}-{task['year']}--{run}-{job_type}-{kind}",
        "transformation": transformation,
        "jobPars": pars,
        "prodSourceLabel": "managed",
        "processingType": job_type,
        "swRelease": str(task.get("sw_release", "")),
        "inFiles": ",".join(lfn for lfn, _ in inputs),
        "realDatasetsIn": ",".join(d for _, d in inputs),
        "dispatchDblock": ",".join(d for _, d in inputs),
        "ddmEndPointIn": ",".join("EOS" for _ in inputs),  # outputs of earlier jobs: read from the output storage
        "scopeIn": ",".join("compass" for _ in inputs),
        "outFiles": ",".join(lfn for lfn, _ in outs),
        "logFile": log_name,
        "destinationDblock": ",".join(d for _, d in outs),
        "realDatasets": ",".join(d for _, d in outs),
        "scopeOut": ",".join("compass" for _ in outputs),
        "scopeLog": "compass",
        "maxCpuCount": walltime,
        "maxWalltime": walltime,
        "coreCount": 1,
        "currentPriority": MERGE_PRIORITY,
        "destinationSE": "EOS",
        "_run": run,
        "_kind": kind,
    }


def merge_jobs(state: RunState, task: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    job_type, chunk_dir_key, merged_dir_key = STEPS[kind]
    opts = _opts(task)
    target = task.get("merge_target_bytes")
    jobs = []
    for plan in plan_merges(_chunk_outputs(state, kind), kind, opts, target_bytes=target):
        log_name = merge_log(f"merge{kind}", state.run, opts, plan.part)
        jobs.append(
            _job(
                task,
                state.run,
                job_type,
                kind,
                "compass-demo-merge",
                f"--kind {kind} --run {state.run}",
                [(c.lfn, output_dir(chunk_dir_key, opts)) for c in plan.inputs],
                [(plan.output, output_dir(merged_dir_key, opts))],
                log_name,
            )
        )
    return jobs


def xcheck_job(state: RunState, task: dict[str, Any], kind: str) -> dict[str, Any]:
    job_type, _, merged_dir_key = STEPS[kind]
    opts = _opts(task)
    chunks = sorted(_chunk_outputs(state, kind), key=lambda c: c.chunk)
    merged = [lfn for j in state.of_type(job_type) for lfn in j.spec["outFiles"].split(",")[:-1]]
    pars = (
        f"--kind {kind} --run {state.run} --chunks {','.join(c.lfn for c in chunks)}"
        f" --chunk-events {','.join(str(c.events) for c in chunks)}"
        f" --chunk-sizes {','.join(str(c.size) for c in chunks)}"
    )
    return _job(
        task,
        state.run,
        "xcheck",
        kind,
        "compass-demo-xcheck",
        pars,
        [(lfn, output_dir(merged_dir_key, opts)) for lfn in merged],
        [],
        merge_log(f"xcheck{kind}", state.run, opts),
    )


def next_jobs(state: RunState, task: dict[str, Any]) -> list[dict[str, Any]]:
    """The jobs to define now for this run (empty while a step is still running)."""
    if not _all_finished(state.chunk_jobs):
        return []
    has_mdst = any(j.job_type == "reco" for j in state.chunk_jobs)
    if has_mdst:
        mdst_merges = state.of_type("merge_mdst")
        if not mdst_merges:
            return merge_jobs(state, task, "mdst")
        if not _all_finished(mdst_merges):
            return []
        mdst_check = state.of_type("xcheck", "mdst")
        if not mdst_check:
            return [xcheck_job(state, task, "mdst")]
        if mdst_check[0].status != "finished":
            return []  # running, or failed: the chain stops for a manual check
        if not state.of_type("merge_hist") and not state.of_type("merge_dump"):
            return merge_jobs(state, task, "hist") + merge_jobs(state, task, "dump")
    elif not state.of_type("merge_dump"):
        return merge_jobs(state, task, "dump")
    dump_merges = state.of_type("merge_dump")
    if _all_finished(dump_merges) and not state.of_type("xcheck", "dump"):
        return [xcheck_job(state, task, "dump")]
    return []


def _step(jobs: list[JobRow]) -> str:
    if not jobs:
        return "-"
    done = sum(1 for j in jobs if j.status == "finished")
    failed = sum(1 for j in jobs if j.status == "failed")
    return f"{done}/{len(jobs)}" + (f" ({failed} failed)" if failed else "")


def _check(jobs: list[JobRow]) -> str:
    if not jobs:
        return "pending"
    return {"finished": "passed", "failed": "failed"}.get(jobs[0].status, "running")


def chain_columns(state: RunState) -> dict[str, str]:
    """The chain's columns of the summary page's per-run table."""
    columns = {
        "merging": _step(state.of_type("merge_mdst")),
        "cross_checked": _check(state.of_type("xcheck", "mdst")),
        "hist_merging": _step(state.of_type("merge_hist")),
        "dump_merging": _step(state.of_type("merge_dump")),
        "dump_cross_checked": _check(state.of_type("xcheck", "dump")),
    }
    if not any(j.job_type == "reco" for j in state.chunk_jobs):
        columns["cross_checked"] = columns["dump_cross_checked"]  # a DDD run has only the dump check
    columns["status"] = run_status(state)
    return columns


def run_status(state: RunState) -> str:
    for check in state.of_type("xcheck"):
        if check.status == "failed":
            return f"manual check: {check.error_diag[:160]}"
    if any(j.status == "failed" for j in state.chunk_jobs):
        return "chunks failed"
    if state.of_type("xcheck", "dump") and state.of_type("xcheck", "dump")[0].status == "finished":
        return "done"
    return "in progress"


# -- glue to the embedded dispatcher --------------------------------------------------------
def _run_state(conn: sqlite3.Connection, task_id: int, run: int) -> RunState:
    rows = conn.execute(
        "SELECT status, job_type, spec, output_report, error_diag FROM jobs WHERE task_id = ? AND run = ?",
        (task_id, run),
    ).fetchall()
    jobs = []
    for status, job_type, spec, report, diag in rows:
        try:
            output_report = json.loads(report) if report else {}
        except ValueError:
            output_report = {}
        jobs.append(JobRow(status, job_type or "", json.loads(spec), output_report, diag or ""))
    return RunState(run, jobs)


def _task(conn: sqlite3.Connection, task_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT spec FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    if row is None:
        return None
    task = json.loads(row[0])
    task["_task_id"] = task_id
    return task


def install(store: Any) -> None:
    """Run the chain rules in the dispatcher: after each final update, and on the summary page.

    A task's spec never changes once defined, so it is parsed once and remembered — as
    ``None`` for a task without ``chain``, whose final updates then cost one primary-key
    lookup here instead of parsing a task spec that lists every chunk.
    """
    from compass_pilot.panda.store import insert_jobs

    chained: dict[int, dict[str, Any] | None] = {}  # task_id → parsed spec if the task has a chain

    def chained_task(conn: sqlite3.Connection, task_id: int) -> dict[str, Any] | None:
        if task_id not in chained:
            task = _task(conn, task_id)
            chained[task_id] = task if task and task.get("chain") else None
        return chained[task_id]

    def on_final(conn: sqlite3.Connection, job: sqlite3.Row) -> None:
        task_id, run = job["task_id"], job["run"]  # the store's row of the job just ended
        if task_id is None or run is None:
            return
        task = chained_task(conn, task_id)
        if task is None:
            return
        new = next_jobs(_run_state(conn, task_id, run), task)
        if new:
            insert_jobs(conn, new, int(task.get("max_attempts", 5)))

    def extend(store: Any, runs: list[dict[str, Any]]) -> None:
        with store.read() as conn:
            task_ids = [r[0] for r in conn.execute("SELECT task_id FROM tasks").fetchall()]
            if not any(chained_task(conn, task_id) for task_id in task_ids):
                return
            for row in runs:
                ids = conn.execute("SELECT DISTINCT task_id FROM jobs WHERE run = ?", (row["run"],)).fetchall()
                for (task_id,) in ids:
                    if task_id is not None and chained_task(conn, task_id):
                        row.update(chain_columns(_run_state(conn, task_id, row["run"])))

    store.on_final.append(on_final)
    store.summary_extensions.append(extend)
