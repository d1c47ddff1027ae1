"""Task files → PanDA job dicts, as ProdSys defines them (pure: no I/O, no DB).

A task file names a production (prod, year, period, slot, PHAST version), a job type
and its raw chunks, either as a list of raw paths or as ``runs: {run: [chunk, …]}``.
Each job dict carries the real PanDA field names (see compass_pilot/job.py): the raw
file's directory in ``realDatasetsIn`` (where stage-in finds it) and each output's
directory in ``destinationDblock`` (where stage-out puts it), so the pilot needs no
COMPASS knowledge to move files.  PandaID and jobName are assigned by the dispatcher.
"""

from __future__ import annotations

import re
from typing import Any

from compass_pilot.experiment.naming import (
    ChunkId,
    ProcessingOptions,
    ddd_outputs,
    output_dir,
    parse_raw_name,
    reco_outputs,
)

JOB_TYPES = {"reco": ("compass-demo-reco", 2000), "ddd": ("compass-demo-ddd", 1000)}
_REQUIRED = ("name", "prod", "year", "period", "job_type")
_KNOWN = {
    *_REQUIRED,
    "sw_release",
    "slt",
    "phast",
    "transformation",
    "max_attempts",
    "priority",
    "max_walltime",
    "chunks",
    "runs",
    "extra_pars",
    "inject",
    "chain",
    "core_count",
    "merge_target_bytes",
}
_SAFE = re.compile(r"^[A-Za-z0-9_.:+=@ -]*$")
_WORD = re.compile(r"^[A-Za-z0-9_]+$")


class TaskError(ValueError):
    """A task file that cannot be turned into jobs; names the key."""


def _need(task: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = task.get(key, default)
    if value is None:
        raise TaskError(f"task: missing key {key!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TaskError(f"task: {key!r} must be an integer, got {value!r}")
    if kind is str and not isinstance(value, str | int):
        raise TaskError(f"task: {key!r} must be a string, got {value!r}")
    return str(value) if kind is str else value


def validate_task(task: Any) -> dict[str, Any]:
    """Check a task dict; returns it normalised. Raises TaskError naming the key."""
    if not isinstance(task, dict):
        raise TaskError("task: expected a mapping")
    unknown = set(task) - _KNOWN
    if unknown:
        raise TaskError(f"task: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    for key in _REQUIRED:
        _need(task, key, str if key != "year" else int)
    if task["job_type"] not in JOB_TYPES:
        raise TaskError(f"task: 'job_type' must be one of {', '.join(JOB_TYPES)}, got {task['job_type']!r}")
    for key in ("slt", "phast", "max_attempts", "priority", "max_walltime", "core_count"):
        if key in task:
            _need(task, key, int)
    for key in ("name", "prod", "period", "sw_release", "extra_pars"):
        if key in task and not _SAFE.match(str(task[key])):
            raise TaskError(f"task: {key!r} has characters outside [A-Za-z0-9_.:+=@ -]")
    if ("chunks" in task) == ("runs" in task):
        raise TaskError("task: give exactly one of 'chunks' (raw paths) or 'runs' (run → chunk numbers)")
    if "max_attempts" in task and not 1 <= task["max_attempts"] <= 20:
        raise TaskError("task: 'max_attempts' must be between 1 and 20")
    if "runs" in task and isinstance(task["runs"], dict):
        for run in task["runs"]:
            if isinstance(run, bool) or (not isinstance(run, int) and not str(run).isdigit()):
                raise TaskError(f"task: runs: {run!r} is not a run number (write runs: {{275678: [1, 2]}})")
    inject = task.get("inject")
    # raw file name → failure the demo payload plays; it lands in jobPars, so only plain words pass
    if inject is not None and (
        not isinstance(inject, dict)
        or not all(isinstance(k, str) and isinstance(v, str) and _WORD.match(v) for k, v in inject.items())
    ):
        raise TaskError(
            "task: 'inject' must map raw file names to a failure name (inject: {cdr11001-275678.raw: hang})"
        )
    return task


def task_chunks(task: dict[str, Any]) -> list[ChunkId]:
    """The raw chunks a task covers, in (run, chunk) order."""
    year, period = int(task["year"]), str(task["period"])
    chunks: list[ChunkId] = []
    if "chunks" in task:
        if not isinstance(task["chunks"], list) or not task["chunks"]:
            raise TaskError("task: 'chunks' must be a non-empty list of raw file paths")
        for i, path in enumerate(task["chunks"]):
            if not isinstance(path, str):
                raise TaskError(f"task: chunks[{i}] must be a string")
            expected_dir = f"{year}/raw/{period}"
            directory, _, name = path.rpartition("/")
            if directory != expected_dir:
                raise TaskError(f"task: chunks[{i}] {path!r} is not under {expected_dir}/")
            try:
                run, chunk = parse_raw_name(name)
            except ValueError as exc:
                raise TaskError(f"task: chunks[{i}]: {exc}") from None
            chunks.append(ChunkId(year, period, run, chunk))
    else:
        runs = task["runs"]
        if not isinstance(runs, dict) or not runs:
            raise TaskError("task: 'runs' must map run numbers to lists of chunk numbers")
        for run, numbers in runs.items():
            if not isinstance(numbers, list) or not all(isinstance(n, int) and n >= 0 for n in numbers):
                raise TaskError(f"task: runs[{run}] must be a list of chunk numbers")
            for number in numbers:
                chunks.append(ChunkId(year, period, int(run), number))
    if len({(c.run, c.chunk) for c in chunks}) != len(chunks):
        raise TaskError("task: a chunk is listed twice")
    return sorted(chunks, key=lambda c: (c.run, c.chunk))


def options(task: dict[str, Any]) -> ProcessingOptions:
    return ProcessingOptions(prod=str(task["prod"]), slt=int(task.get("slt", 0)), phast=int(task.get("phast", 0)))


def chunk_job(task: dict[str, Any], chunk: ChunkId, task_id: int) -> dict[str, Any]:
    """One reco / DDD job dict for one raw chunk (PandaID and jobName are added by the dispatcher)."""
    job_type = task["job_type"]
    transformation, default_priority = JOB_TYPES[job_type]
    o = options(task)
    outputs = reco_outputs(chunk.run, chunk.chunk, o) if job_type == "reco" else ddd_outputs(chunk.run, chunk.chunk, o)
    kinds = list(outputs)  # the log is last
    names = [outputs[k] for k in kinds]
    dirs = [output_dir(k, o) for k in kinds]
    pars = (
        f"--prod {o.prod} --year {chunk.year} --period {chunk.period} --run {chunk.run} "
        f"--chunk {chunk.chunk} --slt {o.slt} --phast {o.phast}"
    )
    inject = (task.get("inject") or {}).get(chunk.raw_name)
    if inject:
        pars += f" --inject {inject}"
    if task.get("extra_pars"):
        pars += f" {task['extra_pars']}"
    walltime = int(task.get("max_walltime", 18 * 3600))
    raw_dir = chunk.raw_path.rpartition("/")[0]
    return {
        "taskID": task_id,
        "jobsetID": task_id,
        "attemptNr": 1,
        "transformation": str(task.get("transformation", transformation)),
        "jobPars": pars,
        "prodSourceLabel": "managed",
        "processingType": job_type,
        "swRelease": str(task.get("sw_release", f"slt{o.slt}-phast{o.phast}")),
        "inFiles": chunk.raw_name,
        "realDatasetsIn": raw_dir,
        "dispatchDblock": raw_dir,
        "scopeIn": "compass",
        "GUID": "",
        "outFiles": ",".join(names),
        "logFile": names[-1],
        "destinationDblock": ",".join(dirs),
        "realDatasets": ",".join(dirs),
        "scopeOut": ",".join("compass" for _ in names[:-1]),
        "scopeLog": "compass",
        "maxCpuCount": walltime,
        "maxWalltime": walltime,
        "coreCount": int(task.get("core_count", 1)),
        "minRamCount": 2000,
        "maxDiskCount": 0,
        "currentPriority": int(task.get("priority", default_priority)),
        "destinationSE": "EOS",
        "cmtConfig": "",
        # not sent to pilots: the dispatcher's own bookkeeping
        "_run": chunk.run,
        "_chunk": chunk.chunk,
        "_year": chunk.year,
        "_prod": o.prod,
        "_slt": o.slt,
        "_phast": o.phast,
    }


def build_jobs(task: dict[str, Any], task_id: int) -> list[dict[str, Any]]:
    """All job dicts of a validated task."""
    validate_task(task)
    return [chunk_job(task, chunk, task_id) for chunk in task_chunks(task)]
