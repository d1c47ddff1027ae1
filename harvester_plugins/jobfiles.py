"""One job's outcome on the shared file system, in Harvester's shared-file format.

The node agent writes these files when a payload ends; two readers take them from
there: a real Harvester (through a messenger, ours or its own ``SharedFileMessenger``)
and our MOM-node daemon.  One format, so both see the same outcome.

Files, in the job's directory — the per-job access point ``<accessPoint>/<PandaID>/``
of a ManyToOne worker (HSF/harvester ``shared_file_messenger.py`` ``get_access_point``,
l. 149-154), which is also the job's work dir — under the names of the messenger
section (defaults: Harvester's ``panda_harvester.cfg`` ``[payload_interaction]``):

``event_status.dump.json``
    ``{"<PandaID>": [{"path", "type": "output"|"log", "fsize", "chksum", "guid"}]}``:
    what Harvester stages out.  Its ``get_files_to_stage_out`` (l. 228-330) renames it
    to ``.read``, takes the lfn from the path's basename, and needs ``type``.
``jobReport.json``
    the job report, which Harvester passes to PanDA as ``metaData``
    (``get_work_attributes`` l. 169-222, ``JobSpec.set_attributes`` l. 183-185); the
    PanDA Adder reads per-file event counts from ``files.output[].subFiles[]``.
``worker_attributes.json``
    the job's attributes: ``jobStatus`` (``finished`` / ``failed``) and the PanDA
    update fields.  ``core_utils.update_job_attributes_with_workers`` (l. 321-389)
    feeds them to ``JobSpec.set_attributes``; ``get_job_status_from_attributes``
    (job_spec.py l. 475-480) makes ``jobStatus`` the job's status whatever the
    worker's, and ``get_job_attributes_for_panda`` (l. 412-460) forwards
    pilotErrorCode, transExitCode, nEvents, cpuConsumptionTime, maxRSS, startTime, ...
    to PanDA.  Written LAST: its ``jobStatus`` ends the job in Harvester, so the outputs
    list must already be there when a monitor cycle sees it.

``pilotErrorCode`` is 0 for a finished job: a failed *worker* gets Harvester's
generic 1008 (monitor.py l. 405-407), which ``JobSpec.set_attributes`` copies only to
jobs without a code of their own (l. 173-178).  Line numbers: HSF/harvester at d561b72
(2026-08-03).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compass_pilot.atomic import atomic_write_files, atomic_write_text
from compass_pilot.checksums import adler32_of

#: Harvester's [payload_interaction] defaults for the three files (messenger-section keys).
ATTRIBUTES_KEY = "workerAttributesFile"
JOB_REPORT_KEY = "jobReportFile"
OUTPUTS_KEY = "eventStatusDumpJsonFile"
#: in a lean outcome's attributes: {output lfn: events counted} (our daemon's; not a Harvester name)
OUTPUT_EVENTS_KEY = "outputEvents"
#: in a lean outcome's attributes: {lfn: [size, adler32]} of every file to stage out (outputs and log)
OUTPUT_FILES_KEY = "outputFiles"
DEFAULT_NAMES = {
    ATTRIBUTES_KEY: "worker_attributes.json",
    JOB_REPORT_KEY: "jobReport.json",
    OUTPUTS_KEY: "event_status.dump.json",
}
FINAL_STATUSES = ("finished", "failed")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # PanDA's startTime / endTime


def names_from(config: Any) -> dict[str, str]:
    """The three file names of a messenger section (dict or plugin), defaults filled in."""
    get = config.get if isinstance(config, dict) else lambda k, d: getattr(config, k, d)
    return {key: str(get(key, default) or default) for key, default in DEFAULT_NAMES.items()}


def panda_time(epoch: float | None) -> str | None:
    return time.strftime(_TIME_FORMAT, time.gmtime(epoch)) if epoch else None


def _epoch(text: Any) -> float:
    """Seconds since the epoch of a PanDA UTC time; 0.0 if it is none.

    ``datetime.strptime`` / ``time.strptime`` cost ~30 µs a call (regex, locale): the
    daemon reads two per job end.  The fixed format is parsed by hand instead.
    """
    try:
        s = str(text)
        if len(s) != 19 or s[4] != "-" or s[7] != "-" or s[10] != " " or s[13] != ":" or s[16] != ":":
            raise ValueError(s)
        fields = (int(s[0:4]), int(s[5:7]), int(s[8:10]), int(s[11:13]), int(s[14:16]), int(s[17:19]))
        from datetime import UTC, datetime  # here: only readers of the times (the daemon) need it, no agent

        return datetime(*fields, tzinfo=UTC).timestamp()  # no calendar module: ~3 ms per agent start
    except (TypeError, ValueError):
        return 0.0


@dataclass(frozen=True)
class OutputFile:
    """One file to stage out, as Harvester's event-status dump lists it."""

    path: str
    type: str  # "output" or "log"
    fsize: int
    chksum: str  # adler32, 8 hex digits
    guid: str
    n_events: int | None = None

    @property
    def lfn(self) -> str:
        return os.path.basename(self.path)

    def to_dict(self) -> dict[str, Any]:
        """The dump entry.  An output also carries ``nEvents`` (null when the log named no count):
        Harvester's messenger takes only the keys it knows, and our daemon reads the counts here
        instead of reading the payload's logs a second time (:func:`read_event_counts`)."""
        entry = {"path": self.path, "type": self.type, "fsize": self.fsize, "chksum": self.chksum, "guid": self.guid}
        if self.type == "output":
            entry["nEvents"] = self.n_events
        return entry

    @classmethod
    def of(cls, path: Path, kind: str, guid: str, n_events: int | None = None) -> OutputFile:
        return cls(str(path), kind, path.stat().st_size, adler32_of(path), guid, n_events)


@dataclass
class JobOutcome:
    """How one job ended on its node: what Harvester and our daemon both read."""

    panda_id: int
    attempt_nr: int
    status: str  # "finished" | "failed"
    error_code: int = 0
    error_diag: str = ""
    trans_exit_code: int | None = None
    n_events: int | None = None
    cpu_seconds: float = 0.0
    max_rss_kb: int | None = None
    start_time: float = 0.0
    end_time: float = 0.0
    core_count: int | None = None
    node: str = ""
    outputs: list[OutputFile] = field(default_factory=list)
    #: {output lfn: events} from a lean outcome's attributes (``outputEvents``); None = not given there
    output_events: dict[str, int] | None = None
    #: {lfn: (size, adler32)} the node agent measured (``outputFiles``); None = not given there
    output_sums: dict[str, tuple[int, str]] | None = None

    def __post_init__(self) -> None:
        if self.status not in FINAL_STATUSES:
            raise ValueError(f"job {self.panda_id}: status {self.status!r} is not final")

    @property
    def verdict(self) -> tuple[int, str] | None:
        """(code, diag) of a failed job, None for a finished one."""
        return (self.error_code, self.error_diag) if self.status == "failed" else None

    def payload_result(self) -> Any:
        """The ``PayloadResult`` the daemon's ``lifecycle.finish_job`` takes (signal and kill reason are
        already judged into the verdict, so they are not carried)."""
        from compass_pilot.payload import PayloadResult

        return PayloadResult(
            exit_code=self.trans_exit_code,
            signal=None,
            cpu_seconds=self.cpu_seconds,
            max_rss=(self.max_rss_kb or 0) * 1024,
            wall_seconds=max(0.0, self.end_time - self.start_time),
            start_time=self.start_time,
            end_time=self.end_time,
        )

    def attributes(self) -> dict[str, Any]:
        """worker_attributes.json: Harvester's job attribute names (= PanDA's updateJob fields)."""
        attrs: dict[str, Any] = {
            "jobStatus": self.status,
            "attemptNr": self.attempt_nr,
            "pilotErrorCode": self.error_code,
            "pilotErrorDiag": self.error_diag,
            "cpuConsumptionTime": round(self.cpu_seconds),
            "cpuConsumptionUnit": "s",
            "node": self.node,
        }
        if self.trans_exit_code is not None:
            attrs["transExitCode"] = self.trans_exit_code
            if self.trans_exit_code != 0:
                attrs["exeErrorCode"] = self.trans_exit_code
        optional = {
            "nEvents": self.n_events,
            "maxRSS": self.max_rss_kb,
            "startTime": panda_time(self.start_time),
            "endTime": panda_time(self.end_time),
            "coreCount": self.core_count,
        }
        attrs.update({k: v for k, v in optional.items() if v is not None})
        if self.core_count is not None or self.n_events is not None:
            attrs["jobMetrics"] = f"coreCount={self.core_count or 1} nEvents={self.n_events or 0}"
        return attrs

    def job_report(self) -> dict[str, Any]:
        """jobReport.json (PanDA's metaData): exit code and per-output event counts for the Adder."""
        sub_files = [
            {"name": f.lfn, "nentries": f.n_events if f.n_events is not None else self.n_events or 0}
            for f in self.outputs
            if f.type == "output"
        ]
        return {
            "exitCode": self.error_code,
            "exitMsg": self.error_diag or "OK",
            "files": {"output": [{"subFiles": sub_files}]} if sub_files else {},
        }

    def outputs_dump(self) -> dict[str, list[dict[str, Any]]]:
        return {str(self.panda_id): [f.to_dict() for f in self.outputs]}

    @classmethod
    def from_attributes(cls, panda_id: int, attrs: dict[str, Any]) -> JobOutcome | None:
        """The outcome in a worker_attributes.json; None when it holds no final jobStatus."""
        status = attrs.get("jobStatus")
        if status not in FINAL_STATUSES:
            return None
        return cls(
            panda_id=panda_id,
            attempt_nr=int(attrs.get("attemptNr") or 0),
            status=str(status),
            error_code=int(attrs.get("pilotErrorCode") or 0),
            error_diag=str(attrs.get("pilotErrorDiag") or ""),
            trans_exit_code=_int_or_none(attrs.get("transExitCode")),
            n_events=_int_or_none(attrs.get("nEvents")),
            cpu_seconds=float(attrs.get("cpuConsumptionTime") or 0),
            max_rss_kb=_int_or_none(attrs.get("maxRSS")),
            start_time=_epoch(attrs.get("startTime")),
            end_time=_epoch(attrs.get("endTime")),
            core_count=_int_or_none(attrs.get("coreCount")),
            node=str(attrs.get("node") or ""),
            output_events=_event_counts(attrs.get(OUTPUT_EVENTS_KEY)),
            output_sums=_file_sums(attrs.get(OUTPUT_FILES_KEY)),
        )


def _event_counts(value: Any) -> dict[str, int] | None:
    """A lean outcome's ``outputEvents``; None when absent or not {name: count ≥ 0} (the logs then say)."""
    if not isinstance(value, dict):
        return None
    for name, count in value.items():
        if not isinstance(name, str) or not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return None
    return dict(value)


def _file_sums(value: Any) -> dict[str, tuple[int, str]] | None:
    """A lean outcome's ``outputFiles``; None when absent or not {name: [size ≥ 0, 8 hex digits]}."""
    if not isinstance(value, dict):
        return None
    sums: dict[str, tuple[int, str]] = {}
    for name, entry in value.items():
        if not (isinstance(entry, list) and len(entry) == 2):
            return None
        size, checksum = entry
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not _is_adler32(checksum):
            return None
        sums[str(name)] = (size, checksum)
    return sums


def _is_adler32(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 8 and all(c in "0123456789abcdef" for c in value)


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _atomic_json(target: Path, data: Any) -> None:
    """All or nothing, durably (the one atomic-write helper)."""
    atomic_write_text(target, json.dumps(data, sort_keys=True))


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True).encode("utf-8")


def write_outcome(
    directory: str | os.PathLike[str],
    outcome: JobOutcome,
    names: dict[str, str] | None = None,
    *,
    durable: bool = True,
    lean: bool = False,
) -> None:
    """Write the three files of one job; the attributes last (they end the job in Harvester).

    Each file is replaced atomically either way; ``durable`` adds the fsyncs that make the
    three survive a crash in order (see ``hpc.jobset.JobSet.durable_outcomes`` for who needs them).
    ``lean``: the attributes alone, with ``outputEvents`` ({output lfn: events counted}) and
    ``outputFiles`` ({lfn: [size, adler32]}) in them — for our daemon, which reads nothing else
    (``hpc.jobset.JobSet.lean_outcomes``) and stages out with those sums.
    """
    names = {**DEFAULT_NAMES, **(names or {})}
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    if lean:
        attrs = outcome.attributes()
        counted = (f for f in outcome.outputs if f.type == "output" and f.n_events is not None)
        attrs[OUTPUT_EVENTS_KEY] = {f.lfn: f.n_events for f in counted}
        attrs[OUTPUT_FILES_KEY] = {f.lfn: [f.fsize, f.chksum] for f in outcome.outputs}
        atomic_write_files(target, [(names[ATTRIBUTES_KEY], _json_bytes(attrs))], durable=durable)
        return
    atomic_write_files(  # each file atomic, one directory sync for the three
        target,
        [
            (names[OUTPUTS_KEY], _json_bytes(outcome.outputs_dump())),
            (names[JOB_REPORT_KEY], _json_bytes(outcome.job_report())),
            (names[ATTRIBUTES_KEY], _json_bytes(outcome.attributes())),
        ],
        durable=durable,
    )


def has_outcome(directory: str | os.PathLike[str], names: dict[str, str] | None = None) -> bool:
    return read_outcome(directory, 0, names) is not None


def read_outcome(
    directory: str | os.PathLike[str], panda_id: int, names: dict[str, str] | None = None
) -> JobOutcome | None:
    """The job's final outcome, or None while it has none (missing, unreadable or not final)."""
    names = {**DEFAULT_NAMES, **(names or {})}
    try:
        attrs = json.loads((Path(directory) / names[ATTRIBUTES_KEY]).read_text())
    except (OSError, ValueError):
        return None
    return JobOutcome.from_attributes(panda_id, attrs) if isinstance(attrs, dict) else None


def read_event_counts(
    directory: str | os.PathLike[str], panda_id: int, names: dict[str, str] | None = None
) -> dict[str, int] | None:
    """``{output lfn: events}`` as the node agent counted them (its outputs dump), or None when
    the dump is missing, unreadable, of another job, or written by an agent that did not count
    (an output entry without ``nEvents``): the caller then counts from the logs itself."""
    names = {**DEFAULT_NAMES, **(names or {})}
    entries = read_json(Path(directory) / names[OUTPUTS_KEY])
    if not isinstance(entries, dict) or not isinstance(entries.get(str(panda_id)), list):
        return None
    counts: dict[str, int] = {}
    for entry in entries[str(panda_id)]:
        if not isinstance(entry, dict) or entry.get("type") != "output":
            continue
        if "nEvents" not in entry or not isinstance(entry.get("path"), str):
            return None
        value = entry["nEvents"]
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return None
            counts[os.path.basename(entry["path"])] = value
    return counts


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file, or None when missing or unreadable (a half-written file is never seen: writes rename)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def parse_outputs_dump(data: Any) -> dict[int, list[dict[str, Any]]]:
    """``{PandaID: [file dict]}`` from an event-status dump; entries without a path are skipped."""
    if not isinstance(data, dict):
        return {}
    files: dict[int, list[dict[str, Any]]] = {}
    for key, entries in data.items():
        if not isinstance(entries, list):
            continue
        try:
            panda_id = int(key)
        except ValueError:
            continue
        files[panda_id] = [e for e in entries if isinstance(e, dict) and "path" in e and "type" in e]
    return files


__all__ = [
    "DEFAULT_NAMES",
    "JobOutcome",
    "OutputFile",
    "adler32_of",
    "has_outcome",
    "names_from",
    "parse_outputs_dump",
    "read_event_counts",
    "read_json",
    "read_outcome",
    "write_outcome",
]
