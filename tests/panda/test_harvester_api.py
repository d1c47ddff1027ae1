"""Harvester's own calls to the server (``/api/v1/harvester/*``), sent as its PandaCommunicator sends
them (``request_ssl``: POST with a JSON body, GET with query parameters, ``Accept: application/json``),
answered in panda-server 1.0's ``{success, message, data}`` shape and stored."""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests

from compass_pilot.panda import harvester_api, logcache
from compass_pilot.panda.dispatcher import Dispatcher

HEADERS = {"Accept": "application/json", "Connection": "close"}


@pytest.fixture
def served(tmp_path: Path):
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60).start()
    try:
        yield dispatcher.url, db
    finally:
        dispatcher.stop()


def post(url: str, method: str, data: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(f"{url}/api/v1/harvester/{method}", json=data, headers=HEADERS, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def get(url: str, method: str, data: dict[str, Any]) -> dict[str, Any]:
    answer = requests.get(f"{url}/api/v1/harvester/{method}", params=data, headers=HEADERS, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def worker(worker_id: int, status: str, ids: list[int]) -> dict[str, Any]:
    """``WorkSpec.convert_to_propagate()``'s fields (datetimes as Harvester encodes them)."""
    return {
        "workerID": worker_id,
        "batchID": f"{1000 + worker_id}.pbs",
        "queueName": "BW_COMPASS_MCORE",
        "status": status,
        "computingSite": "BW_COMPASS_MCORE",
        "nCore": 32,
        "submitTime": "datetime/2026-12-02 10:00:00.000000",
        "jobType": "managed",
        "resourceType": "MCORE",
        "nJobs": len(ids),
        "computingElement": "bw.ncsa.illinois.edu",
        "syncLevel": 0,
        "submissionHost": "mom1",
        "harvesterHost": "mom1",
        "pandaid_list": ids,
    }


def test_the_propagator_cycle_is_accepted_and_stored(served) -> None:
    url, db = served
    assert post(url, "heartbeat", {"harvester_id": "h1", "data": {"sw_version": "0.6"}}) == {
        "success": True,
        "message": "",
        "data": None,
    }
    # a new instance: the server's MAX(workerID) of no rows is NULL → its "database error" answer
    assert get(url, "get_current_worker_id", {"harvester_id": "h1"}) == {
        "success": False,
        "message": harvester_api.MESSAGE_DATABASE,
        "data": None,
    }
    answer = post(
        url,
        "update_workers",
        {"harvester_id": "h1", "workers": [worker(7, "running", [1, 2]), worker(9, "submitted", [3]), {"no": "id"}]},
    )
    assert answer == {"success": True, "message": "", "data": [True, True, False]}  # one flag per worker, in order
    assert post(url, "update_workers", {"harvester_id": "h1", "workers": [worker(7, "finished", [1, 2])]})["data"] == [
        True
    ]
    assert get(url, "get_current_worker_id", {"harvester_id": "h1"})["data"] == 9
    stats = {"managed": {"MCORE": {"running": 1, "submitted": 1}}}
    answer = post(
        url,
        "report_worker_statistics",
        {"harvester_id": "h1", "panda_queue": "BW_COMPASS_MCORE", "statistics": json.dumps(stats)},
    )
    assert answer == {"success": True, "message": "OK", "data": None}
    assert get(url, "get_worker_statistics", {})["data"] == {"BW_COMPASS_MCORE": {"h1": stats}}
    metrics = [["2026-12-02 10:00:00.000000", "mom1", json.dumps({"rss_mib": 120.5})]]
    assert post(url, "update_service_metrics", {"harvester_id": "h1", "metrics": metrics})["success"] is True
    assert post(url, "acquire_commands", {"harvester_id": "h1", "n_commands": 10}) == {
        "success": True,
        "message": "",
        "data": [],
    }
    assert post(url, "acknowledge_commands", {"command_ids": []})["success"] is True
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT worker_id, status, n_jobs, panda_ids FROM harvester_workers ORDER BY worker_id"
    ).fetchall()
    assert rows == [(7, "finished", 2, "[1, 2]"), (9, "submitted", 1, "[3]")]
    assert conn.execute("SELECT host, metrics FROM harvester_metrics").fetchall() == [("mom1", '{"rss_mib": 120.5}')]
    assert json.loads(conn.execute("SELECT data FROM harvester_instances").fetchone()[0]) == {"sw_version": "0.6"}


def test_dialogs_keep_the_newest(served, monkeypatch) -> None:
    url, db = served
    monkeypatch.setattr(harvester_api, "DIALOGS_KEPT", 5)
    dialogs = [
        {
            "diagID": i,
            "moduleName": "submitter",
            "identifier": f"w{i}",
            "creationTime": "2026-12-02 10:00:00.000000",
            "messageLevel": "ERROR",
            "diagMessage": f"qsub refused {i}",
        }
        for i in range(1, 9)
    ]
    assert post(url, "add_dialogs", {"harvester_id": "h1", "dialogs": dialogs}) == {
        "success": True,
        "message": "",
        "data": None,
    }
    kept = sqlite3.connect(db).execute("SELECT diag_id FROM harvester_dialogs ORDER BY diag_id").fetchall()
    assert [k for (k,) in kept] == [4, 5, 6, 7, 8]


@pytest.mark.parametrize(
    ("method", "data", "message"),
    [
        ("update_workers", {"harvester_id": "h1"}, "missing 1 required positional argument(s): 'workers'"),
        ("update_workers", {"harvester_id": "h1", "workers": "not json"}, "workers must be a list"),
        ("report_worker_statistics", {"harvester_id": "h1", "panda_queue": "q", "statistics": "{"}, "JSON text"),
        ("heartbeat", {}, "missing 1 required positional argument(s): 'harvester_id'"),
    ],
)
def test_bad_arguments_are_answered_not_stored(served, method: str, data: dict[str, Any], message: str) -> None:
    url, db = served
    answer = post(url, method, data)
    assert answer["success"] is False and message in answer["message"]
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM harvester_workers").fetchone() == (0,)


def test_other_methods_stay_forbidden(served) -> None:
    url, _ = served
    for path in ("/api/v1/harvester/update_job", "/api/v1/harvester/add_sweep_command", "/api/v1/pilot/update_workers"):
        answer = requests.post(f"{url}{path}", json={}, headers=HEADERS, timeout=10)
        assert answer.status_code == 403 and "forbidden" in answer.text, path


def test_the_page_shows_instances_their_workers_and_errors(served) -> None:
    url, _ = served
    post(
        url,
        "update_workers",
        {"harvester_id": "bw-mom1", "workers": [worker(1, "running", [1]), worker(2, "failed", [2])]},
    )
    post(
        url,
        "add_dialogs",
        {
            "harvester_id": "bw-mom1",
            "dialogs": [
                {
                    "diagID": 1,
                    "moduleName": "submitter",
                    "identifier": "w2",
                    "messageLevel": "ERROR",
                    "diagMessage": "qsub: <script>refused</script>",
                },
                {
                    "diagID": 2,
                    "moduleName": "monitor",
                    "identifier": "w1",
                    "messageLevel": "DEBUG",
                    "diagMessage": "quiet",
                },
            ],
        },
    )
    html = requests.get(f"{url}/?refresh=0", timeout=10).text
    assert "<h2>Harvester instances</h2>" in html and "bw-mom1" in html and "failed 1, running 1" in html
    assert "qsub: &lt;script&gt;refused&lt;/script&gt;" in html  # escaped, never markup
    assert "quiet" not in html  # debug chatter stays off the page


def upload(url: str, name: str, content: bytes) -> dict[str, Any]:
    """``PandaCommunicator.upload_file``: the bytes zlib-compressed, a multipart field ``file``."""
    files = {"file": (name, zlib.compress(content))}
    answer = requests.post(f"{url}/api/v1/file_server/upload_jedi_log", files=files, headers=HEADERS, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_worker_logs_are_uploaded_kept_private_and_served(served) -> None:
    url, db = served
    answer = upload(url, "/var/log/harvester/worker_7.err", b"node agent exit 143\n")
    assert answer["success"] is True and answer["data"] == f"{url}/cache/jedilog/worker_7.err"
    stored = Path(db).parent / "cache" / "jedilog" / "worker_7.err"
    assert stored.stat().st_mode & 0o777 == 0o600 and zlib.decompress(stored.read_bytes()) == b"node agent exit 143\n"
    assert requests.get(answer["data"], timeout=10).text == "node agent exit 143\n"
    assert upload(url, "worker_7.err", b"replaced\n")["success"] is True  # the server overwrites, as panda-server does
    assert requests.get(answer["data"], timeout=10).text == "replaced\n"


@pytest.mark.parametrize("name", ["../../etc/passwd", ".bashrc", "a b", "x" * 300, "", "ok/..", "évil"])
def test_hostile_upload_names_are_refused(served, name: str) -> None:
    url, db = served
    before = sorted(p.name for p in Path(db).parent.rglob("*"))
    answer = upload(url, name, b"data")
    if name == "../../etc/passwd":  # only the base name counts: it lands as a plain file in the log directory
        assert answer["success"] is True and answer["data"].endswith("/cache/jedilog/passwd")
        assert (Path(db).parent / "cache" / "jedilog" / "passwd").is_file()
        return
    assert answer["success"] is False
    assert "refusing the file name" in answer["message"] or "no file name" in answer["message"]
    assert sorted(p.name for p in Path(db).parent.rglob("*")) == before


def test_an_upload_without_a_file_field_is_refused(served) -> None:
    url, _ = served
    answer = requests.post(
        f"{url}/api/v1/file_server/upload_jedi_log", files={"other": ("a.log", b"x")}, headers=HEADERS, timeout=10
    ).json()
    assert answer == {"success": False, "message": "no 'file' field in the upload", "data": None}
    answer = requests.post(f"{url}/api/v1/file_server/upload_jedi_log", json={"file": "x"}, headers=HEADERS, timeout=10)
    assert answer.json()["success"] is False
    assert requests.get(f"{url}/cache/jedilog/nothing.log", timeout=10).status_code == 404


def test_the_upload_directory_keeps_the_newest(served, monkeypatch) -> None:
    url, db = served
    monkeypatch.setattr(logcache, "MAX_FILES", 3)
    for i in range(5):
        assert upload(url, f"w{i}.log", b"x")["success"] is True
        os.utime(Path(db).parent / "cache" / "jedilog" / f"w{i}.log", (1000 + i, 1000 + i))
    assert sorted(p.name for p in (Path(db).parent / "cache" / "jedilog").iterdir()) == ["w2.log", "w3.log", "w4.log"]
