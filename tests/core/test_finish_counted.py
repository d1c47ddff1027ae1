"""lifecycle.finish_job with the node agent's counts: the payload's logs are not read a second time.

A COMPASS reconstruction writes MBs of log; the daemon on the MOM node used to read the last
256 KiB of stdout and of stderr again for every job of a wave only to count events the agent
had already counted.  The counts now travel in the agent's outputs dump (``nEvents``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compass_pilot import lifecycle
from compass_pilot.config import load_site_config
from compass_pilot.copytools.local import LocalCopyTool
from compass_pilot.experiment import compass
from compass_pilot.job import JobSpec
from compass_pilot.payload import PayloadResult
from harvester_plugins import jobfiles
from harvester_plugins.jobfiles import JobOutcome, OutputFile
from tests.core.jobdicts import reco_job_dict


def _ended(tmp_path: Path) -> tuple[JobSpec, Path, object, object]:
    site = load_site_config(None)
    site.storage.output_root = str(tmp_path / "eos")
    job = JobSpec.from_panda(reco_job_dict())
    workdir = tmp_path / "PandaJob_4242_1"
    workdir.mkdir()
    (workdir / lifecycle.STDOUT_NAME).write_text("12 events had been written to miniDST\nEnd of Job\n")
    (workdir / lifecycle.STDERR_NAME).write_text("")
    for spec in job.output_files:
        (workdir / spec.lfn).write_bytes(b"x" * 10)
    return job, workdir, site, LocalCopyTool(site.storage)


def _result() -> PayloadResult:
    return PayloadResult(exit_code=0, signal=None, cpu_seconds=1, max_rss=0, wall_seconds=1, start_time=1, end_time=2)


def test_the_agents_counts_are_used_and_the_logs_not_read(tmp_path: Path, monkeypatch) -> None:
    job, workdir, site, copytool = _ended(tmp_path)

    def no_reading(path: Path, limit: int = 0) -> str:
        raise AssertionError(f"read {path} again")

    monkeypatch.setattr(compass, "tail", no_reading)
    mdst = job.output_files[0].lfn
    report = lifecycle.finish_job(
        job, workdir, _result(), site, copytool, verdict=None, log_packed=True, counted=(12, {mdst: 12})
    )
    assert report.state == "finished" and report.n_events == 12
    events = {f.lfn: f.n_events for f in report.output_files}
    assert events[mdst] == 12 and all(n is None for lfn, n in events.items() if lfn != mdst)


def test_without_counts_the_logs_are_read_as_before(tmp_path: Path, monkeypatch) -> None:
    job, workdir, site, copytool = _ended(tmp_path)
    read: list[str] = []
    real_tail = compass.tail
    monkeypatch.setattr(
        compass, "tail", lambda path, limit=256 * 1024: (read.append(Path(path).name), real_tail(path))[1]
    )
    report = lifecycle.finish_job(job, workdir, _result(), site, copytool, verdict=None, log_packed=True)
    assert sorted(read) == sorted([lifecycle.STDOUT_NAME, lifecycle.STDERR_NAME])
    assert report.n_events == 12 and {f.lfn: f.n_events for f in report.output_files}[job.output_files[0].lfn] == 12


@pytest.mark.parametrize(
    ("dump", "expected"),
    [
        (
            {"7": [{"path": "/w/a.root", "type": "output", "nEvents": 5}, {"path": "/w/l.tgz", "type": "log"}]},
            {"a.root": 5},
        ),
        ({"7": [{"path": "/w/a.root", "type": "output", "nEvents": None}]}, {}),  # counted: the log named none
        ({"7": [{"path": "/w/a.root", "type": "output"}]}, None),  # an agent that did not count: read the logs
        ({"7": [{"path": "/w/a.root", "type": "output", "nEvents": "5"}]}, None),
        ({"7": [{"path": "/w/a.root", "type": "output", "nEvents": -1}]}, None),
        ({"8": [{"path": "/w/a.root", "type": "output", "nEvents": 5}]}, None),  # another job's dump
        (["not", "a", "dump"], None),
    ],
)
def test_reading_the_counts_trusts_only_a_whole_dump(tmp_path: Path, dump, expected) -> None:
    import json

    (tmp_path / jobfiles.DEFAULT_NAMES[jobfiles.OUTPUTS_KEY]).write_text(json.dumps(dump))
    assert jobfiles.read_event_counts(tmp_path, 7) == expected


def test_a_torn_or_missing_dump_reads_as_not_counted(tmp_path: Path) -> None:
    assert jobfiles.read_event_counts(tmp_path, 7) is None
    (tmp_path / jobfiles.DEFAULT_NAMES[jobfiles.OUTPUTS_KEY]).write_text('{"7": [{"pa')
    assert jobfiles.read_event_counts(tmp_path, 7) is None


def test_the_agents_dump_round_trips_its_counts(tmp_path: Path) -> None:
    (tmp_path / "a.root").write_bytes(b"abc")
    (tmp_path / "b.root").write_bytes(b"abc")
    outcome = JobOutcome(7, 1, "finished", n_events=5, start_time=1, end_time=2)
    outcome.outputs = [
        OutputFile.of(tmp_path / "a.root", "output", "g1", 5),
        OutputFile.of(tmp_path / "b.root", "output", "g2", None),
    ]
    jobfiles.write_outcome(tmp_path, outcome, durable=False)
    assert jobfiles.read_event_counts(tmp_path, 7) == {"a.root": 5}
