"""Made-up GUIDs stay the uuid5 values pilots and earlier dispatchers computed for the same files."""

from __future__ import annotations

import uuid

import pytest

from compass_pilot.panda.jobdict import _NS, complete, made_up_guid


@pytest.mark.parametrize("name", ["compass:cdr11001-200000.raw", "7/2/P09-1.job.log.tgz", "", "üñï:cödé"])
def test_made_up_guid_is_uuid5(name: str) -> None:
    assert made_up_guid(name) == str(uuid.uuid5(_NS, name))


def test_a_retried_job_names_the_same_input_guids_and_a_new_log_guid() -> None:
    spec = {"inFiles": "a.raw,b.raw", "outFiles": "o.root,x.log.tgz", "logFile": "x.log.tgz"}
    first, retry = complete(dict(spec), 7, 1, 0), complete(dict(spec), 7, 2, 0)
    assert (
        first["GUID"] == retry["GUID"] == ",".join(str(uuid.uuid5(_NS, f"compass:{lfn}")) for lfn in ("a.raw", "b.raw"))
    )
    assert first["logGUID"] != retry["logGUID"]
    assert first["scopeOut"] == "compass" and first["fsize"] == "0,0" and first["destinationSE"] == "NULL"
