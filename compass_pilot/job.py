"""Job specifications as PanDA sends them, and the report that goes back.

The PanDA server hands a pilot one flat dict per job (see panda-server
``jobdispatcher/Protocol.py`` ``Response.appendJob``): per-file attributes are
comma-joined strings that must line up index by index.  ``inFiles``, ``GUID``,
``fsize``, ``checksum``, ``scopeIn``, ``dispatchDblock``, ``realDatasetsIn`` and
``ddmEndPointIn`` describe inputs; ``outFiles`` lists the outputs *and* the log
file (``logFile`` names which one is the log), aligned with ``destinationDblock``,
``realDatasets``, ``fileDestinationSE`` and ``ddmEndPointOut``; ``scopeOut`` covers the
outputs without the log, whose scope is ``scopeLog``.

Everything here is pure: parsing, validation, and building the report.  A job dict
that cannot be run raises :class:`BadJobSpec` naming the field, so the pilot can
fail that job with a code instead of crashing.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from compass_pilot.errors import BadJobSpec

#: States a pilot may send (panda-server api/v1 ``VALID_JOB_STATES``).
PILOT_STATES = ("starting", "running", "transferring", "holding", "finished", "failed")
FINAL_STATES = ("finished", "failed")

_MAX_NAME = 255
_CHECKSUM_RE = re.compile(r"^(ad:[0-9a-fA-F]{1,8}|md5:[0-9a-fA-F]{32}|[0-9a-fA-F]{8}|[0-9a-fA-F]{32})$")
_NULLS = ("", "NULL", "None", None)


def check_file_name(name: Any, field_name: str, panda_id: int | None = None) -> str:
    """Refuse names that could leave the work dir or be read as an option.

    A logical file name becomes a path under the job's work dir and an argument of
    a copy command, so ``/``, ``..``, NUL, whitespace, control characters and a
    leading ``-`` are all refused.
    """
    if not isinstance(name, str) or not name:
        raise BadJobSpec(field_name, f"file name must be a non-empty string, got {name!r}", panda_id)
    if len(name) > _MAX_NAME:
        raise BadJobSpec(field_name, f"file name longer than {_MAX_NAME} characters", panda_id)
    if "/" in name or "\\" in name:
        raise BadJobSpec(field_name, f"file name {name!r} contains a path separator", panda_id)
    if name in (".", "..") or ".." in name:
        raise BadJobSpec(field_name, f"file name {name!r} contains '..'", panda_id)
    if "\x00" in name:
        raise BadJobSpec(field_name, "file name contains a NUL byte", panda_id)
    # printable ASCII without a space is the usual name: two C calls instead of a loop per character
    clean = name.isascii() and name.isprintable() and " " not in name
    if not clean and any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise BadJobSpec(field_name, f"file name {name!r} contains whitespace or a control character", panda_id)
    if name.startswith("-"):
        raise BadJobSpec(field_name, f"file name {name!r} starts with '-'", panda_id)
    return name


def normalise_checksum(value: str, field_name: str, panda_id: int | None) -> str:
    """PanDA checksums are ``ad:xxxxxxxx`` (adler32) or ``md5:…``; bare hex is adler32/md5 by length."""
    if value in _NULLS:
        return ""
    if not _CHECKSUM_RE.match(value):
        raise BadJobSpec(field_name, f"checksum {value!r} is neither ad:<adler32> nor md5:<md5>", panda_id)
    if ":" in value:
        kind, digest = value.split(":", 1)
        return f"{kind}:{digest.lower().zfill(8) if kind == 'ad' else digest.lower()}"
    return f"ad:{value.lower()}" if len(value) == 8 else f"md5:{value.lower()}"


@dataclass(frozen=True)
class FileSpec:
    """One input, output or log file of a job."""

    lfn: str
    kind: str  # "input", "output" or "log"
    scope: str = ""
    guid: str = ""
    fsize: int = 0
    checksum: str = ""  # "ad:xxxxxxxx" or "md5:…" or "" when unknown
    dataset: str = ""
    dblock: str = ""  # dispatchDblock for inputs, destinationDblock for outputs
    ddm_endpoint: str = ""

    @property
    def adler32(self) -> str:
        """The adler32 digest without prefix, or '' if the checksum is not adler32."""
        return self.checksum[3:] if self.checksum.startswith("ad:") else ""


@dataclass(frozen=True)
class JobSpec:
    """A validated PanDA job, as the pilot runs it."""

    panda_id: int
    attempt_nr: int
    job_name: str
    transformation: str
    job_pars: str
    prod_source_label: str
    processing_type: str
    sw_release: str
    task_id: int | None
    jobset_id: int | None
    core_count: int
    max_cpu_count: int
    max_walltime: int
    min_ram_count: int
    max_disk_count: int
    current_priority: int
    destination_se: str
    input_files: tuple[FileSpec, ...]
    output_files: tuple[FileSpec, ...]
    log_file: FileSpec | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def job_type(self) -> str:
        """COMPASS job type (reco, ddd, merge_mdst, …): ProdSys sets PanDA's processingType."""
        return self.processing_type

    @property
    def walltime_limit(self) -> int:
        """Seconds the payload may run: maxWalltime, else maxCpuCount, else 0 (no limit)."""
        return self.max_walltime or self.max_cpu_count or 0

    @classmethod
    def from_panda(cls, data: Any) -> JobSpec:
        """Parse and validate one job dict from getJob / acquire_jobs."""
        return parse_job(data)


def _split(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value in _NULLS:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    if not isinstance(value, str):
        raise BadJobSpec(key, f"expected a comma-separated string, got {type(value).__name__}")
    return [v.strip() for v in value.split(",")]


def _int(data: dict[str, Any], key: str, default: int | None = None, panda_id: int | None = None) -> int:
    value = data.get(key)
    if value in _NULLS:
        if default is None:
            raise BadJobSpec(key, "missing", panda_id)
        return default
    if isinstance(value, bool):
        raise BadJobSpec(key, f"expected an integer, got {value!r}", panda_id)
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise BadJobSpec(key, f"expected an integer, got {value!r}", panda_id) from None
    if number < 0:
        raise BadJobSpec(key, f"must not be negative, got {number}", panda_id)
    return number


def _str(data: dict[str, Any], key: str, default: str | None = None, panda_id: int | None = None) -> str:
    value = data.get(key)
    if value in _NULLS:
        if default is None:
            raise BadJobSpec(key, "missing", panda_id)
        return default
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise BadJobSpec(key, f"expected a string, got {type(value).__name__}", panda_id)
    text = str(value)
    if "\x00" in text:
        raise BadJobSpec(key, "contains a NUL byte", panda_id)
    return text


def _aligned(data: dict[str, Any], keys: list[str], n: int, panda_id: int) -> dict[str, list[str]]:
    """Per-file lists that must have n entries (or be absent, meaning all empty)."""
    out: dict[str, list[str]] = {}
    for key in keys:
        values = _split(data, key)
        if not values:
            values = [""] * n
        elif len(values) != n:
            raise BadJobSpec(key, f"has {len(values)} entries but there are {n} files", panda_id)
        out[key] = ["" if v in _NULLS else v for v in values]
    return out


def parse_job(data: Any) -> JobSpec:
    """Validate a PanDA job dict and build a :class:`JobSpec`.

    Raises :class:`BadJobSpec` with the field name for anything missing, ill-typed,
    misaligned or hostile; ``panda_id`` is set on the exception when known so the
    caller can still report that job as failed.
    """
    if not isinstance(data, dict):
        raise BadJobSpec("<job>", f"expected a JSON object, got {type(data).__name__}")
    panda_id = _int(data, "PandaID")
    if panda_id == 0:
        raise BadJobSpec("PandaID", "must be positive", None)
    attempt_nr = _int(data, "attemptNr", 0, panda_id)

    in_names = _split(data, "inFiles")
    for name in in_names:
        check_file_name(name, "inFiles", panda_id)
    if len(set(in_names)) != len(in_names):
        raise BadJobSpec("inFiles", "lists a file twice", panda_id)
    n_in = len(in_names)
    ins = _aligned(
        data,
        ["GUID", "fsize", "checksum", "scopeIn", "dispatchDblock", "realDatasetsIn", "ddmEndPointIn"],
        n_in,
        panda_id,
    )
    inputs = []
    for i, name in enumerate(in_names):
        size_text = ins["fsize"][i]
        try:
            size = int(size_text) if size_text else 0
        except ValueError:
            raise BadJobSpec("fsize", f"entry {i} is not an integer: {size_text!r}", panda_id) from None
        if size < 0:
            raise BadJobSpec("fsize", f"entry {i} is negative", panda_id)
        inputs.append(
            FileSpec(
                lfn=name,
                kind="input",
                scope=ins["scopeIn"][i],
                guid=ins["GUID"][i],
                fsize=size,
                checksum=normalise_checksum(ins["checksum"][i], "checksum", panda_id),
                dataset=ins["realDatasetsIn"][i],
                dblock=ins["dispatchDblock"][i],
                ddm_endpoint=ins["ddmEndPointIn"][i],
            )
        )

    out_names = _split(data, "outFiles")
    for name in out_names:
        check_file_name(name, "outFiles", panda_id)
    if len(set(out_names)) != len(out_names):
        raise BadJobSpec("outFiles", "lists a file twice", panda_id)
    if set(out_names) & set(in_names):
        raise BadJobSpec("outFiles", "an output file has the name of an input file", panda_id)
    log_name = _str(data, "logFile", "", panda_id)
    if log_name:
        check_file_name(log_name, "logFile", panda_id)
        if log_name not in out_names:
            raise BadJobSpec("logFile", f"{log_name!r} is not listed in outFiles", panda_id)
    n_out = len(out_names)
    outs = _aligned(data, ["destinationDblock", "realDatasets", "fileDestinationSE", "ddmEndPointOut"], n_out, panda_id)
    scopes_out = _split(data, "scopeOut")
    n_plain = n_out - (1 if log_name else 0)
    if scopes_out and len(scopes_out) != n_plain:
        raise BadJobSpec("scopeOut", f"has {len(scopes_out)} entries but there are {n_plain} output files", panda_id)
    scope_log = _str(data, "scopeLog", "", panda_id)
    outputs = []
    log_spec = None
    plain_index = 0
    for i, name in enumerate(out_names):
        is_log = name == log_name
        scope = scope_log if is_log else (scopes_out[plain_index] if scopes_out else "")
        if not is_log:
            plain_index += 1
        spec = FileSpec(
            lfn=name,
            kind="log" if is_log else "output",
            scope=scope,
            guid=_str(data, "logGUID", "", panda_id) if is_log else "",
            dataset=outs["realDatasets"][i],
            dblock=outs["destinationDblock"][i],
            ddm_endpoint=outs["ddmEndPointOut"][i],
        )
        if is_log:
            log_spec = spec
        else:
            outputs.append(spec)

    task_raw = data.get("taskID")
    jobset_raw = data.get("jobsetID")
    return JobSpec(
        panda_id=panda_id,
        attempt_nr=attempt_nr,
        job_name=_str(data, "jobName", f"job-{panda_id}", panda_id),
        transformation=_str(data, "transformation", None, panda_id),
        job_pars=_str(data, "jobPars", "", panda_id),
        prod_source_label=_str(data, "prodSourceLabel", "managed", panda_id),
        processing_type=_str(data, "processingType", "", panda_id),
        sw_release=_str(data, "swRelease", "", panda_id),
        task_id=None if task_raw in _NULLS else _int(data, "taskID", 0, panda_id),
        jobset_id=None if jobset_raw in _NULLS else _int(data, "jobsetID", 0, panda_id),
        core_count=max(1, _int(data, "coreCount", 1, panda_id)),
        max_cpu_count=_int(data, "maxCpuCount", 0, panda_id),
        max_walltime=_int(data, "maxWalltime", 0, panda_id),
        min_ram_count=_int(data, "minRamCount", 0, panda_id),
        max_disk_count=_int(data, "maxDiskCount", 0, panda_id),
        current_priority=_int_signed(data, "currentPriority", panda_id),
        destination_se=_str(data, "destinationSE", "", panda_id),
        input_files=tuple(inputs),
        output_files=tuple(outputs),
        log_file=log_spec,
        raw=dict(data),
    )


def _int_signed(data: dict[str, Any], key: str, panda_id: int) -> int:
    value = data.get(key)
    if value in _NULLS:
        return 0
    try:
        return int(str(value))
    except ValueError:
        raise BadJobSpec(key, f"expected an integer, got {value!r}", panda_id) from None


def panda_id_of(data: Any) -> int | None:
    """Best-effort PandaID of a job dict that may not validate (to report it failed)."""
    if not isinstance(data, dict):
        return None
    try:
        value = int(str(data.get("PandaID")).strip())
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def utc_timestamp(epoch: float | None = None) -> str:
    """PanDA's time format for startTime / endTime: ``%Y-%m-%d %H:%M:%S`` in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch if epoch is not None else time.time()))


def uuid_text(raw: bytes, version: int) -> str:
    """The usual text form of a UUID made of ``raw``'s first 16 bytes, with ``version`` and
    the RFC 4122 variant set: what ``str(uuid.UUID(bytes=…, version=…))`` gives, without
    importing ``uuid`` (it pulls in ``platform``) or building UUID objects by the hundred."""
    data = bytearray(raw[:16])
    data[6] = (data[6] & 0x0F) | (version << 4)
    data[8] = (data[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = data.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def new_guid() -> str:
    """A GUID for an output file: the pilot assigns them (the server sends none for outputs).

    A random (version 4) UUID from 16 random bytes: ``uuid.uuid4()`` gives the same, but
    importing ``uuid`` cost every node agent ~5 ms of CPU at its first ended job.
    """
    return uuid_text(os.urandom(16), 4)


@dataclass(frozen=True)
class OutputFileReport:
    """One transferred file, as the final report's ``xml`` / ``job_output_report`` lists it."""

    lfn: str
    guid: str
    fsize: int
    adler32: str
    surl: str
    n_events: int | None = None


@dataclass
class JobReport:
    """What a pilot reports for one job in one update.

    The client turns this into the legacy form (``jobId``, ``state``, …) or the v1
    parameters (``job_id``, ``job_status``, …); nothing here knows about HTTP.
    """

    panda_id: int
    state: str
    attempt_nr: int
    site_name: str = ""
    node: str = ""
    pilot_id: str = ""
    scheduler_id: str = ""
    batch_id: str = ""
    core_count: int | None = None
    start_time: str | None = None
    end_time: str | None = None
    n_events: int | None = None
    cpu_consumption_time: int | None = None
    max_rss: int | None = None
    trans_exit_code: int | None = None
    pilot_error_code: int | None = None
    pilot_error_diag: str | None = None
    exe_error_code: int | None = None
    exe_error_diag: str | None = None
    pilot_timing: str | None = None
    job_metrics: str | None = None
    output_files: list[OutputFileReport] = field(default_factory=list)
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.state not in PILOT_STATES:
            raise ValueError(f"{self.state!r} is not a state a pilot may send ({', '.join(PILOT_STATES)})")

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def file_report(self) -> dict[str, dict[str, Any]]:
        """``{lfn: {guid, fsize, adler32, surl}}``: what pilot3 sends as ``xml`` despite the name."""
        report: dict[str, dict[str, Any]] = {}
        for f in self.output_files:
            entry: dict[str, Any] = {"guid": f.guid, "fsize": f.fsize, "adler32": f.adler32, "surl": f.surl}
            if f.n_events is not None:
                entry["nevents"] = f.n_events
            report[f.lfn] = entry
        return report

    def job_report(self) -> dict[str, Any] | None:
        """The ``meta_data`` job report with per-file event counts, or None when no file has one.

        The real server ignores a ``nevents`` key in the file report: its Adder takes each
        output's event count only from ``files.output[].subFiles[].{name, nentries}`` here
        (without it every output gets the job's nEvents).
        """
        sub_files = [
            {"name": f.lfn, "file_guid": f.guid, "nentries": f.n_events}
            for f in self.output_files
            if f.n_events is not None
        ]
        if not sub_files:
            return None
        return {"files": {"output": [{"subFiles": sub_files}]}}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for the journal and the per-job report files of multi-job mode."""
        data = {k: v for k, v in self.__dict__.items() if k != "output_files"}
        data["output_files"] = [f.__dict__ for f in self.output_files]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobReport:
        data = dict(data)
        files = [OutputFileReport(**f) for f in data.pop("output_files", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(output_files=files, **known)


def failed_report(panda_id: int, attempt_nr: int, code: int, diag: str, **extra: Any) -> JobReport:
    """A final ``failed`` report with a pilot error code and diagnostic."""
    return JobReport(
        panda_id=panda_id,
        state="failed",
        attempt_nr=attempt_nr,
        pilot_error_code=code,
        pilot_error_diag=diag[:500],
        end_time=utc_timestamp(),
        **extra,
    )
