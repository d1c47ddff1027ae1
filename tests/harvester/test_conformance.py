"""Harvester's agent cycle over our plugins, as CI can run it (no HSF/harvester here).

The conformance script replays the agents' calls through ``compat`` on radical.saga's
real fork:// backend, with jobs from the embedded dispatcher and real payloads through
real node agents.  The preparator and stager also run alone on both copytools, the
XRootD one against a real xrootd server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from compass_pilot.copytools.xrootd_server import XRootDServer
from compass_pilot.errors import ErrorCode
from harvester_plugins import compat, jobfiles
from harvester_plugins.preparator import CopytoolPreparator
from harvester_plugins.stager import CopytoolStager
from tests.copytools.conftest import require_xrootd_binaries
from tests.core.jobdicts import reco_job_dict

ROOT = Path(__file__).resolve().parents[2]


def test_six_jobs_end_with_their_true_outcome_and_five_jobs_make_one_worker(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "harvester_conformance.py"), "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    rows = {r["PandaID"]: r for r in report["rows"]}
    assert (
        sorted(r["expected"] for r in rows.values()) == ["failed 1305", "failed 1305", "failed 1331"] + ["finished"] * 3
    )
    for row in rows.values():
        status = row["harvester"].split("/")[0]
        if row["expected"] == "finished":
            assert (status, row["code"], row["outputs"]) == ("finished", 0, "3/3 adler32 ok"), row
        else:
            assert f"{status} {row['code']}" == row["expected"], row  # a failing payload ends failed with its code
    assert [w["nJobs"] for w in report["workers"]] == [5]  # the job with a missing input never reached a worker
    assert report["sizing_5_waiting"] == [5]


def _job(storage_root: Path, data: bytes = b"raw bytes") -> Any:
    """A Harvester JobSpec for a reco job whose raw input is in ``storage_root``."""
    job_dict = reco_job_dict(7001, fsize=str(len(data)), checksum=f"ad:{zlib.adler32(data):08x}")
    raw = storage_root / job_dict["realDatasetsIn"] / job_dict["inFiles"]
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(data)
    return compat.add_input_files(compat.job_spec_from_panda(job_dict))


def _with_outputs(job: Any, workdir: Path) -> list[Any]:
    """Out FileSpecs as Harvester makes them from a node agent's event_status.dump.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, lfn in enumerate(job.jobParams["outFiles"].split(",")):
        path = workdir / lfn
        path.write_bytes(f"payload output {i}\n".encode())
        kind = "log" if lfn == job.jobParams["logFile"] else "output"
        files.append(jobfiles.OutputFile.of(path, kind, f"guid-{i}"))
    ws = compat.WorkSpec()
    ws.mapType, ws.workerID = compat.WorkSpec.MT_MultiJobs, 1
    ws.workAttributes = {job.PandaID: {"jobStatus": "finished", "pilotErrorCode": 0}}
    ws.status = compat.WorkSpec.ST_finished
    staged = {job.PandaID: {f.lfn: [{**f.to_dict(), "isZip": 0}] for f in files}}
    compat.update_job_attributes_with_workers(ws.mapType, [job], [ws], {1: staged})
    return files


def test_local_stage_in_checks_and_links_then_stage_out_verifies(tmp_path: Path) -> None:
    storage = {"copytool": "local", "input_root": str(tmp_path / "castor"), "output_root": str(tmp_path / "eos")}
    job = _job(tmp_path / "castor")
    prep = {"storage": storage, "localBasePath": str(tmp_path / "inputs")}
    assert CopytoolPreparator(**prep).trigger_preparation(job) == (True, "")
    assert CopytoolPreparator(**prep).check_stage_in_status(job) == (True, "")
    assert CopytoolPreparator(**prep).resolve_input_paths(job) == (True, "")
    (in_file,) = job.inFiles
    assert Path(in_file.path).read_bytes() == b"raw bytes" and job.jobParams["inFilePaths"] == in_file.path
    files = _with_outputs(job, tmp_path / "worker" / "7001")
    assert CopytoolStager(storage=storage).trigger_stage_out(job) == (True, "")
    assert CopytoolStager(storage=storage).check_stage_out_status(job) == (True, "")
    for spec, listed in zip(sorted(job.outFiles, key=lambda f: f.lfn), sorted(files, key=lambda f: f.lfn), strict=True):
        dest = Path(spec.fileAttributes["surl"])
        assert spec.status == "finished" and dest.is_file() and dest.is_relative_to(tmp_path / "eos")
        assert jobfiles.adler32_of(dest) == spec.chksum == listed.chksum


def test_bad_checksum_at_stage_in_and_changed_output_at_stage_out_fail_with_our_codes(tmp_path: Path) -> None:
    storage = {"copytool": "local", "input_root": str(tmp_path / "castor"), "output_root": str(tmp_path / "eos")}
    job = _job(tmp_path / "castor")
    (tmp_path / "castor" / job.jobParams["realDatasetsIn"] / job.jobParams["inFiles"]).write_bytes(b"raw bytez")
    status, diag = CopytoolPreparator(storage=storage, localBasePath=str(tmp_path / "in")).trigger_preparation(job)
    assert status is False and job.get_one_attribute("pilotErrorCode") == ErrorCode.CHECKSUM_MISMATCH, diag
    job = _job(tmp_path / "castor2")
    files = _with_outputs(job, tmp_path / "w" / "7001")
    Path(files[0].path).write_bytes(b"changed after the node listed it\n")
    status, diag = CopytoolStager(storage=storage).trigger_stage_out(job)
    assert status is False and "the node listed" in diag
    assert job.get_one_attribute("pilotErrorCode") == ErrorCode.STAGE_OUT_FAILED  # overwrote the payload's 0
    assert CopytoolStager(storage=storage).check_stage_out_status(job)[0] is False


@pytest.fixture(scope="module")
def xrootd() -> Any:
    require_xrootd_binaries()
    with XRootDServer() as server:
        yield server


def test_xrootd_stage_in_and_out(xrootd: XRootDServer, tmp_path: Path) -> None:
    assert xrootd.data is not None
    storage = {
        "copytool": "xrootd",
        "input_root": f"{xrootd.url}/castor",
        "output_root": f"{xrootd.url}/eos",
        "retries": 1,
        "timeout": 30,
    }
    job = _job(xrootd.data / "castor")
    prep = {"storage": storage, "localBasePath": str(tmp_path / "inputs")}
    assert CopytoolPreparator(**prep).trigger_preparation(job) == (True, "")
    assert CopytoolPreparator(**prep).resolve_input_paths(job) == (True, "")
    assert Path(next(iter(job.inFiles)).path).read_bytes() == b"raw bytes"
    _with_outputs(job, tmp_path / "worker" / "7001")
    assert CopytoolStager(storage=storage).trigger_stage_out(job) == (True, "")
    for spec in job.outFiles:
        dest = xrootd.data / "eos" / job.jobParams["destinationDblock"].split(",")[0]
        assert spec.status == "finished" and spec.fileAttributes["surl"].startswith("root://")
    assert any((xrootd.data / "eos").rglob("mDST-*.root")) and dest.is_dir()
    job = _job(xrootd.data / "castor", b"other")
    (xrootd.data / "castor" / job.jobParams["realDatasetsIn"] / job.jobParams["inFiles"]).unlink()
    status, _ = CopytoolPreparator(**prep).trigger_preparation(job)
    assert status is False and job.get_one_attribute("pilotErrorCode") == ErrorCode.MISSING_INPUT


def test_sweep_removes_the_workers_staged_inputs(tmp_path: Path) -> None:
    from harvester_plugins.sweeper import SagaSweeper

    ap, inputs = tmp_path / "worker" / "9", tmp_path / "inputs"
    ap.mkdir(parents=True)
    (ap / "worker_pandaids.json").write_text("[7001]")
    (inputs / "7001").mkdir(parents=True)
    (inputs / "7001" / "cdr.raw").write_bytes(b"x")
    (inputs / "7002").mkdir()  # another worker's job: kept
    ws = compat.WorkSpec()
    ws.workerID, ws.accessPoint = 9, str(ap)
    assert SagaSweeper(localBasePath=str(inputs)).sweep_worker(ws) == (True, "")
    assert not ap.exists() and not (inputs / "7001").exists() and (inputs / "7002").is_dir()
