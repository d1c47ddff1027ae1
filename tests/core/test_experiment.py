"""The COMPASS plug-in: commands, failure patterns → codes, event counts, storage paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from compass_pilot.config import JobScriptSection, PayloadSection, load_site_config
from compass_pilot.errors import BadJobSpec, ConfigError, ErrorCode, PilotError
from compass_pilot.experiment import compass
from compass_pilot.job import JobSpec
from compass_pilot.payload import PayloadResult
from tests.core.jobdicts import reco_job_dict

OK = PayloadResult(exit_code=0, signal=None, cpu_seconds=1, max_rss=1, wall_seconds=1)


def test_demo_command_uses_job_names(tmp_path: Path) -> None:
    job = JobSpec.from_panda(reco_job_dict())
    cmd, env = compass.payload_command(job, tmp_path, {"COMPASS_CALIB_DSN": "x"})
    assert cmd[1:3] == ["-m", "compass_pilot.demo.reco"]
    assert str(tmp_path / "cdr11091-275678.raw") in cmd and "mDST-275678-11091-2-7.root" in cmd
    assert env["COMPASS_CALIB_DSN"] == "x" and env["TMPRAWFILE"].endswith("cdr11091-275678.raw")
    assert env["EVTDUMPFILE"] == "evtdump2-11091-275678.raw" and env["PANDAID"] == "4242"


def test_prodsys_command_is_release_script_plus_argv(tmp_path: Path) -> None:
    script = tmp_path / "sw" / "slt2-phast7" / "bin" / "run.sh"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    policy = PayloadSection(release_root=str(tmp_path / "sw"), scripts=[JobScriptSection("reco", "bin/run.sh")])
    job = JobSpec.from_panda(reco_job_dict(transformation="run.sh", jobPars="-a 1 'x; y'"))
    cmd, _ = compass.payload_command(job, tmp_path, {}, policy)
    assert cmd == [str(script), "-a", "1", "x; y"]


def test_unlisted_transformation_is_refused(tmp_path: Path) -> None:
    job = JobSpec.from_panda(reco_job_dict(transformation="/cvmfs/compass/run.sh", jobPars="-a 1"))
    with pytest.raises(PilotError) as err:
        compass.payload_command(job, tmp_path, {})
    assert err.value.code == ErrorCode.TRANSFORM_NOT_ALLOWED


def test_hostile_job_pars_refused(tmp_path: Path) -> None:
    job = JobSpec.from_panda(reco_job_dict(jobPars="--run 1;rm -rf /"))
    with pytest.raises(BadJobSpec) as err:
        compass.payload_command(job, tmp_path, {})
    assert err.value.field == "jobPars"


@pytest.mark.parametrize(
    ("stdout", "stderr", "code"),
    [
        ("A FATAL ERROR APPEARED\n", "", ErrorCode.COMPASS_FATAL_ERROR),
        ("", "coral.exe: core dumped\n", ErrorCode.COMPASS_CORE_DUMP),
        ("DaqEventsManager::GetEvent(): no event\n", "", ErrorCode.COMPASS_NO_EVENT),
        ("Abnormal job termination. Exception #2\n", "", ErrorCode.COMPASS_EXCEPTION_2),
        ("Cannot Allocate\n", "", ErrorCode.COMPASS_CANNOT_ALLOCATE),
        ("_LEDinSpills empty string from calib file\n", "", ErrorCode.COMPASS_LED_IN_SPILLS),
        ("CDB: can't connect to CDB database\n", "", ErrorCode.CALIBDB_UNAVAILABLE),
        ("readCalibration(): run 5 bad line\n", "", ErrorCode.COMPASS_BAD_CALIB_LINE),
        ("", "Killed  coral.exe\n", ErrorCode.COMPASS_KILLED),
        ("CORAL exiting with return code -3\n", "", ErrorCode.COMPASS_RETURN_CODE_3),
        ("", "Aborted\n", ErrorCode.COMPASS_ABORTED),
        ("12 events had been written to miniDST\n", "", ErrorCode.COMPASS_NO_END_MARKER),
    ],
)
def test_failure_patterns(stdout: str, stderr: str, code: int) -> None:
    job = JobSpec.from_panda(reco_job_dict())
    verdict = compass.check_payload_output(job, stdout, stderr, OK)
    assert verdict is not None and verdict[0] == code


def test_success_needs_marker_and_counts_events() -> None:
    job = JobSpec.from_panda(reco_job_dict())
    out = "x\n200 events had been written to miniDST\nEnd of Job\n"
    assert compass.check_payload_output(job, out, "", OK) is None
    assert compass.count_events(job, out) == 200
    assert compass.count_events(job, "Number of events saved to output : 1234\n") == 1234
    assert compass.count_events(job, "nothing") is None
    ddd = JobSpec.from_panda(reco_job_dict(processingType="ddd"))
    assert compass.check_payload_output(ddd, "End of Job\n", "", OK)[0] == ErrorCode.COMPASS_NO_END_MARKER
    assert compass.check_payload_output(ddd, "End of the decoding!\n", "", OK) is None


def test_storage_paths_come_from_datasets_and_are_checked() -> None:
    job = JobSpec.from_panda(reco_job_dict())
    assert compass.input_src_path(job, job.input_files[0]) == "2016/raw/W14/cdr11091-275678.raw"
    assert compass.output_dest_path(job, job.output_files[0]) == "P09/mDST.chunks/mDST-275678-11091-2-7.root"
    for bad in ("/etc", "a/../../b", "a//b", "./x"):
        evil = JobSpec.from_panda(reco_job_dict(realDatasetsIn=bad, dispatchDblock=bad))
        with pytest.raises(BadJobSpec):
            compass.input_src_path(evil, evil.input_files[0])


def test_site_config_errors_name_file_key_and_type(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("panda:\n  timeout: soon\n")
    with pytest.raises(ConfigError, match=r"site.yaml: panda.timeout: expected a number"):
        load_site_config(bad)
    bad.write_text("hpc:\n  queues:\n    - name: long\n      walltime: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'hpc.queues\[0\].walltime'"):
        load_site_config(bad)
    bad.write_text("panda:\n  dialect: v2\n")
    with pytest.raises(ConfigError, match=r"panda\.dialect"):
        load_site_config(bad)
    bad.write_text("hpc:\n  max_jobs: 600\n")
    with pytest.raises(ConfigError, match=r"hpc\.max_jobs"):
        load_site_config(bad)
    assert load_site_config(Path(__file__).parents[2] / "site_configs" / "local.yaml").site.name == "LOCAL_COMPASS"
