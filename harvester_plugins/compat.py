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
            """A logger prefixing token and method, as Harvester's core_utils.make_logger does."""
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

        def set_pilot_error(self, error_code: int, error_dialog: str) -> None:
            if self.jobAttributes is None:
                self.jobAttributes = {}
            self.jobAttributes["pilotErrorCode"] = error_code
            self.jobAttributes["pilotErrorDiag"] = error_dialog


#: WorkSpec statuses a monitor may return (Harvester's ST_LIST).
WORKER_STATUSES: tuple[str, ...] = tuple(WorkSpec.ST_LIST)

#: The sections a Harvester queue config must have (queue_config_mapper).
PLUGIN_SECTIONS = ("messenger", "monitor", "preparator", "stager", "submitter", "sweeper", "workerMaker")


def job_spec_from_panda(data: dict[str, Any]) -> Any:
    """A Harvester JobSpec (real or mirrored) from one PanDA job dict."""
    spec = HarvesterJobSpec()
    spec.convert_job_json(dict(data))
    return spec


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
