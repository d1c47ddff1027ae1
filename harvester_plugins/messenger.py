"""SharedFileMessenger: Harvester's shared-file contract between the edge and the worker.

Harvester and a worker talk only through files under the worker's access point on the
shared file system; the names are Harvester's ``[payload_interaction]`` defaults and
can be overridden by the same keys in the queue config's messenger section
(``jobSpecFile``, ``workerAttributesFile``, ``jobReportFile``,
``eventStatusDumpJsonFile``, ``jobRequestFile``, ``killWorkerFile``, ``heartbeatFile``,
``pandaIDsFile``).  With mapType ManyToOne each job has ``<accessPoint>/<PandaID>/``.

Written by the edge: the job data (``HPCJobs.json`` for multi-job workers,
``pandaJobData.out`` otherwise, as ``{PandaID: job dict}``), ``worker_pandaids.json``
and — when the messenger knows the site config (``siteConfig`` key) and the worker
carries our plan — ``jobset.json`` for ``hpc.node_agent``.  Written by the worker and
read here: ``worker_attributes.json``, ``jobReport.json``, ``event_status.dump.json``
(renamed to ``.read`` while being processed, as Harvester does),
``worker_requestjob.json``, ``kill_worker.json``, ``worker_heartbeat.json``.

Method names and return shapes are those of HSF/harvester's shared_file_messenger;
the code is ours.  No state in the instance: everything is on disk or on the WorkSpec.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from compass_pilot.atomic import atomic_write_text
from harvester_plugins import jobfiles
from harvester_plugins.compat import PluginBase, WorkSpec
from harvester_plugins.logs import plugin_logger

log = plugin_logger(__name__)

#: Harvester's [payload_interaction] defaults (panda_harvester.cfg template).
DEFAULT_FILES = {
    **jobfiles.DEFAULT_NAMES,  # the per-job outcome files the node agent writes
    "jobRequestFile": "worker_requestjob.json",
    "killWorkerFile": "kill_worker.json",
    "heartbeatFile": "worker_heartbeat.json",
    "pandaIDsFile": "worker_pandaids.json",
}
SINGLE_JOB_SPEC_FILE = "pandaJobData.out"
MULTI_JOB_SPEC_FILE = "HPCJobs.json"
JOBSET_FILE = "jobset.json"
READ_SUFFIX = ".read"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def _atomic_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data))


class SharedFileMessenger(PluginBase):
    """Harvester messenger plugin over a shared file system (no state)."""

    def __init__(self, **kwarg: Any) -> None:
        for key, value in DEFAULT_FILES.items():
            setattr(self, key, value)
        self.jobSpecFile = ""  # "" = by mapType: HPCJobs.json for ManyToOne, pandaJobData.out otherwise
        self.siteConfig = ""
        PluginBase.__init__(self, **kwarg)

    # -- names -----------------------------------------------------------------------------
    def job_spec_file(self, workspec: Any) -> str:
        if self.jobSpecFile:
            return str(self.jobSpecFile)
        return MULTI_JOB_SPEC_FILE if workspec.mapType == WorkSpec.MT_MultiJobs else SINGLE_JOB_SPEC_FILE

    def get_access_point(self, workspec: Any, panda_id: int) -> str:
        """Per-job directory for ManyToOne workers, the worker's access point otherwise."""
        if workspec.mapType == WorkSpec.MT_MultiJobs:
            return os.path.join(workspec.get_access_point(), str(panda_id))
        return workspec.get_access_point()

    def _panda_ids(self, workspec: Any) -> list[int]:
        if workspec.pandaid_list:
            return [int(p) for p in workspec.pandaid_list]
        jobs = workspec.get_jobspec_list() or []
        if jobs:
            return [int(j.PandaID) for j in jobs]
        return [int(p) for p in self.get_panda_ids(workspec)]

    # -- edge → worker ---------------------------------------------------------------------
    def setup_access_points(self, workspec_list: list[Any]) -> bool:
        try:
            for workspec in workspec_list:
                access_point = Path(workspec.get_access_point())
                if access_point.exists() and workspec.isNew:
                    shutil.rmtree(access_point, ignore_errors=True)  # leftover of an older worker
                access_point.mkdir(parents=True, exist_ok=True)
                for job in workspec.get_jobspec_list() or []:
                    Path(self.get_access_point(workspec, job.PandaID)).mkdir(exist_ok=True)
            return True
        except OSError as exc:
            log.error("setup_access_points: %s", exc)
            return False

    def feed_jobs(self, workspec: Any, jobspec_list: list[Any]) -> bool:
        ok = True
        panda_ids = []
        name = self.job_spec_file(workspec)
        for job in jobspec_list:
            try:
                target = Path(self.get_access_point(workspec, job.PandaID))
                target.mkdir(parents=True, exist_ok=True)
                _atomic_json(target / name, {str(job.PandaID): job.get_job_params(False)})
                self._link_inputs(target, job)
                panda_ids.append(job.PandaID)
            except (OSError, TypeError, ValueError) as exc:
                log.error("feed_jobs: PandaID %s: %s", getattr(job, "PandaID", "?"), exc)
                ok = False
        access_point = Path(workspec.get_access_point())
        try:
            _atomic_json(access_point / self.pandaIDsFile, panda_ids)
            (access_point / self.jobRequestFile).unlink(missing_ok=True)
        except OSError as exc:
            log.error("feed_jobs: %s", exc)
            ok = False
        if self.siteConfig and isinstance(workspec.workParams, dict) and "nodes" in workspec.workParams:
            ok = self._write_jobset(workspec, jobspec_list) and ok
        return ok

    @staticmethod
    def _link_inputs(target: Path, job: Any) -> None:
        """Each staged-in input (``FileSpec.path``, set by the preparator) linked into the job's dir,
        as Harvester's shared_file_messenger does: the payload finds it in its work dir."""
        for spec in getattr(job, "inFiles", None) or ():
            if not spec.path:
                continue
            link = target / os.path.basename(spec.lfn)
            if str(link) == spec.path:
                continue
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(spec.path, link)

    def _write_jobset(self, workspec: Any, jobspec_list: list[Any]) -> bool:
        """Our node agents' job set, so a Harvester-submitted worker runs the same agents."""
        from compass_pilot.config import config_to_dict, load_site_config
        from compass_pilot.job import JobSpec
        from hpc.jobset import write_jobset
        from hpc.packing import Placement, Submission

        try:
            site = load_site_config(self.siteConfig)
            params = workspec.workParams
            jobs = tuple(JobSpec.from_panda(j.get_job_params(False)) for j in jobspec_list)
            slots = int(params["slotsPerNode"])
            sub = Submission(
                queue=str(params["queue"]),
                nodes=int(params["nodes"]),
                slots_per_node=slots,
                walltime=int(params["walltime"]),
                jobs=jobs,
                placements=tuple(Placement(j.panda_id, i // slots, i % slots) for i, j in enumerate(jobs)),
            )
            workdirs = {j.panda_id: self.get_access_point(workspec, j.panda_id) for j in jobs}
            access_point = workspec.get_access_point()
            write_jobset(
                Path(access_point) / JOBSET_FILE,
                sub,
                config_to_dict(site),
                workdirs,
                access_point,
                report_files=jobfiles.names_from(self),
            )
            Path(access_point, "reports").mkdir(exist_ok=True)
            return True
        except Exception as exc:
            log.error("feed_jobs: cannot write the job set: %s", exc)
            return False

    # -- worker → edge ---------------------------------------------------------------------
    def get_work_attributes(self, workspec: Any) -> dict[int, dict[str, Any]]:
        """Per PandaID: worker_attributes.json, with jobReport.json under ``metaData``."""
        result: dict[int, dict[str, Any]] = {}
        for panda_id in self._panda_ids(workspec):
            directory = Path(self.get_access_point(workspec, panda_id))
            attrs: dict[str, Any] = {}
            loaded = self._load_json(directory / self.workerAttributesFile)
            if isinstance(loaded, dict):
                attrs.update(loaded)
            report = self._load_json(directory / self.jobReportFile)
            if report is not None:
                attrs["metaData"] = report
            result[panda_id] = attrs
        return result

    def get_files_to_stage_out(self, workspec: Any) -> dict[int, dict[str, list[dict[str, Any]]]]:
        """``{PandaID: {lfn: [file dict]}}`` from event_status.dump.json (renamed to .read first)."""
        files: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for panda_id in self._panda_ids(workspec):
            directory = Path(self.get_access_point(workspec, panda_id))
            path = directory / self.eventStatusDumpJsonFile
            read_path = path.with_name(path.name + READ_SUFFIX)
            if not read_path.exists():
                if not path.exists():
                    continue
                try:
                    os.rename(path, read_path)  # the worker may rewrite the original meanwhile
                except OSError as exc:
                    log.error("cannot rename %s: %s", path, exc)
                    continue
            data = self._load_json(read_path)
            if not isinstance(data, dict):
                log.error("%s: expected a mapping of PandaID to a list of files", read_path)
                read_path.unlink(missing_ok=True)
                continue
            for key, entries in data.items():
                if not isinstance(entries, list):
                    log.error("%s: entry for %s is not a list", read_path, key)
                    continue
                for entry in entries:
                    if not isinstance(entry, dict) or "path" not in entry:
                        continue
                    pfn = str(entry["path"])
                    try:
                        item = {
                            "path": pfn,
                            "type": entry.get("type", "output"),
                            "fsize": entry.get("fsize", os.stat(pfn).st_size),
                            "guid": entry.get("guid") or str(uuid.uuid4()),
                            "chksum": entry.get("chksum") or jobfiles.adler32_of(pfn),
                        }
                    except OSError as exc:
                        log.error("%s: output %s: %s", read_path, pfn, exc)
                        continue
                    if item["type"] in ("log", "output", "checkpoint"):
                        item["isZip"] = 0
                    files.setdefault(int(key), {}).setdefault(os.path.basename(pfn), []).append(item)
        return files

    def acknowledge_events_files(self, workspec: Any) -> None:
        stamp = _utcnow().strftime("%Y-%m-%d_%H_%M_%S.%f")
        for panda_id in self._panda_ids(workspec):
            read_path = Path(self.get_access_point(workspec, panda_id)) / (self.eventStatusDumpJsonFile + READ_SUFFIX)
            if read_path.exists():
                os.rename(read_path, read_path.with_name(f"{read_path.name}.{stamp}"))

    def job_requested(self, workspec: Any) -> int | bool:
        """Number of jobs the worker asks for (worker_requestjob.json ``nJobs``, 1 if unreadable), or False."""
        path = Path(workspec.get_access_point()) / self.jobRequestFile
        if not path.exists():
            return False
        data = self._load_json(path)
        try:
            return int(data["nJobs"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return 1

    def kill_requested(self, workspec: Any) -> bool:
        return (Path(workspec.get_access_point()) / self.killWorkerFile).exists()

    def is_alive(self, workspec: Any, time_limit: float) -> bool | None:
        """Heartbeat file younger than ``time_limit`` minutes; None when one is overdue but missing."""
        path = Path(workspec.get_access_point()) / self.heartbeatFile
        now = _utcnow()
        limit = datetime.timedelta(minutes=time_limit)
        if not path.exists():
            if not workspec.startTime or now - workspec.startTime < limit:
                return True  # too young to have written one
            return None
        try:
            mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC).replace(tzinfo=None)
        except OSError:
            return None
        return now - mtime <= limit

    def get_panda_ids(self, workspec: Any) -> list[int]:
        data = self._load_json(Path(workspec.get_access_point()) / self.pandaIDsFile)
        return [int(p) for p in data] if isinstance(data, list) else []

    def post_processing(self, workspec: Any, jobspec_list: list[Any], map_type: str) -> bool | None:
        """Nothing to archive: the node agents write each job's log tarball and outputs list themselves."""
        return True

    def events_requested(self, workspec: Any) -> dict[str, Any]:
        return {}  # COMPASS jobs are not event-service jobs

    def feed_events(self, workspec: Any, events_dict: dict[str, Any]) -> bool:
        return False

    def events_to_update(self, workspec: Any) -> dict[int, Any]:
        return {}

    def filter_log_tgz(self, name: str) -> bool:
        return name.endswith((".log", ".txt", ".xml", ".json")) or name.startswith("log")

    def clean_up(self, workspec: Any) -> tuple[bool | None, str]:
        access_point = Path(workspec.get_access_point())
        if not access_point.exists():
            return None, ""
        if not access_point.is_dir():
            return False, f"{access_point} is not a directory"
        try:
            shutil.rmtree(access_point)
        except OSError as exc:
            return False, f"failed to remove directory {access_point}: {exc}"
        return True, ""

    @staticmethod
    def _load_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", path, exc)
            return None
