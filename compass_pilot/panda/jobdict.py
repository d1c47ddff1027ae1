"""The job dict a real PanDA getJob answer carries, filled in from our shorter job specs.

Our task rules (``tasks``, ``workflow``) define only what COMPASS jobs use; a pilot or a
Harvester built for the real server reads more, and reads it without ``.get``: Harvester's
``JobSpec.convert_job_json`` needs ``ddmEndPointOut`` and ``logGUID``, pilot3 zips the
per-file lists (``inFiles`` with ``GUID``, ``fsize``, ``checksum``, ``scopeIn``,
``ddmEndPointIn`` …) and indexes them together.  So every key the real dispatcher puts in
a job (panda-server ``jobdispatcher/Protocol.py`` ``Response.appendJob``, the last
version before the legacy dispatcher was removed) is present here, with the real
server's own convention for "nothing known": ``NULL`` for space tokens, ``0`` for an
unknown size, an empty string for an unknown checksum or endpoint.

GUIDs we do not know are made up deterministically (uuid5 of scope:lfn for inputs, of
PandaID/attempt/lfn for the log), so a retried job names the same input GUIDs and a
pilot's file report can be matched back.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from compass_pilot.job import uuid_text

_NS = uuid.UUID("5d0f8f0e-4c1b-4d35-9a39-2f4c0ad0c0a5")  # our namespace for made-up GUIDs
_NS_BYTES = _NS.bytes


def made_up_guid(name: str) -> str:
    """``str(uuid.uuid5(_NS, name))`` without building UUID objects (a getJob of 512 makes 512+)."""
    return uuid_text(hashlib.sha1(_NS_BYTES + name.encode("utf-8")).digest(), 5)


def _split(value: Any) -> list[str]:
    text = "" if value is None or value == "NULL" else str(value)
    return text.split(",") if text else []


def _per_file(spec: dict[str, Any], key: str, n: int, default: str) -> str:
    """A comma list of exactly n entries: the spec's own where it has them, else ``default``."""
    value = spec.get(key)
    if value is None:  # the usual case: nothing given
        return ",".join([default] * n)
    have = _split(value)
    if len(have) == n:
        return ",".join(have)
    if len(have) == 1 and n > 1:  # one value meant for every file
        return ",".join(have * n)
    return ",".join([default] * n)


#: fields every job carries, with the real server's "nothing known" values (set where the job has none)
_DEFAULTS: dict[str, Any] = {
    "prodSourceLabel": "managed",
    "swRelease": "NULL",
    "homepackage": "NULL",
    "transformation": "",
    "jobPars": "",
    "jobDefinitionID": 0,  # the job's jobsetID (set per job)
    "cloud": "WORLD",
    "destinationSE": "NULL",
    "prodUserID": "compass",
    "maxCpuCount": 0,
    "minRamCount": 0,
    "maxDiskCount": 0,
    "cmtConfig": "",
    "processingType": "",
    "transferType": "NULL",
    "sourceSite": "NULL",
    "currentPriority": 0,
    "taskID": "NULL",
    "coreCount": 1,  # per job, as the next three
    "jobsetID": "NULL",
    "reqID": "NULL",
    "nucleus": "NULL",
    "maxWalltime": 0,
    "resource_type": "SCORE",
    "ioIntensity": None,
    "ioIntensityUnit": None,
}
_PER_INPUT = (
    ("realDatasetsIn", "NULL"),
    ("dispatchDblock", "NULL"),
    ("dispatchDBlockToken", "NULL"),
)
_PER_INPUT_AFTER = (
    ("prodDBlockToken", "NULL"),
    ("fsize", "0"),
    ("checksum", ""),
    ("scopeIn", "compass"),
    ("ddmEndPointIn", ""),
)
_PER_OUTPUT = (
    ("destinationDblock", "NULL"),
    ("realDatasets", "NULL"),
    ("destinationDBlockToken", "NULL"),
    ("dispatchDBlockTokenForOut", "NULL"),
)


def complete(job: dict[str, Any], panda_id: int, attempt_nr: int, n_sent: int) -> dict[str, Any]:
    """Add every field of a real getJob job dict that ``job`` lacks (in place; returns it)."""
    inputs = _split(job.get("inFiles"))
    outputs = _split(job.get("outFiles"))
    log_file = str(job.get("logFile") or "")
    n_in, n_out = len(inputs), len(outputs)
    scope_in = _split(job.get("scopeIn")) or ["compass"] * n_in
    guids = _split(job.get("GUID"))
    if len(guids) != n_in or not all(guids):
        scopes = scope_in if len(scope_in) == n_in else [scope_in[0] if scope_in else "compass"] * n_in
        guids = [made_up_guid(f"{scope}:{lfn}") for scope, lfn in zip(scopes, inputs, strict=True)]
    job["GUID"] = ",".join(guids)
    job["inFiles"] = ",".join(inputs)
    for key, default in _PER_INPUT:
        job[key] = _per_file(job, key, n_in, default)
    job["prodDBlocks"] = _per_file(job, "prodDBlocks", n_in, "NULL") if "prodDBlocks" in job else job["realDatasetsIn"]
    for key, default in _PER_INPUT_AFTER:
        job[key] = _per_file(job, key, n_in, default)
    # outputs, the log file included (it is the last of outFiles in our specs, as in PanDA's)
    job["outFiles"] = ",".join(outputs)
    for key, default in _PER_OUTPUT:
        job[key] = _per_file(job, key, n_out, default)
    job["fileDestinationSE"] = _per_file(job, "fileDestinationSE", n_out, str(job.get("destinationSE") or "NULL"))
    job["ddmEndPointOut"] = _per_file(job, "ddmEndPointOut", n_out, "")
    n_data_out = n_out - (1 if log_file and log_file in outputs else 0)
    job["scopeOut"] = _per_file(job, "scopeOut", n_data_out, "compass")
    job["logFile"] = log_file
    job["scopeLog"] = str(job.get("scopeLog") or ("compass" if log_file else ""))
    if not job.get("logGUID"):
        job["logGUID"] = made_up_guid(f"{panda_id}/{attempt_nr}/{log_file}") if log_file else ""
    core_count = int(job.get("coreCount") or 1)
    defaults = _DEFAULTS.copy()  # (in the real server's order: a job's JSON reads the same)
    defaults["jobDefinitionID"] = job.get("jobsetID") or 0
    defaults["coreCount"] = core_count
    defaults["maxWalltime"] = job.get("maxCpuCount") or 0
    defaults["resource_type"] = "MCORE" if core_count > 1 else "SCORE"
    for key, value in defaults.items():
        if key not in job:
            job[key] = value
    job["PandaID"] = panda_id
    job["attemptNr"] = attempt_nr
    job["StatusCode"] = 0
    job["nSent"] = n_sent
    return job
