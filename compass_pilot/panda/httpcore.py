"""The dispatcher's HTTP/1.1 request loop, leaner than ``http.server``'s defaults.

``BaseHTTPRequestHandler`` parses every request's headers with the email package (a
feed parser, a policy object, a ``Message``) and builds every answer from five header
calls, a freshly formatted date and an eagerly formatted log line.  On a pilot's
heartbeat that was more of the dispatcher's CPU than the database work behind it.
:class:`LeanHandler` keeps the request loop of ``BaseHTTPRequestHandler`` (keep-alive,
timeouts, ``send_error``) and replaces only those two parts:

- the usual request line (``METHOD path HTTP/1.1`` or ``HTTP/1.0``) and its headers are
  read by :meth:`LeanHandler.parse_request` with the same rules and answers as
  ``http.server`` (431 for a line over 64 KiB or more than 100 headers, ``Connection``
  and ``Expect: 100-continue`` honoured, a leading ``//`` reduced); any other request
  line (HTTP/0.9, a bad or unsupported version, junk) is left to ``http.server`` itself,
  so its answers to those stay exactly its own;
- :meth:`LeanHandler.send_answer` writes the status line, ``Server``, ``Date``,
  ``Content-Type``, ``Content-Length`` and the body in one write — the headers a client
  saw before, and one segment so nothing waits for a delayed ACK (Nagle).
"""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler

log = logging.getLogger("compass_pilot.panda.dispatcher")

MAX_LINE = 65536  # http.client's _MAXLINE: a longer header line is refused (431)
MAX_HEADERS = 100  # http.client's _MAXHEADERS: more headers are refused (431)
_END = (b"\r\n", b"\n", b"")
#: a header name as the email parser takes it: printable ASCII without ":" (nor space)
_NAME_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {":"}


class Headers(dict[str, str]):
    """Request headers by lower-cased name; the first of a repeated header wins.

    Read like the ``email.message.Message`` ``http.server`` gives: ``get`` and ``[]``
    take any case, and ``[]`` of a missing name is None.
    """

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class _TooLarge(Exception):
    """A header section ``http.server`` would answer 431 (its reason and explanation)."""

    def __init__(self, reason: str, explain: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.explain = explain


def read_headers(rfile: object) -> Headers:
    """Header lines up to the blank line, as ``http.client.parse_headers`` + the email parser take them.

    Folded (continued) lines join their header; a line that is no header ends the
    header section for the parser (the email package reads the rest as a body), so the
    lines after it are read off the connection but not kept.
    """
    readline = rfile.readline  # type: ignore[attr-defined]
    lines: list[str] = []
    while True:
        raw = readline(MAX_LINE + 1)
        if len(raw) > MAX_LINE:
            raise _TooLarge("Line too long", f"got more than {MAX_LINE} bytes when reading header line")
        if raw in _END:
            break
        lines.append(raw.decode("iso-8859-1"))
        if len(lines) > MAX_HEADERS:
            raise _TooLarge("Too many headers", f"got more than {MAX_HEADERS} headers")
    headers = Headers()
    name = ""
    parts: list[str] = []
    for line in lines:
        if line[0] in " \t":
            if not name:
                break  # a continuation with nothing to continue: no header section
            parts.append(line)
            continue
        if name:
            headers.setdefault(name, "".join(parts).rstrip("\r\n"))
        head, colon, value = line.partition(":")
        if not colon or not _NAME_CHARS.issuperset(head):
            name = ""
            break
        name, parts = head.lower(), [value.lstrip(" \t")]
    if name:
        headers.setdefault(name, "".join(parts).rstrip("\r\n"))
    return headers


_date = (0, "")


def http_date() -> str:
    """The ``Date`` header's value, formatted once a second (``formatdate`` costs more than a request's parse)."""
    global _date
    now = int(time.time())
    cached = _date
    if cached[0] != now:
        cached = _date = (now, formatdate(now, usegmt=True))
    return cached[1]


class LeanHandler(BaseHTTPRequestHandler):
    """``BaseHTTPRequestHandler`` with a lean request parse and one-write answers."""

    protocol_version = "HTTP/1.1"

    def parse_request(self) -> bool:
        """The request line and headers; on failure the error answer is sent and False returned."""
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.1", "HTTP/1.0"):
            return bool(super().parse_request())  # the rare forms: http.server's own checks and answers
        self.requestline = requestline
        self.command, path, self.request_version = words
        self.close_connection = self.request_version == "HTTP/1.0"
        if path.startswith("//"):  # as http.server: a "//host" path must not read as a URL without scheme
            path = "/" + path.lstrip("/")
        self.path = path
        try:
            self.headers = read_headers(self.rfile)  # type: ignore[assignment]
        except _TooLarge as exc:
            self.send_error(431, exc.reason, exc.explain)
            return False
        connection = (self.headers.get("Connection") or "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        expect = self.headers.get("Expect") or ""
        if expect.lower() == "100-continue" and self.request_version == "HTTP/1.1":
            return bool(self.handle_expect_100())
        return True

    def send_answer(self, status: int, body: bytes, content_type: str) -> None:
        """Status line, the usual headers and the body, in one write."""
        if self.request_version == "HTTP/0.9":  # no status line nor headers: http.server's way
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self._headers_buffer.append(b"\r\n" + body)  # type: ignore[attr-defined]
            self.flush_headers()
            return
        if log.isEnabledFor(logging.DEBUG):
            self.log_request(status, len(body))
        reason = self.responses[status][0] if status in self.responses else ""
        head = (
            f"{self.protocol_version} {status} {reason}\r\nServer: {self.version_string()}\r\n"
            f"Date: {http_date()}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.wfile.write(head.encode("latin-1") + body)
