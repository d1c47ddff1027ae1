"""The dispatcher's lean HTTP layer reads and answers requests as ``http.server`` did.

``httpcore`` replaced http.server's email-package header parsing and its five-call
answers; pilots, Harvester and curl must not see the difference.  Headers are compared
with ``http.client.parse_headers`` itself on the same bytes; the connection rules
(keep-alive, HTTP/1.0, ``Expect: 100-continue``, the 431 limits, odd request lines)
over a real socket.
"""

from __future__ import annotations

import http.client
import io
import re
import socket
from pathlib import Path

import pytest

from compass_pilot.panda.dispatcher import Dispatcher
from compass_pilot.panda.httpcore import read_headers

BLOCKS = [
    b"Host: x\r\nContent-Length: 12\r\nAccept: application/json\r\n\r\n",
    b"content-length: 3\r\nCONTENT-LENGTH: 9\r\n\r\n",  # repeated: the first wins
    b"Authorization:   Bearer abc  \r\nX-Empty:\r\n\r\n",  # leading blanks dropped, trailing kept
    b"X-Folded: a\r\n  b\r\n\tc\r\nHost: h\r\n\r\n",  # obsolete line folding
    b"Host: h\r\nnot a header line\r\nAccept: late\r\n\r\n",  # the parser stops at a non-header
    b"Bad Name: v\r\nHost: h\r\n\r\n",  # a space in the name is no header
    b"Host: h\nAccept: lf-only\n\n",  # bare LF line ends
    b"X-Latin: caf\xe9\r\n\r\n",
    b"\r\n",
]
NAMES = ["Host", "host", "Content-Length", "Accept", "Authorization", "X-Empty", "X-Folded", "X-Latin", "Bad Name"]


@pytest.mark.parametrize("block", BLOCKS)
def test_headers_read_as_http_client_and_email_read_them(block: bytes) -> None:
    ours = read_headers(io.BufferedReader(io.BytesIO(block + b"BODY")))
    theirs = http.client.parse_headers(io.BufferedReader(io.BytesIO(block + b"BODY")))
    for name in NAMES:
        assert ours.get(name) == theirs.get(name), name
        assert ours[name] == theirs[name], name
        assert (name in ours) == (name in theirs), name


@pytest.fixture
def url_port(tmp_path: Path):
    dispatcher = Dispatcher(str(tmp_path / "panda.sqlite"), port=0, check_interval=60).start()
    try:
        yield dispatcher.server.server_address[1]
    finally:
        dispatcher.stop()


def _exchange(port: int, data: bytes, *, wait_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if not wait_close:
            return sock.recv(65536)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _statuses(raw: bytes) -> list[bytes]:
    """The status codes of the answers in a byte stream (a body is JSON: no status line inside)."""
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)


def test_keep_alive_then_close_and_the_usual_headers(url_port: int) -> None:
    one = b"GET /api/summary HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /api/summary HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    raw = _exchange(url_port, one + one + last)  # three answers on one connection, then it closes
    assert _statuses(raw) == [b"200"] * 3
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    names = [line.split(":")[0] for line in head.split("\r\n")[1:]]
    assert names == ["Server", "Date", "Content-Type", "Content-Length"]


def test_http_1_0_closes_unless_keep_alive(url_port: int) -> None:
    raw = _exchange(url_port, b"GET /api/summary HTTP/1.0\r\n\r\nGET /api/summary HTTP/1.0\r\n\r\n")
    assert len(_statuses(raw)) == 1  # closed after the first answer
    kept = b"GET /api/summary HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    raw = _exchange(url_port, kept + b"GET /api/summary HTTP/1.0\r\n\r\n")
    assert len(_statuses(raw)) == 2


def test_expect_100_continue_is_answered_before_the_body(url_port: int) -> None:
    body = b"siteName=S"
    head = (
        b"POST /server/panda/getJob HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", url_port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"StatusCode=20" in answer  # no jobs


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 70000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"GET / HTTP/x\r\n\r\n", b"400"),
        (b"POST /\r\n\r\n", b"400"),  # HTTP/0.9 allows GET only
        (b"GET / HTTP/1.1 extra\r\n\r\n", b"400"),
    ],
)
def test_malformed_requests_get_http_servers_answers(url_port: int, request_bytes: bytes, status: bytes) -> None:
    raw = _exchange(url_port, request_bytes)
    assert b"Error code: " + status in raw  # http.server's error page (without a status line for HTTP/2.0)
