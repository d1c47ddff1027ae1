"""Client ↔ dispatcher over real loopback HTTP, in both PanDA dialects."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import requests

from compass_pilot.config import load_site_config
from compass_pilot.errors import ServerError
from compass_pilot.job import JobReport, JobSpec
from compass_pilot.panda.client import PandaClient, update_fields
from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from compass_pilot.panda.tasks import TaskError, build_jobs
from tests.tasks import chunk_paths, reco_task


def task(n: int, **extra) -> dict:
    return reco_task(chunk_paths(n, first=10000), **{"name": "t", "max_attempts": 5, **extra})


@pytest.fixture
def served(tmp_path: Path):
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=0.5, sent_timeout=1800, heartbeat_timeout=7200).start()
    try:
        yield dispatcher, db
    finally:
        dispatcher.stop()


def client_for(url: str, dialect: str = "legacy", **panda) -> PandaClient:
    site = load_site_config(None)
    site.panda.url = url
    site.panda.dialect = dialect
    site.panda.backoff = 0.05
    for k, v in panda.items():
        setattr(site.panda, k, v)
    return PandaClient(site.panda, site.site)


@pytest.mark.parametrize("dialect", ["legacy", "v1"])
def test_bulk_fetch_updates_and_commands(served, dialect: str) -> None:
    dispatcher, db = served
    submit_task(db, task(5))
    client = client_for(dispatcher.url, dialect)
    jobs = client.get_jobs(3)
    assert len(jobs) == 3 and client.requests_made == 1
    specs = [JobSpec.from_panda(j) for j in jobs]  # what we hand out is what we can parse
    assert specs[0].job_name.startswith("P09-2016--275678-10000-2-7-")
    answers = client.update_jobs([JobReport(s.panda_id, "running", s.attempt_nr) for s in specs])
    assert [a.ok for a in answers] == [True] * 3 and client.requests_made == 2
    dispatcher.kill_job(specs[0].panda_id)
    answer = client.update_job(JobReport(specs[0].panda_id, "running", specs[0].attempt_nr))
    assert answer.command == "tobekilled"
    # unknown job and stale attempt are answered tobekilled
    assert client.update_job(JobReport(999999, "running", 1)).command == "tobekilled"
    assert client.update_job(JobReport(specs[1].panda_id, "running", 7)).command == "tobekilled"
    final = JobReport(specs[1].panda_id, "finished", specs[1].attempt_nr, n_events=42)
    assert client.update_job(final).ok
    assert dispatcher.job(specs[1].panda_id)["status"] == "finished"
    assert dispatcher.job(specs[1].panda_id)["n_events"] == 42
    # the same final again: acknowledged, not re-applied, counted as duplicate
    assert client.update_job(final).ok
    assert dispatcher.duplicate_finals() == [(specs[1].panda_id, 1)]
    assert client.get_jobs(10) and client.get_jobs(10) == []  # 2 left, then none


def test_ten_pilots_thousand_jobs_each_exactly_once(served) -> None:
    dispatcher, db = served
    submit_task(db, task(1000, max_attempts=1))
    got: list[list[int]] = [[] for _ in range(10)]

    def pilot(i: int) -> None:
        client = client_for(dispatcher.url, "legacy" if i % 2 else "v1")
        while True:
            jobs = client.get_jobs(7)
            if not jobs:
                return
            got[i].extend(int(j["PandaID"]) for j in jobs)
            client.update_jobs([JobReport(int(j["PandaID"]), "finished", 1) for j in jobs])

    threads = [threading.Thread(target=pilot, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    ids = [i for g in got for i in g]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    assert sum(1 for g in got if g) >= 5  # the work really was shared
    assert dispatcher.summary()["jobs_by_status"] == {"finished": 1000}
    assert all(n == 1 for n in dispatcher.final_updates().values())


def test_silent_jobs_fail_with_102_and_100_then_retry(tmp_path: Path) -> None:
    db = str(tmp_path / "p.sqlite")
    dispatcher = Dispatcher(db, port=0, sent_timeout=1, heartbeat_timeout=1, check_interval=0.3, retry_delay=0).start()
    try:
        submit_task(db, task(2, max_attempts=2))
        client = client_for(dispatcher.url)
        a, b = client.get_jobs(2)
        client.update_job(JobReport(int(b["PandaID"]), "running", 1))
        time.sleep(2.5)
        ja, jb = dispatcher.job(int(a["PandaID"])), dispatcher.job(int(b["PandaID"]))
        assert (ja["status"], ja["attempt_nr"], ja["error_code"]) == ("activated", 2, 102)
        assert (jb["status"], jb["attempt_nr"], jb["error_code"]) == ("activated", 2, 100)
        codes = {e["code"]: e["sample"] for e in dispatcher.summary()["errors"]}
        assert codes[102].startswith("Sent job didn't receive reply") and codes[100] == "lost heartbeat"
        # the lost pilot comes back: stale attempt → tobekilled
        assert client.update_job(JobReport(int(b["PandaID"]), "finished", 1)).command == "tobekilled"
        again = client.get_jobs(5)
        assert sorted(int(j["attemptNr"]) for j in again) == [2, 2]
        time.sleep(2.5)  # second attempt also silent: no attempts left → failed for good
        assert dispatcher.job(int(a["PandaID"]))["status"] == "failed"
    finally:
        dispatcher.stop()


def test_dead_server_retries_then_fails_clearly() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = client_for(f"http://127.0.0.1:{port}", retries=3, backoff=0.05)
    with pytest.raises(ServerError, match="unreachable after 3 attempts"):
        client.get_jobs(1)
    assert client.requests_made == 3  # (how long the back-off takes is a benchmark figure, not a test)


class _Odd(BaseHTTPRequestHandler):
    replies: ClassVar[list[tuple[int, bytes]]] = []
    seen: ClassVar[list[dict]] = []
    paths: ClassVar[list[str]] = []
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        _Odd.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        _Odd.seen.append(dict(self.headers))
        _Odd.paths.append(self.path)
        status, body = _Odd.replies.pop(0) if _Odd.replies else (200, b"{}")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def odd_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Odd.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_5xx_retried_4xx_not(odd_server: str) -> None:
    _Odd.replies = [(503, b"busy"), (502, b"bad"), (200, b'{"StatusCode": 20}')]
    client = client_for(odd_server, retries=5)
    assert client.get_jobs(4) == [] and client.requests_made == 3
    _Odd.replies = [(403, b"forbidden")]
    with pytest.raises(ServerError, match="HTTP 403") as err:
        client.get_jobs(4)
    assert not err.value.retriable and client.requests_made == 4


@pytest.mark.parametrize("body", [b"<html>not json</html>", b"\xff\xfe\xfa{", b"[" + b"1," * 600000 + b"1]"])
def test_garbage_answers_are_clear_errors(odd_server: str, body: bytes) -> None:
    _Odd.replies = [(200, body)]
    client = client_for(odd_server, retries=1, max_response_bytes=1_000_000)
    with pytest.raises(ServerError) as err:
        client.get_jobs(1)
    assert any(word in str(err.value) for word in ("not JSON", "not UTF-8", "larger than"))


def test_token_and_proxy_reach_the_server_but_not_logs(odd_server: str, tmp_path: Path, caplog) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t-token\n")
    _Odd.replies = [(200, b'{"StatusCode": 20}')]
    client = client_for(odd_server, token_file=str(token), origin="compass")
    with caplog.at_level("DEBUG"):
        client.get_jobs(1)
    headers = _Odd.seen[-1]
    assert headers["Authorization"] == "Bearer s3cr3t-token" and headers["Origin"] == "compass"
    assert headers["Accept"] == "application/json"
    assert "s3cr3t" not in caplog.text


@pytest.mark.parametrize("dialect", ["legacy", "v1"])
def test_requests_are_what_requests_itself_would_send(odd_server: str, dialect: str) -> None:
    """The client prepares its headers once per URL: the bytes must stay those of ``session.post``."""
    client = client_for(odd_server, dialect, token_file=None)
    report = JobReport(7, "finished", 2, n_events=3, start_time="2026-01-01 00:00:00")
    _Odd.replies = [(200, b'{"StatusCode": 0}'), (200, b"{}")]
    client.update_job(report)
    fields = update_fields(client._fill(report), dialect)
    body = {"json": fields} if dialect == "v1" else {"data": fields}
    session = requests.Session()
    session.headers.update(client.session.headers)
    session.post(client._url("update_job" if dialect == "v1" else "updateJob"), **body, timeout=10)
    ours, theirs = _Odd.seen[-2], _Odd.seen[-1]
    assert _Odd.bodies[-2] == _Odd.bodies[-1] and _Odd.paths[-2] == _Odd.paths[-1]
    assert {k.lower(): v for k, v in ours.items()} == {k.lower(): v for k, v in theirs.items()}


def test_headers_and_body_leave_in_one_write(odd_server: str, monkeypatch) -> None:
    """One segment per request: the server must not wake for the headers and again for the body."""
    writes: list[bytes] = []
    real_sendall = socket.socket.sendall
    server_port = int(odd_server.rsplit(":", 1)[1])

    def recording(sock: socket.socket, data: bytes, *args: object) -> None:
        if sock.getpeername()[1] == server_port:  # the client's writes (the server runs in this process too)
            writes.append(bytes(data))
        real_sendall(sock, data, *args)

    client = client_for(odd_server, "v1")
    _Odd.replies = [(200, b'{"success": true, "data": {"StatusCode": 0}}')] * 2
    client.update_job(JobReport(7, "running", 1))  # connects (a first request may differ: none here)
    monkeypatch.setattr(socket.socket, "sendall", recording)
    client.update_job(JobReport(7, "running", 1))
    assert len(writes) == 1 and writes[0].startswith(b"POST /api/v1/pilot/update_job HTTP/1.1\r\n")
    assert writes[0].endswith(_Odd.bodies[-1]) and b"\r\n\r\n{" in writes[0]


def test_environment_proxy_and_no_proxy_are_honoured(odd_server: str, monkeypatch) -> None:
    """The client reads the environment once (not per request) but still goes by it."""
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", odd_server)  # the odd server plays the site's HTTP proxy
    _Odd.replies = [(200, b'{"StatusCode": 20}'), (200, b'{"StatusCode": 20}')]
    client = client_for("http://panda.invalid:25443", retries=1)
    assert client.get_jobs(1) == [] and client.get_jobs(1) == []
    assert _Odd.paths[-2:] == ["http://panda.invalid:25443/server/panda/getJob"] * 2  # via the proxy
    monkeypatch.setenv("no_proxy", "panda.invalid")
    with pytest.raises(ServerError, match="unreachable"):  # direct now: the name does not resolve
        client_for("http://panda.invalid:25443", retries=1).get_jobs(1)


def test_https_with_self_signed_cert(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    db = str(tmp_path / "p.sqlite")
    dispatcher = Dispatcher(db, port=0, certfile=str(cert), keyfile=str(key)).start()
    try:
        submit_task(db, task(1))
        assert dispatcher.url.startswith("https://localhost:")
        client = client_for(dispatcher.url, "v1", ca_dir=str(cert))
        (job,) = client.get_jobs(1)
        assert client.update_job(JobReport(int(job["PandaID"]), "running", 1)).ok
        insecure = client_for(dispatcher.url, retries=1)  # system CAs do not know our cert
        with pytest.raises(ServerError):
            insecure.get_jobs(1)
    finally:
        dispatcher.stop()


def test_pilot3_style_raw_form_post(served) -> None:
    """A request built by hand the way PanDA pilot3 sends it, not through our client."""
    dispatcher, db = served
    submit_task(db, task(2))
    form = {
        "siteName": "LOCAL",
        "computingElement": "LOCAL",
        "prodSourceLabel": "managed",
        "node": "wn01",
        "mem": "2000",
        "diskSpace": "100000",
        "cpu": "2400",
        "workingGroup": "",
        "allowOtherCountry": "True",
    }
    answer = requests.post(
        f"{dispatcher.url}/server/panda/getJob", data=form, headers={"Accept": "application/json"}, timeout=10
    ).json()
    assert answer["StatusCode"] == 0 and isinstance(answer["PandaID"], int)  # single job: top-level fields
    assert answer["inFiles"].endswith(".raw") and answer["logFile"] in answer["outFiles"].split(",")
    update = {
        "jobId": answer["PandaID"],
        "state": "finished",
        "attemptNr": answer["attemptNr"],
        "timestamp": "2026-11-24T10:00:00",
        "siteName": "LOCAL",
        "node": "wn01",
        "nEvents": "12",
        "pilotErrorCode": "0",
        "xml": json.dumps({"x.root": {"guid": "g", "fsize": 1, "adler32": "1"}}),
    }
    reply = requests.post(
        f"{dispatcher.url}/server/panda/updateJob", data=update, headers={"Accept": "application/json"}, timeout=10
    ).json()
    assert reply == {"StatusCode": 0, "command": "NULL"}
    text = requests.post(f"{dispatcher.url}/server/panda/updateJob", data=update, timeout=10).text
    assert "StatusCode=0" in text  # no Accept: JSON → key=value text, as the real server


def test_summary_page_escapes_hostile_diagnostics(served) -> None:
    dispatcher, db = served
    submit_task(db, task(1, max_attempts=1))
    client = client_for(dispatcher.url)
    (job,) = client.get_jobs(1)
    client.update_job(
        JobReport(
            int(job["PandaID"]), "failed", 1, pilot_error_code=1305, pilot_error_diag="<script>alert('x')</script>"
        )
    )
    page = requests.get(f"{dispatcher.url}/", timeout=10).text
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "1305" in page and "275678" in page
    assert "PAYLOAD_FAILED" in page  # the error by its pilot3 name, not only its number


@pytest.mark.parametrize(
    ("override", "word"),
    [
        ({"job_type": "mc"}, "job_type"),
        ({"year": "2016"}, "year"),
        ({"chunks": ["2016/raw/W14/x.raw"]}, "chunks"),
        ({"chunks": ["2017/raw/W14/cdr10000-275678.raw"]}, "not under"),
        ({"bogus": 1}, "bogus"),
        ({"name": "a;rm -rf"}, "name"),
        ({"runs": {1: [1]}}, "exactly one"),
    ],
)
def test_task_validation_names_the_key(override: dict, word: str) -> None:
    with pytest.raises(TaskError, match=word):
        build_jobs(task(1, **override), 1)
