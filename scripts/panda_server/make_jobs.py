"""Our job dicts (stdin, JSON list) → the real server's ``JobUtils.dump_jobs_json`` of JobSpecs (stdout).

Runs with the panda-server venv's Python (it imports pandaserver).  Each job dict carries
the getJob field names our task rules produce (``compass_pilot/panda/jobdict.py``); the
per-file comma lists become FileSpecs, as JEDI would have defined them.
"""

import json
import sys

from pandaserver.taskbuffer import JobUtils
from pandaserver.taskbuffer.FileSpec import FileSpec
from pandaserver.taskbuffer.JobSpec import JobSpec


def split(job: dict, key: str) -> list[str]:
    value = str(job.get(key) or "")
    return value.split(",") if value else []


def job_spec(job: dict, site: str) -> JobSpec:
    spec = JobSpec()
    spec.jobDefinitionID = int(job.get("taskID") or 1)
    spec.jobName = job["jobName"]
    spec.transformation = job["transformation"]
    spec.jobParameters = job["jobPars"]
    spec.AtlasRelease = job.get("swRelease") or "NULL"
    spec.homepackage = "NULL"
    spec.destinationDBlock = "compass.outputs"
    spec.destinationSE = site
    spec.computingSite = site
    spec.prodSourceLabel = "managed"
    spec.processingType = job.get("processingType") or "reco"
    spec.currentPriority = int(job.get("currentPriority") or 1000)
    spec.assignedPriority = spec.currentPriority
    spec.attemptNr = 1
    spec.maxAttempt = 1
    spec.coreCount = int(job.get("coreCount") or 1)
    spec.maxCpuCount = int(job.get("maxCpuCount") or 3600)
    spec.maxWalltime = int(job.get("maxWalltime") or 3600)
    spec.minRamCount = int(job.get("minRamCount") or 0)
    spec.maxDiskCount = int(job.get("maxDiskCount") or 0)
    spec.VO = "compass"
    spec.cloud = "CERN"
    spec.prodDBlock = "compass.raw"
    spec.jobsetID = int(job.get("jobsetID") or 1)
    spec.job_label = "managed"
    for lfn, dataset, guid in zip(
        split(job, "inFiles"), split(job, "realDatasetsIn"), split(job, "GUID"), strict=False
    ):
        f = FileSpec()
        f.lfn, f.type, f.dataset, f.prodDBlock, f.dispatchDBlock = lfn, "input", dataset, dataset, dataset
        f.GUID, f.scope, f.fsize, f.status = guid, "compass", 0, "ready"
        spec.addFile(f)
    log_file = job.get("logFile") or ""
    for lfn, dataset in zip(split(job, "outFiles"), split(job, "destinationDblock"), strict=False):
        f = FileSpec()
        f.lfn, f.dataset, f.destinationDBlock, f.destinationSE = lfn, dataset, dataset, site
        f.type = "log" if lfn == log_file else "output"
        f.scope = "compass"
        spec.addFile(f)
    return spec


def main() -> None:
    site = sys.argv[1]
    jobs = json.load(sys.stdin)
    print(JobUtils.dump_jobs_json([job_spec(job, site) for job in jobs]))


if __name__ == "__main__":
    main()
