"""The job log tarball: what COMPASS stages out as the job's logFile."""

from __future__ import annotations

import dataclasses
import tarfile
from pathlib import Path

import pytest

from compass_pilot import logpack
from compass_pilot.job import JobSpec
from tests.core.jobdicts import reco_job_dict


@pytest.mark.parametrize("big", [False, True], ids=["in-memory", "streamed"])
def test_log_tarball_holds_the_logs_under_the_job_name(tmp_path: Path, monkeypatch, big: bool) -> None:
    job = JobSpec.from_panda(reco_job_dict())
    assert job.log_file is not None
    if big:
        monkeypatch.setattr(logpack, "IN_MEMORY", 10)
    logs = {"payload.stdout": b"out\n" * 5000, "payload.stderr": b"", "coral.log": b"coral says hi\n"}
    for name, data in logs.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "mDST.root").write_bytes(b"not a log")
    (tmp_path / "old.log").mkdir()  # a directory that looks like a log: not packed
    target = logpack.pack_log(job, tmp_path)
    assert target == tmp_path / job.log_file.lfn
    with tarfile.open(target, "r:gz") as tar:
        names = tar.getnames()
        assert names == sorted(f"{job.job_name}/{name}" for name in logs)
        for name, data in logs.items():
            member = tar.getmember(f"{job.job_name}/{name}")
            assert member.isfile() and member.size == len(data)
            assert tar.extractfile(member).read() == data  # type: ignore[union-attr]


def test_no_log_file_no_tarball_and_an_unwritable_dir_is_no_error(tmp_path: Path) -> None:
    job = JobSpec.from_panda(reco_job_dict())
    assert logpack.pack_log(dataclasses.replace(job, log_file=None), tmp_path) is None
    assert logpack.pack_log(job, tmp_path / "gone") is None  # logged; the job's other results still count
    assert list(tmp_path.iterdir()) == []
