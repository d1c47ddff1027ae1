"""The job set file: what the MOM-node daemon hands to the node agents of one submission.

The compute nodes have no network to PanDA, so the agents must find everything in one
file on the shared file system: per node, the jobs with their slot, the raw PanDA job
dict (re-validated on read, so agent and daemon agree on what a job is) and its work
dir (already staged in by the daemon); the site's ``calibdb`` and ``grid`` sections
(how to start the node's calibration DB, payload grace and sampling); and the shared
reports directory the agents write results to.

It is written atomically (temp file in the same directory, fsync, rename): an agent
started by a fast batch system never reads half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compass_pilot.atomic import atomic_write_text  # the one helper; node agents import it from here
from compass_pilot.errors import BadJobSpec, ConfigError
from compass_pilot.job import JobSpec
from compass_pilot.sections import CalibDBSection, GridSection, PayloadSection, build_section
from hpc.notify import NotifyTarget

if TYPE_CHECKING:  # node agents read job sets, only the daemon writes them
    from hpc.packing import Submission

VERSION = 1


@dataclass(frozen=True)
class NodeJob:
    """One job as an agent runs it."""

    panda_id: int
    slot: int
    workdir: str
    job: JobSpec


@dataclass
class JobSet:
    """A parsed job set file."""

    path: str
    queue: str
    nodes: int
    slots_per_node: int
    walltime: int
    shared_dir: str
    reports_dir: str
    calibdb: CalibDBSection
    grid: GridSection
    kill_check_interval: float
    payload: PayloadSection = field(default_factory=PayloadSection)  # what the node may run
    node_jobs: dict[int, list[NodeJob]] = field(default_factory=dict)  # node → jobs by slot
    report_files: dict[str, str] = field(default_factory=dict)  # messenger's per-job file names ({} = defaults)
    notify: NotifyTarget | None = None  # where the agents send wake-ups (None = the daemon polls only)
    #: fsync each job's outcome files.  The daemon writes False: it reads only the attributes file (a
    #: torn one after a node crash reads as "no outcome", so the job fails as lost, still one final) and
    #: makes the outputs durable itself before it reports.  Harvester's messenger keeps True: it trusts
    #: the outputs dump beside the attributes, and the order of the three files must survive a crash.
    durable_outcomes: bool = True
    #: write each job's outcome as ONE file, the attributes, with the outputs' event counts and the
    #: (size, adler32) of every file to stage out in it (``outputEvents``, ``outputFiles``:
    #: :func:`harvester_plugins.jobfiles.write_outcome`).  The daemon writes True:
    #: it reads nothing else, so the outputs dump and the job report were two files created, renamed
    #: and deleted per job for no reader.  Harvester's messenger reads all three: False.
    lean_outcomes: bool = False

    def jobs_of(self, node: int) -> list[NodeJob]:
        return self.node_jobs.get(node, [])


def write_jobset(
    path: str | os.PathLike[str],
    submission: Submission,
    site_config_dict: dict[str, Any],
    workdirs: dict[int, str],
    shared_dir: str,
    *,
    report_files: dict[str, str] | None = None,
    notify: NotifyTarget | None = None,
    durable_outcomes: bool = True,
    lean_outcomes: bool = False,
) -> Path:
    """Write the job set of ``submission`` atomically; every job needs a work dir.

    ``report_files``: the per-job outcome file names a Harvester messenger section
    configures (``harvester_plugins.jobfiles``); omitted = Harvester's defaults.
    ``notify``: where the agents send their wake-ups (:mod:`hpc.notify`); it holds the
    submission's key, so the file is written 0600 like everything in the shared dir.
    ``durable_outcomes``, ``lean_outcomes``: see :attr:`JobSet.durable_outcomes`, :attr:`JobSet.lean_outcomes`.
    """
    missing = [j.panda_id for j in submission.jobs if j.panda_id not in workdirs]
    if missing:
        raise ValueError(f"workdirs: no work dir for PandaID(s) {missing}")
    for key in ("calibdb", "grid"):
        if not isinstance(site_config_dict.get(key), dict):
            raise ValueError(f"site_config_dict: missing the {key!r} section")
    nodes: list[dict[str, Any]] = [{"node": n, "jobs": []} for n in range(submission.nodes)]
    for placement, job in zip(submission.placements, submission.jobs, strict=True):
        nodes[placement.node]["jobs"].append(
            {
                "panda_id": job.panda_id,
                "slot": placement.slot,
                "workdir": str(workdirs[job.panda_id]),
                "job": job.raw,
            }
        )
    hpc = site_config_dict.get("hpc") or {}
    data = {
        "version": VERSION,
        "queue": submission.queue,
        "nodes": submission.nodes,
        "slots_per_node": submission.slots_per_node,
        "walltime": submission.walltime,
        "shared_dir": str(shared_dir),
        "reports_dir": str(Path(shared_dir) / "reports"),
        "calibdb": site_config_dict["calibdb"],
        "grid": site_config_dict["grid"],
        "payload": site_config_dict.get("payload") or {},
        "kill_check_interval": float(hpc.get("poll_interval", 30.0)),
        "node_jobs": nodes,
        "report_files": dict(report_files or {}),
        "notify": notify.to_dict() if notify is not None else {},
        "durable_outcomes": bool(durable_outcomes),
        "lean_outcomes": bool(lean_outcomes),
    }
    target = Path(path)
    # compact: json's C encoder; with indent it falls back to pure Python (0.3 s instead of 0.13 s for 512 jobs,
    # on the way from the fetch to the batch job)
    atomic_write_text(target, json.dumps(data, sort_keys=True))
    return target


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ValueError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{where}: key {key!r} has the wrong type ({type(value).__name__})")
    return value


def _report_files(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{where}: key 'report_files' must map file roles to names")
    for name in value.values():
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{where}: report file name {name!r} must be a plain file name")
    return dict(value)


def read_jobset(path: str | os.PathLike[str], *, only_node: int | None = None) -> JobSet:
    """Read and validate a job set file; ``ValueError`` names the file and the bad key.

    ``only_node``: a node agent needs only its own node's jobs.  Every entry's slot and
    PandaID are still checked, but only that node's job specs are parsed (and kept):
    16 agents parsing all 512 specs cost a second of CPU at a submission's start, and a
    bad spec now stops only the node it belongs to.
    """
    where = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            st = os.fstat(handle.fileno())
            text = handle.read()
    except OSError as exc:
        raise ValueError(f"{where}: cannot read job set: {exc.strerror}") from None
    # It says what the node may run (its "payload" section): on a shared file system only a
    # file our own account wrote, and nobody else can rewrite, is trusted.
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ValueError(
            f"{where}: refusing a job set owned by uid {st.st_uid} with mode {st.st_mode & 0o777:04o} "
            "(must be ours and not group/world-writable)"
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object")
    if data.get("version") != VERSION:
        raise ValueError(f"{where}: unsupported job set version {data.get('version')!r} (expected {VERSION})")
    try:
        calibdb = build_section(CalibDBSection, _need(data, "calibdb", dict, where), "calibdb", where)
        grid = build_section(GridSection, _need(data, "grid", dict, where), "grid", where)
        payload = build_section(PayloadSection, data.get("payload") or {}, "payload", where)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    jobset = JobSet(
        path=where,
        queue=_need(data, "queue", str, where),
        nodes=_need(data, "nodes", int, where),
        slots_per_node=_need(data, "slots_per_node", int, where),
        walltime=_need(data, "walltime", int, where),
        shared_dir=_need(data, "shared_dir", str, where),
        reports_dir=_need(data, "reports_dir", str, where),
        calibdb=calibdb,
        grid=grid,
        payload=payload,
        kill_check_interval=float(_need(data, "kill_check_interval", (int, float), where)),
        report_files=_report_files(data.get("report_files", {}), where),
        notify=NotifyTarget.from_dict(data.get("notify")),
        durable_outcomes=_need(data, "durable_outcomes", bool, where) if "durable_outcomes" in data else True,
        lean_outcomes=_need(data, "lean_outcomes", bool, where) if "lean_outcomes" in data else False,
    )
    seen: set[int] = set()
    for i, node_entry in enumerate(_need(data, "node_jobs", list, where)):
        at = f"{where}: node_jobs[{i}]"
        if not isinstance(node_entry, dict):
            raise ValueError(f"{at}: expected an object")
        node = _need(node_entry, "node", int, at)
        if not 0 <= node < jobset.nodes:
            raise ValueError(f"{at}: node {node} outside 0..{jobset.nodes - 1}")
        jobs: list[NodeJob] = []
        skip = only_node is not None and node != only_node  # another node's: checked, not parsed
        for k, entry in enumerate(_need(node_entry, "jobs", list, at)):
            jat = f"{at}.jobs[{k}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{jat}: expected an object")
            slot = _need(entry, "slot", int, jat)
            if not 0 <= slot < jobset.slots_per_node:
                raise ValueError(f"{jat}: slot {slot} outside 0..{jobset.slots_per_node - 1}")
            panda_id = _need(entry, "panda_id", int, jat)
            if panda_id in seen:
                raise ValueError(f"{jat}: PandaID {panda_id} appears twice in the job set")
            seen.add(panda_id)
            if skip:
                continue
            try:
                spec = JobSpec.from_panda(_need(entry, "job", dict, jat))
            except BadJobSpec as exc:
                raise ValueError(f"{jat}: {exc.diag}") from None
            if spec.panda_id != panda_id:
                raise ValueError(f"{jat}: panda_id {panda_id} differs from the job's PandaID {spec.panda_id}")
            jobs.append(NodeJob(spec.panda_id, slot, _need(entry, "workdir", str, jat), spec))
        if skip:
            continue
        jobs.sort(key=lambda j: j.slot)
        jobset.node_jobs[node] = jobs
    return jobset
