"""Hostile clients against a dispatcher that requires authentication: each is refused, the
dispatcher's state is unchanged, and honest pilots and operators keep being served."""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests

from compass_pilot.errors import ConfigError
from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from tests.security.conftest import Secured, db_state, json_or_text, record
from tests.tasks import chunk_paths, reco_task


def _post(
    s: Secured,
    path: str,
    data: dict[str, Any] | str | None = None,
    *,
    token: str | None = None,
    cert: Path | None = None,
    json_body: bool = False,
) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    kwargs: dict[str, Any] = {"headers": headers, "timeout": 10, "verify": str(s.pki.ca)}
    if cert is not None:
        kwargs["cert"] = (str(cert), str(cert))
    if json_body:
        kwargs["json"] = data
    else:
        kwargs["data"] = data or {}
    answer = requests.post(f"{s.url}{path}", **kwargs)
    return answer.status_code, json_or_text(answer.content)


def _jobs(s: Secured, n: int = 3) -> None:
    submit_task(s.db, reco_task(chunk_paths(n)))


def _get_job(s: Secured, **auth: Any) -> tuple[int, Any]:
    return _post(s, "/server/panda/getJob", {"siteName": "LOCAL", "node": "n1", "nJobs": "1"}, **auth)


GETJOB = {"siteName": "LOCAL", "node": "n1", "nJobs": "1"}


@pytest.mark.parametrize(
    ("attack", "path", "auth", "status", "code"),
    [
        ("getJob without credentials", "/server/panda/getJob", {}, 401, 40),
        ("getJob with an unverified 'Bearer nonsense'", "/server/panda/getJob", {"token": "nonsense"}, 401, 50),
        ("getJob with a token signed by another key", "/server/panda/getJob", {"token": "foreign"}, 401, 50),
        ("getJob with an expired token", "/server/panda/getJob", {"token": "expired"}, 401, 50),
        ("getJob with a proxy whose DN is not listed", "/server/panda/getJob", {"cert": "rogue"}, 403, 60),
        ("v1 acquire_jobs without credentials", "/api/v1/pilot/acquire_jobs", {}, 401, None),
        ("updateJob 'finished' without credentials", "/server/panda/updateJob", {}, 401, 40),
        ("admin submit without credentials", "/admin/submit", {}, 401, None),
        ("admin submit with a pilot's token", "/admin/submit", {"token": "pilot-a"}, 403, None),
        ("admin submit with a production proxy", "/admin/submit", {"cert": "pilot"}, 403, None),
        ("admin kill with a pilot's token", "/admin/kill", {"token": "pilot-a"}, 403, None),
    ],
)
def test_unauthenticated_and_wrongly_authenticated_calls(
    secured: Secured, attack: str, path: str, auth: dict[str, str], status: int, code: int | None
) -> None:
    _jobs(secured)
    before = db_state(secured.db)
    kwargs: dict[str, Any] = {}
    if "token" in auth:
        kwargs["token"] = secured.tokens.get(auth["token"], auth["token"])
    if "cert" in auth:
        kwargs["cert"] = {"rogue": secured.pki.rogue_proxy, "pilot": secured.pki.proxy}[auth["cert"]]
    fields: dict[str, Any] = dict(GETJOB)
    if path.endswith("updateJob"):
        fields = {"jobId": "1", "state": "finished", "attemptNr": "1"}
    elif path == "/admin/submit":
        fields = reco_task(chunk_paths(2), name="evil", transformation="touch /tmp/PWNED; echo")
    elif path == "/admin/kill":
        fields = {"panda_id": 1}
    got, body = _post(secured, path, fields, json_body=path.startswith("/admin/") or "/v1/" in path, **kwargs)
    after = db_state(secured.db)
    assert got == status, body
    if code is not None:
        assert body["StatusCode"] == code
    assert "Traceback" not in json.dumps(body)
    assert after == before
    record(attack, refused=got in (401, 403), executed=False, changed=after != before)


def test_foreign_ca_proxy_fails_the_handshake(secured: Secured) -> None:
    _jobs(secured)
    before = db_state(secured.db)
    with pytest.raises(requests.exceptions.SSLError):
        _get_job(secured, cert=secured.pki.foreign_proxy)
    after = db_state(secured.db)
    assert after == before
    record("getJob with a proxy from an untrusted CA", refused=True, executed=False, changed=after != before)


def test_forged_update_for_another_pilots_job(secured: Secured) -> None:
    _jobs(secured, 2)
    status, body = _get_job(secured, token=secured.tokens["pilot-a"])
    assert status == 200 and body["StatusCode"] == 0
    (job,) = body["jobs"]
    before = db_state(secured.db)
    forged = {"jobId": job["PandaID"], "state": "finished", "attemptNr": job["attemptNr"]}
    outcomes = []
    for auth in ({"token": secured.tokens["pilot-b"]}, {"cert": secured.pki.proxy}):
        status, answer = _post(secured, "/server/panda/updateJob", forged, **auth)
        outcomes.append((status, answer["StatusCode"]))
    v1 = {"job_id": job["PandaID"], "job_status": "failed", "attempt_nr": job["attemptNr"]}
    status, answer = _post(secured, "/api/v1/pilot/update_job", v1, token=secured.tokens["pilot-b"], json_body=True)
    after = db_state(secured.db)
    assert outcomes == [(200, 70), (200, 70)] and answer["success"] is False
    assert after == before and secured.dispatcher.job(job["PandaID"])["status"] == "sent"
    # the pilot the job went to still reports on it
    status, answer = _post(secured, "/server/panda/updateJob", forged, token=secured.tokens["pilot-a"])
    assert answer["StatusCode"] == 0 and secured.dispatcher.job(job["PandaID"])["status"] == "finished"
    record("forged final update for another pilot's job", refused=True, executed=False, changed=after != before)


def test_honest_token_proxy_and_admin_are_served(secured: Secured) -> None:
    task = reco_task(chunk_paths(2), name="ok")
    status, body = _post(secured, "/admin/submit", task, token=secured.tokens["admin"], json_body=True)
    assert status == 200 and body["task_id"] >= 1
    for auth in ({"token": secured.tokens["pilot-a"]}, {"cert": secured.pki.proxy}):
        status, body = _get_job(secured, **auth)
        assert status == 200 and len(body["jobs"]) == 1
    owners = {row["owner"] for row in secured.dispatcher.store.query("SELECT owner FROM jobs")}
    assert owners == {"pilot-a", "/DC=ch/DC=cern/OU=Users/CN=compass pilot"}
    status, body = _post(secured, "/admin/kill", {"panda_id": "abc"}, token=secured.tokens["admin"], json_body=True)
    assert status == 400 and "Traceback" not in json.dumps(body)  # a bad integer is the caller's fault


def _raw(s: Secured, request: bytes, *, tls: bool = True) -> tuple[int, bytes]:
    host, port = urlparse(s.url).hostname, urlparse(s.url).port
    sock = socket.create_connection((host, port), timeout=10)
    if tls:
        context = ssl.create_default_context(cafile=str(s.pki.ca))
        sock = context.wrap_socket(sock, server_hostname="localhost")
    try:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        return status, data
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("attack", "length", "status"),
    [
        ("Content-Length negative (read(-1) hang)", "-1", 400),
        ("Content-Length missing", None, 411),
        ("Content-Length not a number", "12abc", 400),
        ("Content-Length beyond the limit", str(10**12), 413),
    ],
)
def test_bad_content_length(secured: Secured, attack: str, length: str | None, status: int) -> None:
    _jobs(secured)
    before = db_state(secured.db)
    header = f"Content-Length: {length}\r\n" if length is not None else ""
    request = (
        "POST /server/panda/getJob HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {secured.tokens['pilot-a']}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n{header}\r\nsiteName=LOCAL&nJobs=1"
    ).encode()
    got, data = _raw(secured, request)
    after = db_state(secured.db)
    assert got == status, data[:300]
    assert b"Traceback" not in data and after == before
    assert _get_job(secured, token=secured.tokens["pilot-a"])[0] == 200  # still serving
    record(attack, refused=got == status, executed=False, changed=after != before)


def test_slowloris_does_not_stall_the_dispatcher(secured: Secured) -> None:
    """Half a request and a silent TLS handshake: others are served meanwhile, both cut at the timeout (2 s)."""
    _jobs(secured)
    before = db_state(secured.db)
    host, port = urlparse(secured.url).hostname, urlparse(secured.url).port
    silent = socket.create_connection((host, port), timeout=10)  # never starts the TLS handshake
    context = ssl.create_default_context(cafile=str(secured.pki.ca))
    slow = context.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname="localhost")
    slow.sendall(b"POST /server/panda/getJob HTTP/1.1\r\nHost: localhost\r\nContent-Le")
    try:
        status, _ = _post(secured, "/server/panda/getStatus", {"ids": "1"}, token=secured.tokens["pilot-a"])
        assert status == 200
        deadline = time.monotonic() + 15
        cut = []
        for sock in (silent, slow):
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                sock.recv(1024)  # b"" (or an error answer) once the server gives up on it
                cut.append(True)
            except (ConnectionError, ssl.SSLError):
                cut.append(True)
            except TimeoutError:
                cut.append(False)
    finally:
        silent.close()
        slow.close()
    after = db_state(secured.db)
    assert cut == [True, True] and after == before
    record("slowloris (half headers, silent TLS handshake)", refused=True, executed=False, changed=after != before)


def test_non_loopback_without_auth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"refusing to serve 0\.0\.0\.0 without authentication"):
        Dispatcher(str(tmp_path / "d.sqlite"), "0.0.0.0", 0)
    assert not (tmp_path / "d.sqlite").exists()
    record("dispatcher bound to 0.0.0.0 without auth", refused=True, executed=False, changed=False)


def _until(condition: Any, what: str, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ask_metrics(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    return sock.recv(64)


def test_connection_flood_is_capped_per_client_and_in_total(tmp_path: Path) -> None:
    """Idle connections hold threads until the timeout: past the caps a new one gets 503 at once,
    other clients are still served, and closed connections give their slots back."""
    d = Dispatcher(str(tmp_path / "d.sqlite"), max_connections=7, max_connections_per_client=3).start()
    port = urlparse(d.url).port
    opened: list[socket.socket] = []

    def connect(source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        opened.append(sock)
        return sock

    try:
        for _ in range(3):
            connect("127.0.0.2")
        _until(lambda: d.server.connections == 3, "three idle connections held")
        assert _ask_metrics(connect("127.0.0.2")).startswith(b"HTTP/1.1 503")  # the flooding address: turned away
        assert _ask_metrics(connect("127.0.0.3")).startswith(b"HTTP/1.1 200")  # another address: served
        _until(lambda: d.server.connections == 3, "the served connection released")
        for _ in range(3):
            connect("127.0.0.4")
        connect("127.0.0.5")
        _until(lambda: d.server.connections == 7, "seven idle connections held")
        assert _ask_metrics(connect("127.0.0.6")).startswith(b"HTTP/1.1 503")  # the total cap
        for sock in opened:
            sock.close()
        opened.clear()
        _until(lambda: d.server.connections == 0, "every slot given back")
        assert requests.get(f"{d.url}/metrics", timeout=10).status_code == 200
        assert d.server.refused_busy == 2
    finally:
        for sock in opened:
            sock.close()
        d.stop()
    record("connection flood (idle sockets past the caps)", refused=True, executed=False, changed=False)


def test_harvester_instance_belongs_to_its_first_identity(secured: Secured) -> None:
    """A Harvester instance's workers can only be reported by the identity that first spoke for it;
    without credentials Harvester's calls are refused like a pilot's."""
    workers = {"harvester_id": "bw-mom1", "workers": [{"workerID": 1, "status": "running"}]}
    status, answer = _post(
        secured, "/api/v1/harvester/update_workers", workers, token=secured.tokens["pilot-a"], json_body=True
    )
    assert status == 200 and answer["data"] == [True]
    before = db_state(secured.db)
    forged = {"harvester_id": "bw-mom1", "workers": [{"workerID": 1, "status": "failed"}]}
    status, answer = _post(
        secured, "/api/v1/harvester/update_workers", forged, token=secured.tokens["pilot-b"], json_body=True
    )
    assert status == 200 and answer["success"] is False and "another identity" in answer["message"]
    status, _ = _post(secured, "/api/v1/harvester/update_workers", forged, json_body=True)
    assert status == 401
    row = sqlite3.connect(secured.db).execute("SELECT status FROM harvester_workers WHERE worker_id = 1").fetchone()
    assert row == ("running",) and db_state(secured.db) == before
    record("Harvester workers reported by another identity", refused=True, executed=False, changed=row != ("running",))
