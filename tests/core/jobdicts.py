"""Job dicts shaped exactly as the PanDA server's Protocol.appendJob builds them."""

from __future__ import annotations

from typing import Any


def reco_job_dict(panda_id: int = 4242, attempt: int = 1, **overrides: Any) -> dict[str, Any]:
    run, chunk = 275678, 11091
    outs = [
        f"mDST-{run}-{chunk}-2-7.root",
        f"{run}-{chunk}-2.root",
        f"evtdump2-{chunk}-{run}.raw",
        f"P09-{run}-{chunk}-2-7.job.log.tgz",
    ]
    data: dict[str, Any] = {
        "PandaID": panda_id,
        "jobsetID": 17,
        "taskID": 3,
        "attemptNr": attempt,
        "jobName": f"P09-2016--{run}-{chunk}-2-7-{panda_id}-{attempt}",
        "transformation": "compass-demo-reco",
        "jobPars": f"--prod P09 --year 2016 --period W14 --run {run} --chunk {chunk} --slt 2 --phast 7",
        "prodSourceLabel": "managed",
        "processingType": "reco",
        "swRelease": "slt2-phast7",
        "inFiles": f"cdr{chunk}-{run}.raw",
        "GUID": "6f1c2f0e-3a7b-4c1e-9a54-0d7c2b1e5f00",
        "fsize": "123456",
        "checksum": "ad:0a1b2c3d",
        "scopeIn": "compass",
        "realDatasetsIn": "2016/raw/W14",
        "dispatchDblock": "2016/raw/W14",
        "outFiles": ",".join(outs),
        "destinationDblock": "P09/mDST.chunks,P09/TRAFDIC,P09/evtdump/slot2,P09/logFiles",
        "realDatasets": "P09/mDST.chunks,P09/TRAFDIC,P09/evtdump/slot2,P09/logFiles",
        "scopeOut": "compass,compass,compass",
        "scopeLog": "compass",
        "logFile": outs[-1],
        "logGUID": "0e1d2c3b-4a59-4687-9a8b-7c6d5e4f3a2b",
        "maxCpuCount": 64800,
        "maxWalltime": 64800,
        "coreCount": 1,
        "minRamCount": 2000,
        "maxDiskCount": 0,
        "currentPriority": 2000,
        "destinationSE": "EOS",
        "cmtConfig": "",
    }
    data.update(overrides)
    return data


#: The job-dict fields the fuzzers perturb (tests/core/test_job.py, benchmarks/fuzz_specs.py).
FUZZ_KEYS = [
    "PandaID",
    "attemptNr",
    "inFiles",
    "GUID",
    "fsize",
    "checksum",
    "outFiles",
    "logFile",
    "scopeOut",
    "destinationDblock",
    "transformation",
    "jobPars",
    "coreCount",
    "maxCpuCount",
    "taskID",
    "realDatasetsIn",
    "currentPriority",
    "scopeLog",
    "realDatasets",
    "processingType",
]
