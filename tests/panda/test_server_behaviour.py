"""The dispatcher answers as today's PanDA server does, request by request, over real HTTP.

Every expectation here was read from panda-server (``server/panda.py`` request handling,
``jobdispatcher/JobDispatcher.py`` + ``Protocol.py`` before the legacy dispatcher was
removed, ``api/v1/pilot_api.py``): requests are built by hand the way pilot3 ≥ 3.10 and
Harvester send them, not through our client.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests

from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from tests.tasks import chunk_paths, reco_task

JSON = {"Accept": "application/json"}


@pytest.fixture
def served(tmp_path: Path):
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60, retry_delay=3600).start()
    try:
        yield dispatcher, db
    finally:
        dispatcher.stop()


def post(url: str, data=None, *, gz: dict | None = None, headers: dict | None = None) -> requests.Response:
    """POST a form, or (``gz``) a gzip-compressed JSON body with no Content-Encoding, as pilot3 ≥ 3.10."""
    if gz is not None:
        body = gzip.compress(json.dumps(gz).encode())
        return requests.post(
            url, data=body, headers={"Content-Type": "application/json", **(headers or {})}, timeout=10
        )
    return requests.post(url, data=data, headers=headers or {}, timeout=10)


def get_one(dispatcher: Dispatcher) -> dict:
    answer = post(f"{dispatcher.url}/server/panda/getJob", gz={"siteName": "S", "node": "wn1", "getProxyKey": False})
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    fields = {k: v[0] for k, v in parse_qs(answer.text, keep_blank_values=True).items()}
    assert fields["StatusCode"] == "0"
    return fields


def test_gzip_json_without_content_encoding_on_the_legacy_paths(served) -> None:
    dispatcher, db = served
    submit_task(db, reco_task(chunk_paths(2), max_attempts=1))
    job = get_one(dispatcher)  # no Accept: JSON → k=v text, as the server answers pilot3's request2
    panda_id = int(job["PandaID"])
    update = {"jobId": panda_id, "state": "running", "attemptNr": 1, "node": "wn1", "pilotID": "p|1", "debug": True}
    reply = post(f"{dispatcher.url}/server/panda/updateJob", gz=update)
    assert parse_qs(reply.text) == {"StatusCode": ["0"], "command": ["NULL"]}
    assert dispatcher.job(panda_id)["status"] == "running"
    # with Content-Encoding too, and the JSON answer when asked for it
    final = {"jobId": panda_id, "state": "finished", "attemptNr": 1, "startTime": "2026-12-02 10:00:00"}
    reply = post(
        f"{dispatcher.url}/server/panda/updateJob", gz=final, headers={"Content-Encoding": "gzip", **JSON}
    ).json()
    assert reply == {"StatusCode": 0, "command": "NULL"}
    assert dispatcher.job(panda_id)["status"] == "finished"
    # a JSON body that is not gzip: the server fails to decompress it (500, text)
    plain = requests.post(
        f"{dispatcher.url}/server/panda/updateJob", json=final, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert plain.status_code == 500 and plain.text.startswith("ERROR : ")


def test_booleans_become_the_strings_a_form_would_carry(served) -> None:
    dispatcher, db = served
    submit_task(db, reco_task(chunk_paths(1)))
    job = get_one(dispatcher)
    reply = post(
        f"{dispatcher.url}/server/panda/updateJob",
        gz={"jobId": int(job["PandaID"]), "state": "failed", "attemptNr": 1, "pilotErrorCode": 1305, "x": False},
        headers=JSON,
    ).json()
    assert reply["StatusCode"] == 0  # no type error on the boolean


def test_get_status_shape(served) -> None:
    dispatcher, db = served
    submit_task(db, reco_task(chunk_paths(2)))
    a = int(get_one(dispatcher)["PandaID"])
    reply = post(f"{dispatcher.url}/server/panda/getStatus", gz={"ids": f"{a} 999999"}, headers=JSON)
    # always k=v text, '+'-joined, notfound / 0 for an unknown id, even when JSON is accepted
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.text == "StatusCode=0&status=sent%2Bnotfound&attemptNr=1%2B0"
    assert parse_qs(reply.text) == {"StatusCode": ["0"], "status": ["sent+notfound"], "attemptNr": ["1+0"]}


def test_worker_pilot_status_both_dialects(served) -> None:
    dispatcher, _ = served
    form = {"site": "S", "workerID": "7", "harvesterID": "h1", "status": "started", "node_id": "wn1"}
    reply = post(f"{dispatcher.url}/server/panda/updateWorkerPilotStatus", gz=form, headers=JSON)
    assert reply.json() == {"StatusCode": 0}
    bad = post(f"{dispatcher.url}/server/panda/updateWorkerPilotStatus", data={**form, "status": "running"})
    assert bad.status_code == 200 and bad.text.startswith("Invalid worker state")
    v1 = requests.post(
        f"{dispatcher.url}/api/v1/pilot/update_worker_status",
        json={"worker_id": "7", "harvester_id": "h1", "status": "finished"},
        timeout=10,
    ).json()
    assert v1 == {"success": True, "message": "", "data": None}
    rows = dispatcher.store.query("SELECT harvester_id, worker_id, status, node_id FROM workers")
    assert rows == [{"harvester_id": "h1", "worker_id": "7", "status": "finished", "node_id": "wn1"}]
    node = requests.post(
        f"{dispatcher.url}/api/v1/pilot/update_worker_node",
        json={"site": "S", "host_name": "slot1@wn1.example.org", "cpu_model": "AMD EPYC", "n_logical_cpus": 8},
        timeout=10,
    ).json()
    assert node["success"] is True
    assert dispatcher.store.query("SELECT host_name FROM worker_nodes") == [{"host_name": "wn1.example.org"}]
    missing = requests.post(f"{dispatcher.url}/api/v1/pilot/update_worker_node", json={"site": "S"}, timeout=10)
    assert missing.json()["success"] is False and "host_name" in missing.json()["message"]


def test_proxy_and_key_pair_when_there_is_nothing_to_give(served) -> None:
    dispatcher, _ = served
    proxy = post(f"{dispatcher.url}/server/panda/getProxy", gz={"role": "production"})
    assert proxy.json() == {"StatusCode": 70, "errorDialog": "Cannot extract DN from proxy. not HTTPS?"}
    keys = post(f"{dispatcher.url}/server/panda/getKeyPair", data={"publicKeyName": "a", "privateKeyName": "b"})
    assert parse_qs(keys.text)["StatusCode"] == ["70"]


@pytest.mark.parametrize("path", ["/server/panda/getEventRanges", "/server/panda/nosuch", "/api/v1/pilot/nosuch"])
def test_unknown_methods_are_forbidden_text(served, path: str) -> None:
    dispatcher, _ = served
    reply = requests.post(f"{dispatcher.url}{path}", data={"a": "b"}, timeout=10)
    assert reply.status_code == 403 and reply.headers["Content-Type"].startswith("text/plain")
    assert reply.text == f"ERROR : method {path.rsplit('/', 1)[1]} is forbidden"


def test_get_job_carries_every_field_of_the_real_server(served) -> None:
    dispatcher, db = served
    submit_task(db, reco_task(chunk_paths(2)))
    answer = post(f"{dispatcher.url}/server/panda/getJob", data={"siteName": "S", "nJobs": "2"}, headers=JSON).json()
    jobs = answer["jobs"]
    # the keys of Protocol.Response.appendJob (plus nSent / StatusCode of each job's response)
    real_keys = [
        "PandaID",
        "prodSourceLabel",
        "swRelease",
        "homepackage",
        "transformation",
        "jobName",
        "jobDefinitionID",
        "cloud",
        "inFiles",
        "dispatchDblock",
        "dispatchDBlockToken",
        "dispatchDBlockTokenForOut",
        "outFiles",
        "destinationDblock",
        "destinationDBlockToken",
        "prodDBlocks",
        "prodDBlockToken",
        "realDatasets",
        "realDatasetsIn",
        "fileDestinationSE",
        "logFile",
        "logGUID",
        "jobPars",
        "attemptNr",
        "GUID",
        "checksum",
        "fsize",
        "scopeIn",
        "scopeOut",
        "scopeLog",
        "ddmEndPointIn",
        "ddmEndPointOut",
        "destinationSE",
        "prodUserID",
        "maxCpuCount",
        "minRamCount",
        "maxDiskCount",
        "cmtConfig",
        "processingType",
        "transferType",
        "sourceSite",
        "currentPriority",
        "taskID",
        "coreCount",
        "jobsetID",
        "reqID",
        "nucleus",
        "maxWalltime",
        "resource_type",
        "ioIntensity",
        "ioIntensityUnit",
        "nSent",
        "StatusCode",
    ]
    for job in jobs:
        assert not set(real_keys) - set(job), set(real_keys) - set(job)
        n_in, n_out = len(job["inFiles"].split(",")), len(job["outFiles"].split(","))
        for key in ("GUID", "fsize", "checksum", "scopeIn", "ddmEndPointIn", "realDatasetsIn", "prodDBlocks"):
            assert len(job[key].split(",")) == n_in, key
        for key in ("destinationDblock", "realDatasets", "fileDestinationSE", "ddmEndPointOut"):
            assert len(job[key].split(",")) == n_out, key
        assert len(job["scopeOut"].split(",")) == n_out - 1  # the log has scopeLog
        assert len(job["logGUID"]) == 36 and len(job["GUID"]) == 36
    assert jobs[0]["GUID"] != jobs[1]["GUID"]
    assert [j["nSent"] for j in jobs] == [0, 0]
    harvester_needs = ("PandaID", "taskID", "attemptNr", "jobsetID", "currentPriority", "ddmEndPointOut", "logGUID")
    assert all(k in jobs[0] for k in harvester_needs)  # JobSpec.convert_job_json indexes these


def test_retry_errors_cleared_times_parsed_back_off(tmp_path: Path) -> None:
    db = str(tmp_path / "p.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60, retry_delay=0).start()
    try:
        submit_task(db, reco_task(chunk_paths(1), max_attempts=3))
        url = f"{dispatcher.url}/server/panda"
        job = get_one(dispatcher)
        pid = int(job["PandaID"])
        failed = {"jobId": pid, "state": "failed", "attemptNr": 1, "pilotErrorCode": 1331, "pilotErrorDiag": "no input"}
        post(f"{url}/updateJob", data={**failed, "startTime": "1764669600.5", "endTime": "2026-12-02 10:05:00"})
        row = dispatcher.job(pid)
        assert (row["status"], row["attempt_nr"], row["error_code"]) == ("activated", 2, 1331)
        job = get_one(dispatcher)  # attempt 2 starts clean
        assert dispatcher.job(pid)["error_code"] is None and dispatcher.job(pid)["error_diag"] is None
        finished = {"jobId": pid, "state": "finished", "attemptNr": 2, "nEvents": 10, "pilotID": "pilot-2"}
        post(f"{url}/updateJob", data={**finished, "startTime": "2026-12-02 11:00:00", "endTime": "1764669600"})
        row = dispatcher.job(pid)
        assert (row["status"], row["error_code"], row["error_diag"]) == ("finished", None, None)
        # times as the server parses them: "%Y-%m-%d %H:%M:%S" kept, an epoch number dropped
        assert (row["start_time"], row["end_time"]) == ("2026-12-02 11:00:00", None)
        assert row["pilot_id"] == "pilot-2"
    finally:
        dispatcher.stop()


def test_failed_attempt_waits_for_its_back_off(served) -> None:
    dispatcher, db = served  # retry_delay = 1 h
    submit_task(db, reco_task(chunk_paths(1), max_attempts=5))
    url = f"{dispatcher.url}/server/panda"
    pid = int(get_one(dispatcher)["PandaID"])
    post(f"{url}/updateJob", data={"jobId": pid, "state": "failed", "attemptNr": 1, "pilotErrorCode": 1331})
    assert dispatcher.job(pid)["status"] == "activated"
    again = post(f"{url}/getJob", data={"siteName": "S"}, headers=JSON).json()
    assert again == {"StatusCode": 20, "errorDialog": "no jobs in PanDA"}  # not handed out again at once


def test_operator_kill_is_final(tmp_path: Path) -> None:
    db = str(tmp_path / "p.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60, retry_delay=0).start()
    try:
        submit_task(db, reco_task(chunk_paths(1), max_attempts=5))
        url = f"{dispatcher.url}/server/panda"
        pid = int(get_one(dispatcher)["PandaID"])
        post(f"{url}/updateJob", data={"jobId": pid, "state": "running", "attemptNr": 1})
        assert dispatcher.kill_job(pid)
        reply = post(f"{url}/updateJob", data={"jobId": pid, "state": "running", "attemptNr": 1}, headers=JSON)
        assert reply.json()["command"] == "tobekilled"
        post(f"{url}/updateJob", data={"jobId": pid, "state": "failed", "attemptNr": 1, "pilotErrorCode": 1144})
        row = dispatcher.job(pid)
        assert (row["status"], row["attempt_nr"], row["error_code"]) == ("failed", 1, 1144)
    finally:
        dispatcher.stop()


def test_v1_get_job_status_takes_repeated_ids_as_the_server_does(served) -> None:
    dispatcher, db = served
    submit_task(db, reco_task(chunk_paths(2)))
    a = int(get_one(dispatcher)["PandaID"])
    url = f"{dispatcher.url}/api/v1/pilot/get_job_status"
    reply = requests.get(url, params={"job_ids": [str(a), "999999"]}, timeout=10).json()
    assert reply["success"] and reply["data"] == [
        {"job_id": a, "status": "sent", "attempt_number": 1},
        {"job_id": 999999, "status": "not found", "attempt_number": 0},
    ]
    # a comma-joined value is one list element the server cannot cast: a type error, not a guess
    joined = requests.get(url, params={"job_ids": f"{a},999999"}, timeout=10).json()
    assert joined["success"] is False and "Type error" in joined["message"]


@pytest.mark.parametrize("dialect", ["v1", "legacy"])
def test_client_get_status_in_one_request(served, dialect: str) -> None:
    from compass_pilot.config import SiteConfig
    from compass_pilot.panda.client import PandaClient

    dispatcher, db = served
    submit_task(db, reco_task(chunk_paths(2)))
    a = int(get_one(dispatcher)["PandaID"])
    site = SiteConfig()
    site.panda.url, site.panda.dialect = dispatcher.url, dialect
    client = PandaClient(site.panda, site.site)
    try:
        unknown = "notfound" if dialect == "legacy" else "not found"  # each dialect's own word
        assert client.get_status([a, 999999]) == {a: ("sent", 1), 999999: (unknown, 0)}
    finally:
        client.close()
