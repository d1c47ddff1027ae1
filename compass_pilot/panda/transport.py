"""The client's HTTP connections: a request's header block and its body leave in one write.

urllib3 sends a request's headers with one ``send`` and its body with another.  With
TCP_NODELAY (which the client needs, see ``client._NoDelayAdapter``) those are two
segments: the dispatcher (or PanDA's Apache) wakes for the headers, reads, and waits
again for the body — a second system call and a second wake-up on both sides of every
heartbeat.  These connection classes hold the header block back until the first body
chunk and send both together (one segment up to the MSS), or send it alone when the
request has no body, before reading the answer.  The bytes on the wire are the same.
"""

from __future__ import annotations

from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

#: a body chunk up to this size is joined to the held header block (one copy, one send)
JOIN_LIMIT = 256 * 1024


class _OneWrite:
    """Mixin for urllib3's connections: the header block waits for the body's first chunk."""

    _held: bytes | None = None
    _holding = False

    def endheaders(self, message_body: Any = None, *, encode_chunked: bool = False) -> None:
        self._held = None
        self._holding = True  # http.client sends the header block from here: keep it
        try:
            super().endheaders(message_body, encode_chunked=encode_chunked)  # type: ignore[misc]
        finally:
            self._holding = False

    def send(self, data: Any) -> None:
        if self._holding and self._held is None and isinstance(data, bytes):
            self._held = data
            return
        held, self._held = self._held, None
        if held is not None:
            if isinstance(data, bytes | bytearray) and len(data) <= JOIN_LIMIT:
                data = held + data
            else:
                super().send(held)  # type: ignore[misc]
        super().send(data)  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        held, self._held = self._held, None
        if held is not None:  # a request without a body: its headers go now
            super().send(held)  # type: ignore[misc]
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]

    def close(self) -> None:
        self._held = None
        super().close()  # type: ignore[misc]


class OneWriteHTTPConnection(_OneWrite, HTTPConnection):
    pass


class OneWriteHTTPSConnection(_OneWrite, HTTPSConnection):
    pass


class OneWriteHTTPPool(HTTPConnectionPool):
    ConnectionCls = OneWriteHTTPConnection


class OneWriteHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = OneWriteHTTPSConnection


POOLS_BY_SCHEME = {"http": OneWriteHTTPPool, "https": OneWriteHTTPSPool}
