"""Harvester's plugin base, WorkSpec and JobSpec — imported when Harvester is installed, mirrored otherwise.

Our plugins must be loadable by a real Harvester (``PluginFactory`` imports the module
named in the queue config and builds the class with the config's keys as kwargs) *and*
by our own MOM-node daemon, which runs without Harvester.  When ``pandaharvester`` is
importable we use its classes, so a WorkSpec Harvester hands us is the real thing; when
it is not, the classes below mirror the fields, statuses and method signatures of
HSF/harvester's ``harvestercore`` (plugin_base.py, work_spec.py, job_spec.py,
plugin_factory.py, queue_config_mapper.py) — only what plugins touch.  No Harvester
code is copied; the behaviour is re-implemented from its interface.
"""

from __future__ import annotations

import copy
import datetime
import importlib
import logging
import re
from typing import Any

log = logging.getLogger(__name__)

try:  # pragma: no cover - exercised only where Harvester is installed
    from pandaharvester.harvestercore import core_utils as _core_utils  # noqa: F401 - first: breaks Harvester's import cycle
    from pandaharvester.harvestercore.file_spec import FileSpec as HarvesterFileSpec
    from pandaharvester.harvestercore.job_spec import JobSpec as HarvesterJobSpec
    from pandaharvester.harvestercore.plugin_base import PluginBase
    from pandaharvester.harvestercore.work_spec import WorkSpec

    HAVE_HARVESTER = True
except Exception:  # ImportError, or Harvester present but unconfigured (its config import fails)
    HAVE_HARVESTER = False

    def _utcnow() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)

    class PluginBase:  # type: ignore[no-redef]
        """Harvester's PluginBase: every constructor kwarg becomes an attribute."""

        def __init__(self, **kwarg: Any) -> None:
            for key, value in kwarg.items():
                setattr(self, key, value)

        def make_logger(
            self, base_log: logging.Logger, token: str | None = None, method_name: str | None = None, **_: Any
        ) -> logging.LoggerAdapter[logging.Logger]:
            """A logger prefixing token and method, as Harvester's core_utils.make_logger does.

            Harvester's LogWrapper methods take ONE message (no %-arguments): callers format first.
            """
            parts = (f"<{token}>" if token else "", f"<{method_name}>" if method_name else "")
            prefix = " ".join(p for p in parts if p)
            return _PrefixAdapter(base_log, {"prefix": prefix})

    class _PrefixAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
        def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
            prefix = (self.extra or {}).get("prefix", "")
            return (f"{prefix} {msg}" if prefix else msg), kwargs

    _WORK_ATTRS = (  # noqa: SIM905 - one string mirrors Harvester's attribute list compactly
        "workerID batchID mapType queueName status hasJob workParams workAttributes eventsRequestParams "
        "eventsRequest computingSite creationTime submitTime startTime endTime nCore walltime accessPoint "
        "modificationTime lastUpdate eventFeedTime lockedBy postProcessed nodeID minRamCount maxDiskCount "
        "maxWalltime killTime computingElement nJobsToReFill logFilesToUpload jobType resourceType "
        "nativeExitCode nativeStatus diagMessage nJobs submissionHost configID syncLevel checkTime "
        "ioIntensity harvesterHost pilotType eventFeedLock errorCode errorDiag"
    ).split()

    class WorkSpec:  # type: ignore[no-redef]
        """Mirror of harvestercore.work_spec.WorkSpec: same attributes, statuses and methods plugins use."""

        ST_submitted = "submitted"
        ST_running = "running"
        ST_finished = "finished"
        ST_failed = "failed"
        ST_ready = "ready"
        ST_cancelled = "cancelled"
        ST_idle = "idle"
        ST_missed = "missed"
        ST_pending = "pending"
        ST_LIST = (ST_submitted, ST_running, ST_finished, ST_failed, ST_ready, ST_cancelled, ST_idle, ST_missed)

        MT_NoJob = "NoJob"
        MT_OneToOne = "OneToOne"
        MT_MultiJobs = "ManyToOne"
        MT_MultiWorkers = "OneToMany"

        attributes = tuple(_WORK_ATTRS)

        def __init__(self) -> None:
            for attr in _WORK_ATTRS:
                setattr(self, attr, None)
            self.isNew = False
            self.nextLookup = False
            self.jobspec_list: list[Any] | None = None
            self.pandaid_list: list[int] | None = None
            self.new_status = False
            self.pilot_closed = False

        def set_status(self, value: str) -> None:
            # Harvester refuses the reverse transition running/idle → submitted
            if value == self.ST_submitted and self.status in (self.ST_running, self.ST_idle):
                return
            if self.status != value:
                self.new_status = True
            self.status = value
            if value == self.ST_running:
                self.set_start_time()
            elif self.is_final_status():
                self.set_end_time()

        def get_access_point(self) -> str:
            """accessPoint with ``${attr}`` placeholders filled from this worker's attributes."""
            if self.accessPoint and "$" in self.accessPoint:
                for name in re.findall(r"\$\{([a-zA-Z\d_.]+)\}", self.accessPoint):
                    if hasattr(self, name):
                        self.accessPoint = self.accessPoint.replace("${" + name + "}", str(getattr(self, name)))
            return self.accessPoint

        def set_jobspec_list(self, jobspec_list: list[Any]) -> None:
            self.jobspec_list = jobspec_list

        def get_jobspec_list(self) -> list[Any] | None:
            return self.jobspec_list

        def set_num_jobs_with_list(self) -> None:
            if self.jobspec_list:
                self.nJobs = (self.nJobs or 0) + len(self.jobspec_list)

        def convert_to_job_status(self, status: str | None = None) -> tuple[str, str]:
            status = self.status if status is None else status
            if status in (self.ST_submitted, self.ST_ready):
                return "starting", status
            if status in (self.ST_finished, self.ST_failed, self.ST_cancelled):
                return status, "to_transfer"
            if status == self.ST_missed:
                return "missed", status
            return "running", status

        def is_final_status(self) -> bool:
            return self.status in (self.ST_finished, self.ST_failed, self.ST_cancelled, self.ST_missed)

        def is_post_processed(self) -> bool:
            return self.postProcessed == 1

        def post_processed(self) -> None:
            self.postProcessed = 1

        def set_start_time(self, force: bool = False) -> None:
            if self.startTime is None or force:
                self.startTime = _utcnow()

        def set_end_time(self, force: bool = False) -> None:
            if self.endTime is None or force:
                self.endTime = _utcnow()

        def force_update(self, name: str) -> None:
            """Harvester marks a column dirty; nothing to persist here."""

        def set_work_params(self, data: dict[str, Any] | None) -> None:
            if data is None:
                return
            if self.workParams is None:
                self.workParams = {}
            self.workParams.update(data)

        def get_work_params(self, name: str) -> tuple[bool, Any]:
            if self.workParams is None or name not in self.workParams:
                return False, None
            return True, self.workParams[name]

        def has_work_params(self, name: str) -> bool:
            return self.workParams is not None and name in self.workParams

        def set_work_attributes(self, data: dict[str, Any] | None) -> None:
            if data is None:
                return
            if self.workAttributes is None:
                self.workAttributes = {}
            self.workAttributes.update(data)

        def get_work_attribute(self, name: str) -> tuple[bool, Any]:
            if self.workAttributes is None or name not in self.workAttributes:
                return False, None
            return True, self.workAttributes[name]

        def has_work_attribute(self, name: str) -> bool:
            return self.workAttributes is not None and name in self.workAttributes

        def set_log_file(self, log_type: str, stream: str) -> None:
            """Record a batch log; Harvester would also upload it to the PanDA cache."""
            key = {"stdout": "stdOut", "stderr": "stdErr", "jdl": "jdl"}.get(log_type, "batchLog")
            self.set_work_attributes({key: stream})

        def set_dialog_message(self, msg: str | None) -> None:
            if msg not in (None, ""):
                self.diagMessage = str(msg)[:500]

        def set_pilot_error(self, error_code: int, error_dialog: str) -> None:
            self.set_work_attributes({"pilotErrorCode": error_code, "pilotErrorDiag": error_dialog})

        def has_pilot_error(self) -> bool:
            return self.has_work_attribute("pilotErrorCode")

        def set_pilot_closed(self) -> None:
            self.pilot_closed = True

        def set_supplemental_error(self, error_code: int | None, error_diag: str | None) -> None:
            if error_code is not None:
                self.errorCode = error_code
            if error_diag not in (None, ""):
                self.errorDiag = str(error_diag)[:256]

    class HarvesterJobSpec:  # type: ignore[no-redef]
        """Mirror of harvestercore.job_spec.JobSpec: PandaID, jobParams (the raw job dict), files."""

        def __init__(self) -> None:
            self.PandaID: int | None = None
            self.taskID: int | None = None
            self.attemptNr: int | None = None
            self.jobsetID: int | None = None
            self.currentPriority: int | None = None
            self.nCore: int | None = None
            self.resourceType: str | None = None
            self.status: str | None = None
            self.subStatus: str | None = None
            self.computingSite: str | None = None
            self.jobParams: dict[str, Any] = {}
            self.jobAttributes: dict[str, Any] | None = None
            self.metaData: dict[str, Any] | None = None
            self.inFiles: set[Any] = set()
            self.outFiles: set[Any] = set()
            self.jobParamsExtForLog: dict[str, Any] | None = None

        def convert_job_json(self, data: dict[str, Any]) -> None:
            self.PandaID = data["PandaID"]
            self.taskID = None if data.get("taskID") in (None, "NULL") else data["taskID"]
            self.attemptNr = data.get("attemptNr")
            self.jobsetID = None if data.get("jobsetID") in (None, "NULL") else data["jobsetID"]
            self.currentPriority = data.get("currentPriority")
            self.nCore = data.get("coreCount")
            self.resourceType = data.get("resource_type")
            self.jobParams = data

        def get_job_params(self, strip: bool) -> dict[str, Any]:
            if not strip:
                return self.jobParams
            skip = {"prodDBlocks", "realDatasetsIn", "dispatchDblock", "ddmEndPointIn", "scopeIn",
                    "dispatchDBlockToken", "prodDBlockToken"}  # fmt: skip
            return {k: v for k, v in self.jobParams.items() if k not in skip}

        def get_logfile_info(self) -> dict[str, Any]:
            if self.jobParamsExtForLog is None:
                self.jobParamsExtForLog = {"lfn": self.jobParams["logFile"], "guid": self.jobParams.get("logGUID")}
            return self.jobParamsExtForLog

        # -- attributes (job_spec.py set_attributes / set_one_attribute / set_pilot_error) --
        def set_attributes(self, attrs: dict[Any, Any] | None) -> None:
            """Worker attributes keyed by PandaID → this job's; worker-level error codes fill gaps only."""
            if attrs is None:
                return
            attrs = copy.copy(attrs)
            for name in ("pilotErrorCode", "pilotErrorDiag", "exeErrorCode", "exeErrorDiag"):
                if name in attrs:
                    attrs.setdefault(self.PandaID, {})
                    if name not in attrs[self.PandaID]:
                        attrs[self.PandaID][name] = attrs[name]
            if self.PandaID not in attrs:
                return
            mine = copy.copy(attrs[self.PandaID])
            if "metaData" in mine:
                self.metaData = mine.pop("metaData")
            if "xml" in mine:
                self.outputFilesToReport = mine.pop("xml")
            if self.jobAttributes is None:
                self.jobAttributes = mine
            else:
                self.jobAttributes.update(mine)

        def set_one_attribute(self, attr: str, value: Any) -> None:
            if self.jobAttributes is None:
                self.jobAttributes = {}
            self.jobAttributes[attr] = value

        def has_attribute(self, attr: str) -> bool:
            return self.jobAttributes is not None and attr in self.jobAttributes

        def get_one_attribute(self, attr: str) -> Any:
            return (self.jobAttributes or {}).get(attr)

        def set_pilot_error(self, error_code: int, error_dialog: str) -> None:
            """Harvester keeps the first error: an existing code is not overwritten."""
            if not self.has_attribute("pilotErrorCode"):
                self.set_one_attribute("pilotErrorCode", error_code)
            if not self.has_attribute("pilotErrorDiag"):
                self.set_one_attribute("pilotErrorDiag", error_dialog)

        def get_job_status_from_attributes(self) -> str | None:
            status = (self.jobAttributes or {}).get("jobStatus")
            return status if status in ("finished", "failed") else None

        def get_job_attributes_for_panda(self) -> dict[str, Any]:
            return {k: v for k, v in (self.jobAttributes or {}).items() if k in _PANDA_JOB_ATTRIBUTES}

        # -- files (job_spec.py) -----------------------------------------------------------
        def add_in_file(self, filespec: Any) -> None:
            self.inFiles.add(filespec)

        def add_out_file(self, filespec: Any) -> None:
            self.outFiles.add(filespec)

        def get_input_file_attributes(self, skip_ready: bool = False) -> dict[str, dict[str, Any]]:
            skip = {f.lfn for f in self.inFiles if skip_ready and f.status == "ready"}
            paths = {f.lfn: f.path for f in self.inFiles}
            attempts = {f.lfn: f.attemptNr for f in self.inFiles}
            params = self.jobParams
            keys = ("inFiles", "GUID", "fsize", "checksum", "scopeIn", "realDatasetsIn", "ddmEndPointIn")
            columns = [str(params.get(k) or "").split(",") for k in keys]
            result: dict[str, dict[str, Any]] = {}
            for lfn, guid, fsize, chksum, scope, dataset, endpoint in zip(*columns, strict=False):
                if not lfn or lfn in skip:
                    continue
                result[lfn] = {"fsize": int(fsize) if fsize.isdigit() else None, "guid": guid, "checksum": chksum,
                               "scope": scope, "dataset": dataset, "endpoint": endpoint,
                               "attemptNr": attempts.get(lfn, 0), "path": paths.get(lfn)}  # fmt: skip
            return result

        def set_input_file_paths(self, in_files: dict[str, dict[str, Any]]) -> None:
            lfns = self.get_input_file_attributes().keys()
            self.jobParams["inFilePaths"] = ",".join(in_files[lfn]["path"] for lfn in lfns if lfn in in_files)
            for f in self.inFiles:
                if f.lfn in in_files:
                    f.path = in_files[f.lfn]["path"]

        def set_all_input_ready(self) -> None:
            for f in self.inFiles:
                f.status = "ready"

        def get_output_file_specs(self, skip_done: bool = False) -> Any:
            if not skip_done:
                return self.outFiles
            return [f for f in self.outFiles if f.status not in ("finished", "failed")]

        def get_output_file_attributes(self) -> dict[str, dict[str, Any]]:
            p = self.jobParams
            lfns = str(p.get("outFiles") or "").split(",")
            scopes = str(p.get("scopeOut") or "").split(",")
            return {lfn: {"scope": scope} for lfn, scope in zip(lfns, scopes, strict=False) if lfn}

        # -- agent bookkeeping (no DB here) -----------------------------------------------------
        def trigger_propagation(self) -> None:
            self.propagatorTime = _utcnow()

        def trigger_preparation(self) -> None:
            self.preparatorTime = _utcnow()

        def trigger_stage_out(self) -> None:
            self.stagerTime = _utcnow()

        def set_start_time(self, force: bool = False) -> None:
            if getattr(self, "startTime", None) is None or force:
                self.startTime = _utcnow()

        def set_end_time(self, force: bool = False) -> None:
            if getattr(self, "endTime", None) is None or force:
                self.endTime = _utcnow()

        def force_update(self, name: str) -> None:
            """Harvester marks a column dirty; nothing to persist here."""

    class HarvesterFileSpec:  # type: ignore[no-redef]
        """Mirror of harvestercore.file_spec.FileSpec: the columns plugins read and write."""

        def __init__(self) -> None:
            self.PandaID: int | None = None
            self.taskID: int | None = None
            self.lfn: str = ""
            self.path: str | None = None
            self.fsize: int | None = None
            self.chksum: str | None = None
            self.scope: str | None = None
            self.fileType: str = ""
            self.status: str | None = None
            self.attemptNr = 0
            self.endpoint: str | None = None
            self.fileAttributes: dict[str, Any] | None = None
            self.isZip: int | None = None
            self.workerID: Any = None
            self.groupID: str | None = None

    # job_spec.py get_job_attributes_for_panda: the attributes forwarded to PanDA
    _PANDA_JOB_ATTRIBUTES = frozenset(
        [
            "token",
            "transExitCode",
            "pilotErrorCode",
            "pilotErrorDiag",
            "node",
            "cpuConsumptionTime",
            "cpuConsumptionUnit",
            "schedulerID",
            "pilotID",
            "siteName",
            "pilotLog",
            "cpuConversionFactor",
            "exeErrorCode",
            "exeErrorDiag",
            "pilotTiming",
            "startTime",
            "endTime",
            "nEvents",
            "nInputFiles",
            "batchID",
            "attemptNr",
            "jobMetrics",
            "stdout",
            "coreCount",
            "maxRSS",
            "maxVMEM",
            "maxSWAP",
            "maxPSS",
            "avgRSS",
            "avgVMEM",
            "avgSWAP",
            "avgPSS",
            "totRCHAR",
            "totWCHAR",
            "totRBYTES",
            "totWBYTES",
            "rateRCHAR",
            "rateWCHAR",
            "rateRBYTES",
            "rateWBYTES",
        ]
    )


#: WorkSpec statuses a monitor may return (Harvester's ST_LIST).
WORKER_STATUSES: tuple[str, ...] = tuple(WorkSpec.ST_LIST)

#: The sections a Harvester queue config must have (queue_config_mapper).
PLUGIN_SECTIONS = ("messenger", "monitor", "preparator", "stager", "submitter", "sweeper", "workerMaker")


def job_spec_from_panda(data: dict[str, Any]) -> Any:
    """A Harvester JobSpec (real or mirrored) from one PanDA job dict."""
    spec = HarvesterJobSpec()
    spec.convert_job_json(dict(data))
    return spec


def add_input_files(jobspec: Any) -> Any:
    """The job's input FileSpecs, as Harvester's job fetcher makes them (job_fetcher.py l. 126-154)."""
    for lfn, attrs in jobspec.get_input_file_attributes().items():
        spec = HarvesterFileSpec()
        spec.PandaID, spec.taskID, spec.lfn = jobspec.PandaID, jobspec.taskID, lfn
        spec.scope, spec.fileType, spec.status = attrs["scope"], "input", "to_prepare"
        jobspec.add_in_file(spec)
    return jobspec


class QueueConfig:
    """What Harvester's QueueConfig gives a worker maker: the queue's keys as attributes.

    Built by :func:`queue_config_from_dict` the way queue_config_mapper does: plugin
    sections get ``siteName`` / ``queueName`` and the ``common`` keys filled in.
    """

    def __init__(self, queue_name: str) -> None:
        self.queueName = queue_name
        self.siteName = queue_name.split("/")[0]
        self.prodSourceLabel = "managed"
        self.mapType = WorkSpec.MT_OneToOne
        self.walltimeLimit = 0
        self.maxWorkers = 0
        self.resourceType = ""


def plugin_sections(queue_name: str, queue_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The plugin sections of a queue, completed as Harvester's queue_config_mapper completes them."""
    if not isinstance(queue_dict, dict):
        raise ValueError(f"queue {queue_name!r}: expected a mapping, got {type(queue_dict).__name__}")
    site_name = queue_name.split("/")[0]
    common = queue_dict.get("common") if isinstance(queue_dict.get("common"), dict) else {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in queue_dict.items():
        if isinstance(value, dict) and "module" in value and "name" in value:
            conf = copy.deepcopy(value)
            for c_key, c_value in (common or {}).items():
                if c_key not in conf and c_key not in ("module", "name"):
                    conf[c_key] = c_value
            conf.setdefault("siteName", site_name)
            conf.setdefault("queueName", queue_name)
            sections[key] = conf
    missing = [s for s in PLUGIN_SECTIONS if s not in sections]
    if missing:
        raise ValueError(f"queue {queue_name!r}: missing plugin section(s) {', '.join(missing)}")
    return sections


def queue_config_from_dict(queue_name: str, queue_dict: dict[str, Any]) -> QueueConfig:
    """A QueueConfig with every key of the queue's dict as an attribute (plugin sections completed)."""
    config = QueueConfig(queue_name)
    sections = plugin_sections(queue_name, queue_dict)
    for key, value in queue_dict.items():
        setattr(config, key, sections.get(key, copy.deepcopy(value)))
    return config


def job_chunks_for_workers(waiting: list[Any], n_workers: int, n_ready: int, n_jobs_per_worker: int) -> list[list[Any]]:
    """How Harvester's ``db_proxy.get_job_chunks_for_workers`` cuts waiting jobs into workers.

    Only whole workers: ``maxJobs = int(min((n_workers + n_ready) * n, nAvailable) / n) * n``
    (db_proxy.py l. 1848-1898 at d561b72), then chunks of ``n`` in priority order.  Used
    where no Harvester DB runs (CI's replays) to show what a worker maker's sizing gets.
    """
    n = max(1, int(n_jobs_per_worker))
    max_jobs = (n_workers + n_ready) * n
    if n > 1:
        max_jobs = int(min(max_jobs, len(waiting)) / n) * n
    picked = waiting[:max_jobs]
    return [picked[i : i + n] for i in range(0, len(picked), n)]


def update_job_attributes_with_workers(
    map_type: str, jobspec_list: list[Any], workspec_list: list[Any], files_to_stage_out: dict[Any, Any]
) -> None:
    """Harvester's ``core_utils.update_job_attributes_with_workers`` (ManyToOne / OneToOne branch).

    With Harvester importable this calls the real function.  Otherwise it does what
    core_utils.py l. 321-391 (d561b72) does for one worker: worker attributes → each job,
    the outputs to stage out become the job's out files, and the job's status is
    ``convert_to_job_status(jobStatus from its attributes)`` — the worker's status only
    when the job has none of its own.
    """
    if HAVE_HARVESTER:  # pragma: no cover - exercised by scripts/harvester_conformance.py
        from pandaharvester.harvestercore import core_utils

        core_utils.update_job_attributes_with_workers(map_type, jobspec_list, workspec_list, files_to_stage_out, [])
        return
    workspec = workspec_list[0]
    for job in jobspec_list:
        job.set_attributes(workspec.workAttributes)
        if workspec.nCore is not None and job.nCore is None:
            job.nCore = max(1, int(workspec.nCore / len(jobspec_list)))
        if not job.has_attribute("batchID") and workspec.batchID is not None:
            job.set_one_attribute("batchID", workspec.batchID)
        for worker_id, files in files_to_stage_out.items():
            for lfn, entries in files.get(job.PandaID, {}).items():
                for attrs in entries:
                    spec = HarvesterFileSpec()
                    spec.lfn, spec.PandaID, spec.taskID = lfn, job.PandaID, job.taskID
                    spec.path, spec.fsize, spec.fileType = attrs["path"], attrs["fsize"], attrs["type"]
                    spec.fileAttributes, spec.workerID = attrs, worker_id
                    spec.isZip = attrs.get("isZip")
                    spec.chksum = attrs.get("chksum")
                    job.add_out_file(spec)
        job.status, job.subStatus = workspec.convert_to_job_status(job.get_job_status_from_attributes())
        if workspec.is_final_status():
            job.set_end_time()


def get_plugin(plugin_conf: dict[str, Any]) -> Any:
    """Build a plugin exactly as Harvester's PluginFactory.get_plugin does (without a DB interface).

    Import ``module``, take class ``name``, pass every other key as a kwarg.  A new
    instance on every call: that is how Harvester uses plugins, so they keep no state.
    """
    module_name = plugin_conf.get("module")
    class_name = plugin_conf.get("name")
    if not module_name or not class_name:
        raise ValueError(f"plugin config needs 'module' and 'name', got keys {sorted(plugin_conf)}")
    module = importlib.import_module(module_name)
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no class {class_name!r}") from None
    kwargs = {k: v for k, v in plugin_conf.items() if k not in ("module", "name")}
    return cls(**kwargs)
