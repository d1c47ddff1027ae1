"""The COMPASS experiment plug-in: everything the pilot knows about COMPASS payloads.

Like PanDA pilot3's user plug-ins, this module is the only place with experiment
specifics: how to turn a job into a command and environment, which lines of the
payload's output mean success, failure (with the codes the old COMPASS pilot used)
and the event count, and where inputs come from and outputs go.

Two kinds of transformation are understood:

- the demo ones (``compass-demo-reco``, …): a Python stand-in for CORAL that this
  package ships, so the whole chain runs on any machine;
- anything else is a ProdSys payload: a transformation the site config trusts
  (see :mod:`compass_pilot.trusted`) with ``jobPars`` as its argv — never through a
  shell — and the environment CORAL's wrapper scripts expect (TMPRAWFILE, …).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from compass_pilot import trusted
from compass_pilot.errors import BadJobSpec, ErrorCode
from compass_pilot.job import FileSpec, JobSpec
from compass_pilot.payload import PayloadResult
from compass_pilot.sections import PayloadSection

#: job type → marker that must be on stdout for success
END_MARKERS = {
    "reco": "End of Job",
    "merge_mdst": "End of Job",
    "merge_hist": "End of Job",
    "merge_dump": "End of Job",
    "ddd": "End of the decoding!",
    "xcheck": "End of Job",
}

#: (stream, regex, code): first match wins, checked in this order (old COMPASS pilot codes)
FAILURE_PATTERNS: tuple[tuple[str, re.Pattern[str], int], ...] = (
    ("stderr", re.compile(r"No space left on device"), ErrorCode.NO_LOCAL_SPACE),
    ("stdout", re.compile(r"can't connect to CDB database"), ErrorCode.CALIBDB_UNAVAILABLE),
    ("stdout", re.compile(r"A FATAL ERROR APPEARED"), ErrorCode.COMPASS_FATAL_ERROR),
    ("stderr", re.compile(r"core dumped|segmentation violation", re.IGNORECASE), ErrorCode.COMPASS_CORE_DUMP),
    ("stdout", re.compile(r"DaqEventsManager::GetEvent\(\): no event"), ErrorCode.COMPASS_NO_EVENT),
    ("stdout", re.compile(r"Abnormal job termination\. Exception #2"), ErrorCode.COMPASS_EXCEPTION_2),
    ("stdout", re.compile(r"Cannot Allocate", re.IGNORECASE), ErrorCode.COMPASS_CANNOT_ALLOCATE),
    ("stdout", re.compile(r"_LEDinSpills empty string from calib file"), ErrorCode.COMPASS_LED_IN_SPILLS),
    ("stdout", re.compile(r"readCalibration\(\).*bad line"), ErrorCode.COMPASS_BAD_CALIB_LINE),
    ("stderr", re.compile(r"Killed.*coral\.exe"), ErrorCode.COMPASS_KILLED),
    ("stdout", re.compile(r"CORAL exiting with return code -3"), ErrorCode.COMPASS_RETURN_CODE_3),
    ("stderr", re.compile(r"\bAborted\b"), ErrorCode.COMPASS_ABORTED),
    ("stdout", re.compile(r"cross-check FAILED"), ErrorCode.PAYLOAD_FAILED),
)

_EVENTS_PATTERNS = (
    re.compile(r"(\d+) events had been written to miniDST"),
    re.compile(r"Number of events saved to output\s*:\s*(\d+)"),
    re.compile(r"(\d+) events? (?:written|selected) to the event dump"),  # DDD filtering's only count
)

DEMO_TRANSFORMATIONS = {
    "compass-demo-reco": "compass_pilot.demo.reco",
    "compass-demo-ddd": "compass_pilot.demo.ddd",
    "compass-demo-merge": "compass_pilot.demo.merge",
    "compass-demo-xcheck": "compass_pilot.demo.xcheck",
}

_PAR_RE = re.compile(r"^[A-Za-z0-9_.:+=@,-]*$")


def _safe_rel_path(value: str, what: str, panda_id: int) -> str:
    """A storage path from the job spec: relative, no '..', no NUL, no empty parts."""
    if not value or value.startswith("/") or "\x00" in value:
        raise BadJobSpec(what, f"{value!r} is not a relative storage path", panda_id)
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BadJobSpec(what, f"{value!r} contains an empty, '.' or '..' component", panda_id)
    return value


def input_src_path(job: JobSpec, spec: FileSpec) -> str:
    """Where an input lives under the storage input root: ``<realDatasetsIn>/<lfn>``."""
    if not spec.dataset:
        return spec.lfn
    return f"{_safe_rel_path(spec.dataset, 'realDatasetsIn', job.panda_id)}/{spec.lfn}"


def output_dest_path(job: JobSpec, spec: FileSpec) -> str:
    """Where an output goes under the output root: ``<destinationDblock>/<lfn>``."""
    if not spec.dblock:
        return spec.lfn
    return f"{_safe_rel_path(spec.dblock, 'destinationDblock', job.panda_id)}/{spec.lfn}"


def parse_job_pars(job: JobSpec) -> dict[str, str]:
    """``--key value`` pairs of a demo job's jobPars (values restricted to a safe alphabet)."""
    try:
        tokens = shlex.split(job.job_pars)
    except ValueError as exc:
        raise BadJobSpec("jobPars", f"cannot be split: {exc}", job.panda_id) from None
    pars: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        key = tokens[i]
        if not key.startswith("--") or i + 1 >= len(tokens):
            raise BadJobSpec("jobPars", f"expected '--key value' pairs, got {key!r}", job.panda_id)
        value = tokens[i + 1]
        if not _PAR_RE.match(value):
            raise BadJobSpec("jobPars", f"value of {key} has characters outside [A-Za-z0-9_.:+=@,-]", job.panda_id)
        pars[key[2:]] = value
        i += 2
    return pars


def _by_suffix(job: JobSpec) -> dict[str, str]:
    """Map output kinds (mdst, hist, evtdump) to the job's output names by their shape."""
    kinds: dict[str, str] = {}
    for spec in job.output_files:
        name = spec.lfn
        if name.startswith("mDST-"):
            kinds["mdst"] = name
        elif name.startswith("evtdump"):
            kinds["evtdump"] = name
        elif name.endswith(".root"):
            kinds["hist"] = name
    return kinds


def payload_env(
    job: JobSpec, workdir: Path, calib_env: dict[str, str], policy: PayloadSection | None = None
) -> dict[str, str]:
    """The environment a COMPASS payload gets: allow-listed pilot variables, the DB's keys, the job's names.

    Built up, never copied from the pilot: the pilot's tokens and proxy stay out unless
    ``payload.pass_credentials`` says otherwise.
    """
    policy = policy or PayloadSection()
    env = trusted.payload_base_env(policy)
    env.update(trusted.calib_payload_env(calib_env))
    kinds = _by_suffix(job)
    env.update(
        {
            "PANDAID": str(job.panda_id),
            "PANDA_JOB_ATTEMPT": str(job.attempt_nr),
            "PRODSOFT": job.sw_release,
            "COMPASS_PROD_NAME": job.job_name.split("-", 1)[0],
            "TMPRAWFILE": str(workdir / job.input_files[0].lfn) if job.input_files else "",
            "TMPMDSTFILE": kinds.get("mdst", ""),
            "TMPHISTFILE": kinds.get("hist", ""),
            "EVTDUMPFILE": kinds.get("evtdump", ""),
        }
    )
    # Make the pilot's own package importable by the demo payloads wherever they run.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def payload_command(
    job: JobSpec, workdir: Path, calib_env: dict[str, str], policy: PayloadSection | None = None
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a job's payload; raises before anything runs if not allowed.

    ``policy`` is the site's ``payload`` section; without one only the demo
    transformations run.
    """
    policy = policy or PayloadSection()
    for spec in job.output_files:  # a hostile destination fails the job now, not after the payload ran
        output_dest_path(job, spec)
    env = payload_env(job, workdir, calib_env, policy)
    module = DEMO_TRANSFORMATIONS.get(job.transformation)
    if module is None or not policy.allow_demo:
        return trusted.transformation_argv(job, workdir, policy), env
    pars = parse_job_pars(job)
    cmd = [sys.executable, "-m", module, *_ARG_BUILDERS[module](job, workdir, pars)]
    return cmd, env


def _need_inputs(job: JobSpec) -> None:
    if not job.input_files:
        raise BadJobSpec("inFiles", f"a {job.job_type or 'demo'} job needs input files", job.panda_id)
    if not job.output_files and job.transformation != "compass-demo-xcheck":
        raise BadJobSpec("outFiles", "the job has no output file", job.panda_id)


def _reco_args(job: JobSpec, workdir: Path, pars: dict[str, str]) -> list[str]:
    _need_inputs(job)
    kinds = _by_suffix(job)
    missing = [k for k in ("mdst", "hist", "evtdump") if k not in kinds]
    if missing:
        raise BadJobSpec("outFiles", f"no output for {', '.join(missing)}", job.panda_id)
    args = [
        "--raw",
        str(workdir / job.input_files[0].lfn),
        "--mdst",
        kinds["mdst"],
        "--hist",
        kinds["hist"],
        "--evtdump",
        kinds["evtdump"],
        "--run",
        pars.get("run", "0"),
    ]
    for key in ("inject", "event-time"):
        if key in pars:
            args += [f"--{key}", pars[key]]
    return args


def _ddd_args(job: JobSpec, workdir: Path, pars: dict[str, str]) -> list[str]:
    _need_inputs(job)
    return ["--raw", str(workdir / job.input_files[0].lfn), "--evtdump", job.output_files[0].lfn]


def _merge_args(job: JobSpec, workdir: Path, pars: dict[str, str]) -> list[str]:
    _need_inputs(job)
    return [
        "--kind",
        pars.get("kind", "mdst"),
        "--out",
        job.output_files[0].lfn,
        "--inputs",
        ",".join(f.lfn for f in job.input_files),
    ]


def _xcheck_args(job: JobSpec, workdir: Path, pars: dict[str, str]) -> list[str]:
    _need_inputs(job)
    missing = [k for k in ("kind", "run", "chunks", "chunk-events", "chunk-sizes") if k not in pars]
    if missing:
        raise BadJobSpec("jobPars", f"a cross-check needs --{', --'.join(missing)}", job.panda_id)
    return [
        "--kind",
        pars["kind"],
        "--run",
        pars["run"],
        "--chunks",
        pars["chunks"],
        "--chunk-events",
        pars["chunk-events"],
        "--chunk-sizes",
        pars["chunk-sizes"],
        "--merged",
        ",".join(f.lfn for f in job.input_files),
    ]


_ARG_BUILDERS = {
    "compass_pilot.demo.reco": _reco_args,
    "compass_pilot.demo.ddd": _ddd_args,
    "compass_pilot.demo.merge": _merge_args,
    "compass_pilot.demo.xcheck": _xcheck_args,
}


def check_payload_output(job: JobSpec, stdout: str, stderr: str, result: PayloadResult) -> tuple[int, str] | None:
    """(code, diag) for a failed payload, None for success.

    Known failure patterns win over the bare exit code, because ProdSys routes jobs by
    these codes (manual check for 1235/1236/1237/1243/1245/1247, re-staging for 1255).
    """
    if result.killed_by:
        return result.error()
    streams = {"stdout": stdout, "stderr": stderr}
    for stream, pattern, code in FAILURE_PATTERNS:
        match = pattern.search(streams[stream])
        if match:
            line_start = streams[stream].rfind("\n", 0, match.start()) + 1
            line_end = streams[stream].find("\n", match.end())
            line = streams[stream][line_start : line_end if line_end >= 0 else None].strip()
            return code, f"{stream}: {line[:300]}"
    generic = result.error()
    if generic is not None:
        return generic
    marker = END_MARKERS.get(job.job_type)
    if marker and marker not in stdout:
        return ErrorCode.COMPASS_NO_END_MARKER, f"no '{marker}' on stdout"
    return None


def count_events(job: JobSpec, stdout: str) -> int | None:
    """The event count the payload printed (last match), None if it printed none."""
    for pattern in _EVENTS_PATTERNS:
        matches = pattern.findall(stdout)
        if matches:
            return int(matches[-1])
    return None


_DUMP_EVENTS = re.compile(r"(\d+) events? written to the event dump")


def output_events(job: JobSpec, stdout: str) -> dict[str, int]:
    """Events per output file, for the final report (merging and the cross-check need them)."""
    events = count_events(job, stdout)
    found: dict[str, int] = {}
    if job.job_type in ("reco", "ddd"):
        dumps = _DUMP_EVENTS.findall(stdout)
        for spec in job.output_files:
            if spec.lfn.startswith("evtdump") and dumps:
                found[spec.lfn] = int(dumps[-1])
            elif events is not None and not spec.lfn.startswith("evtdump"):
                found[spec.lfn] = events  # the mDST and the histograms count all events
    elif events is not None and job.output_files:
        found[job.output_files[0].lfn] = events  # a merge job's merged file
    return found


def tail(path: Path, limit: int = 256 * 1024) -> str:
    """The last ``limit`` bytes of a log file as text (payload logs can be huge)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
