"""What our pilots send is what today's server reads: per-file events, pilot ID, node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from compass_pilot.config import PandaSection, load_site_config
from compass_pilot.job import JobReport, OutputFileReport
from compass_pilot.panda.client import PandaClient, make_pilot_id, update_fields
from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from tests.tasks import chunk_paths, reco_task


def report_with_files(panda_id: int, attempt: int) -> JobReport:
    files = [
        OutputFileReport("mDST-275678-11001-2-7.root", "g1", 100, "0000abcd", "root://eos/x", 200),
        OutputFileReport("evtdump2-11001-275678.raw", "g2", 10, "0000abce", "root://eos/y", 20),
    ]
    return JobReport(panda_id, "finished", attempt, n_events=200, output_files=files)


@pytest.mark.parametrize("dialect", ["legacy", "v1"])
def test_per_file_events_go_in_the_job_report_the_adder_reads(dialect: str) -> None:
    fields = update_fields(report_with_files(1, 1), dialect)
    meta = json.loads(fields["metaData" if dialect == "legacy" else "meta_data"])
    subs = {s["name"]: s["nentries"] for item in meta["files"]["output"] for s in item["subFiles"]}
    assert subs == {"mDST-275678-11001-2-7.root": 200, "evtdump2-11001-275678.raw": 20}


@pytest.mark.parametrize("dialect", ["legacy", "v1"])
def test_dispatcher_stores_each_files_own_count_and_the_pilot(tmp_path: Path, dialect: str) -> None:
    db = str(tmp_path / "p.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60).start()
    try:
        submit_task(db, reco_task(chunk_paths(1)))
        site = load_site_config(None)
        site.panda.url, site.panda.dialect = dispatcher.url, dialect
        client = PandaClient(site.panda, site.site, node="wn042.example.org", pilot_id=make_pilot_id("grid"))
        (job,) = client.get_jobs(1)
        pid = int(job["PandaID"])
        assert client.update_job(report_with_files(pid, 1)).ok
        row = dispatcher.job(pid)
        events = {lfn: e["nevents"] for lfn, e in json.loads(row["output_report"]).items()}
        assert events == {"mDST-275678-11001-2-7.root": 200, "evtdump2-11001-275678.raw": 20}
        assert row["node"] == "wn042.example.org" and row["pilot_id"].startswith("compass-grid-")
    finally:
        dispatcher.stop()


def test_the_server_reads_nentries_only_from_the_job_report(tmp_path: Path) -> None:
    """A file report's own ``nevents`` is overridden by the job report's count, as the Adder does."""
    db = str(tmp_path / "p.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60).start()
    try:
        submit_task(db, reco_task(chunk_paths(1)))
        url = f"{dispatcher.url}/server/panda"
        job = requests.post(f"{url}/getJob", data={"siteName": "S"}, headers={"Accept": "application/json"}).json()
        xml = {"a.root": {"guid": "g", "fsize": 1, "adler32": "1", "nevents": 999}}
        meta = {"files": {"output": [{"subFiles": [{"name": "a.root", "nentries": 7}]}]}}
        form = {"jobId": job["PandaID"], "state": "finished", "attemptNr": 1}
        requests.post(f"{url}/updateJob", data={**form, "xml": json.dumps(xml), "metaData": json.dumps(meta)})
        assert json.loads(dispatcher.job(job["PandaID"])["output_report"])["a.root"]["nevents"] == 7
    finally:
        dispatcher.stop()


def test_pilot_id_has_pilot3s_shape(monkeypatch) -> None:
    monkeypatch.setenv("GTAG", "https://factory.example.org/logs/123.out")
    assert make_pilot_id("grid", "PR").startswith("https://factory.example.org/logs/123.out|PR|compass-pilot ")
    monkeypatch.delenv("GTAG")
    assert make_pilot_id("daemon").startswith("compass-daemon-")


def test_new_site_configs_speak_v1() -> None:
    assert PandaSection().dialect == "v1"
    assert load_site_config(None).panda.dialect == "v1"
