"""JobSpec parsing from PanDA's job dict: the fields, the lists, and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compass_pilot.errors import BadJobSpec
from compass_pilot.job import JobReport, JobSpec, OutputFileReport, check_file_name, parse_job
from tests.core.jobdicts import FUZZ_KEYS, reco_job_dict


def test_parses_the_server_fields() -> None:
    job = JobSpec.from_panda(reco_job_dict())
    assert job.panda_id == 4242 and job.attempt_nr == 1 and job.task_id == 3 and job.jobset_id == 17
    assert job.job_type == "reco"
    assert [f.lfn for f in job.input_files] == ["cdr11091-275678.raw"]
    assert job.input_files[0].checksum == "ad:0a1b2c3d" and job.input_files[0].adler32 == "0a1b2c3d"
    assert job.input_files[0].fsize == 123456 and job.input_files[0].dataset == "2016/raw/W14"
    # the log is in outFiles on the wire but separate here, with scopeLog
    assert [f.lfn for f in job.output_files] == [
        "mDST-275678-11091-2-7.root",
        "275678-11091-2.root",
        "evtdump2-11091-275678.raw",
    ]
    assert job.log_file is not None and job.log_file.kind == "log" and job.log_file.dblock == "P09/logFiles"
    assert job.output_files[2].dblock == "P09/evtdump/slot2"
    assert job.walltime_limit == 64800


def test_numbers_arrive_as_strings_too() -> None:
    job = JobSpec.from_panda(reco_job_dict(PandaID="77", attemptNr="3", coreCount="NULL", maxCpuCount="0"))
    assert (job.panda_id, job.attempt_nr, job.core_count, job.walltime_limit) == (77, 3, 1, 64800)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"PandaID": None}, "PandaID"),
        ({"PandaID": "abc"}, "PandaID"),
        ({"PandaID": True}, "PandaID"),
        ({"transformation": None}, "transformation"),
        ({"attemptNr": -1}, "attemptNr"),
        ({"fsize": "1,2"}, "fsize"),
        ({"fsize": "x"}, "fsize"),
        ({"GUID": "a,b"}, "GUID"),
        ({"checksum": "sha1:abc"}, "checksum"),
        ({"scopeOut": "compass"}, "scopeOut"),
        ({"destinationDblock": "a,b"}, "destinationDblock"),
        ({"logFile": "other.tgz"}, "logFile"),
        ({"inFiles": ["a.raw", "b.raw"]}, "GUID"),
        ({"jobPars": {"a": 1}}, "jobPars"),
        ({"maxCpuCount": "1e9"}, "maxCpuCount"),
    ],
)
def test_bad_fields_are_named(override: dict, field: str) -> None:
    with pytest.raises(BadJobSpec) as err:
        parse_job(reco_job_dict(**override))
    assert err.value.field == field
    assert field in str(err.value)


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "a/b.raw", "..", "a..b", "x\x00y", "with space.raw", "tab\t.raw", "-rf", "new\nline", "", "\x7f"],
)
def test_hostile_file_names_refused(name: str) -> None:
    with pytest.raises(BadJobSpec):
        check_file_name(name, "inFiles")
    data = reco_job_dict(
        inFiles=name, GUID="g", fsize="1", checksum="ad:00000001", scopeIn="s", realDatasetsIn="d", dispatchDblock="d"
    )
    with pytest.raises(BadJobSpec) as err:
        parse_job(data)
    assert err.value.panda_id == 4242  # still reportable as failed


def test_not_a_dict() -> None:
    for value in (None, [], "PandaID=1", 3):
        with pytest.raises(BadJobSpec) as err:
            parse_job(value)
        assert err.value.panda_id is None


def test_report_round_trip_and_file_report() -> None:
    report = JobReport(
        5, "finished", 2, n_events=10, output_files=[OutputFileReport("a.root", "g", 12, "0000000c", "/eos/a.root", 10)]
    )
    again = JobReport.from_dict(report.to_dict())
    assert again == report
    assert again.file_report() == {
        "a.root": {"guid": "g", "fsize": 12, "adler32": "0000000c", "surl": "/eos/a.root", "nevents": 10}
    }
    with pytest.raises(ValueError):
        JobReport(5, "done", 1)


_text = st.one_of(
    st.none(),
    st.integers(-5, 10**6),
    st.text(max_size=30),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_keys = st.sampled_from(FUZZ_KEYS)


@settings(max_examples=10_000, deadline=None)
@given(st.dictionaries(_keys, _text, max_size=8))
def test_fuzzed_specs_never_crash(overrides: dict) -> None:
    """Whatever the server sends, the pilot's spec handling either works or raises BadJobSpec."""
    check_fuzzed_spec(reco_job_dict(**overrides))


def check_fuzzed_spec(data: dict) -> bool:
    """True if the spec was runnable, False if refused with BadJobSpec; anything else propagates."""
    from pathlib import Path

    from compass_pilot.experiment import compass

    try:
        job = parse_job(data)
        for spec in job.input_files:
            compass.input_src_path(job, spec)
        for spec in job.output_files:
            compass.output_dest_path(job, spec)
        compass.payload_command(job, Path("/nonexistent/work"), {})
    except BadJobSpec:
        return False
    for spec in (*job.input_files, *job.output_files):
        check_file_name(spec.lfn, "lfn")
    return True


def test_new_guid_is_a_random_rfc4122_uuid_in_its_text_form() -> None:
    import uuid

    from compass_pilot.job import new_guid

    guids = [new_guid() for _ in range(500)]
    assert len(set(guids)) == 500
    for guid in guids:
        parsed = uuid.UUID(guid)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == guid
