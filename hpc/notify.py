"""Wake-ups from the node agents to the MOM-node daemon: signed UDP datagrams.

Why: the daemon learns of payload starts and ends from the files the agents write on
the shared file system, and reading them on a timer (``hpc.poll_interval``, 30 s at a
site) puts that timer between a payload's end and PanDA hearing of it.  Inotify cannot
see writes made on another node of a parallel file system, so the agent also sends one
datagram per event to the daemon, which then reads those files at once.

The datagram is only a hint: it carries no outcome, the files stay the truth, and a
datagram that is lost (UDP, a firewall, a daemon restarted on another port) only
delays the job to the next poll.  Still, anything reachable over a socket
authenticates: each submission has its own random key (in its job set, which only the
daemon's account can read), every datagram carries an HMAC-SHA256 over its text with
that key and a timestamp, and the listener drops anything unsigned, badly signed, for an
unknown submission or older than :data:`MAX_AGE`.  A replayed datagram can at most make
the daemon re-read files it trusts anyway.

Wire format (ASCII, one datagram, at most :data:`MAX_DATAGRAM` bytes)::

    cpn1 <sub_id> <kind> <id,id,...> <unix time> <hmac hex>

``kind`` is ``S`` (payloads started) or ``E`` (outcomes written).  Senders split long
id lists over several datagrams.  Sending never blocks and never raises: a full socket
buffer or an unreachable daemon is the poll's problem.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

# hashlib (OpenSSL's libcrypto), hmac and socket are imported where a datagram is signed,
# sent or received: every node agent imports this module (the job set names its target)
# but needs none of them until its payloads have started (~8 ms of each agent's start).
if TYPE_CHECKING:
    import socket

log = logging.getLogger(__name__)

MAGIC = "cpn1"
STARTED = "S"
ENDED = "E"
KINDS = (STARTED, ENDED)
#: Datagrams older (or further in the future) than this are dropped: clock skew between
#: MOM and compute nodes is seconds, a replay from an hour ago is not a wake-up.
MAX_AGE = 300.0
#: Well under any path MTU after IP/UDP headers, so a datagram is never fragmented.
MAX_DATAGRAM = 1200


def new_key() -> str:
    """A fresh random submission key (hex): 32 bytes from the OS's CSPRNG, as ``secrets.token_hex``
    makes them — without importing ``secrets`` (and base64, struct, …) into every node agent."""
    return os.urandom(32).hex()


def _sign(key: str, text: str) -> str:
    import hashlib
    import hmac

    return hmac.new(bytes.fromhex(key), text.encode("ascii"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class NotifyTarget:
    """Where one submission's agents send their wake-ups (the job set's ``notify`` object)."""

    host: str
    port: int
    sub_id: str
    key: str

    def to_dict(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "sub_id": self.sub_id, "key": self.key}

    @classmethod
    def from_dict(cls, data: object) -> NotifyTarget | None:
        """The target from a job set's ``notify`` value; None when absent or unusable (then: poll only)."""
        if not isinstance(data, dict) or not data:
            return None
        host, port, sub_id, key = data.get("host"), data.get("port"), data.get("sub_id"), data.get("key")
        if not (isinstance(host, str) and host and isinstance(port, int) and 0 < port < 65536):
            return None
        if not (isinstance(sub_id, str) and sub_id and " " not in sub_id and isinstance(key, str)):
            return None
        try:
            if len(bytes.fromhex(key)) < 16:
                return None
        except ValueError:
            return None
        return cls(host, port, sub_id, key)


def encode(sub_id: str, key: str, kind: str, panda_ids: Iterable[int], now: float | None = None) -> list[bytes]:
    """The datagrams that announce ``panda_ids`` (several if the list is long)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    ids = [str(int(i)) for i in panda_ids]
    stamp = f"{time.time() if now is None else now:.3f}"
    room = MAX_DATAGRAM - len(f"{MAGIC} {sub_id} {kind}  {stamp} ") - 64
    if room < 32:
        raise ValueError(f"submission id {sub_id!r} is too long for a datagram")
    out: list[bytes] = []
    chunk: list[str] = []
    size = 0
    for word in ids:
        if chunk and size + len(word) + 1 > room:
            out.append(_datagram(sub_id, key, kind, chunk, stamp))
            chunk, size = [], 0
        chunk.append(word)
        size += len(word) + 1
    if chunk:
        out.append(_datagram(sub_id, key, kind, chunk, stamp))
    return out


def _datagram(sub_id: str, key: str, kind: str, ids: list[str], stamp: str) -> bytes:
    text = f"{MAGIC} {sub_id} {kind} {','.join(ids)} {stamp}"
    return f"{text} {_sign(key, text)}".encode("ascii")


@dataclass(frozen=True)
class Notice:
    """One verified wake-up."""

    sub_id: str
    kind: str
    panda_ids: tuple[int, ...]


def decode(data: bytes, key_of: dict[str, str], now: float | None = None) -> Notice | None:
    """The notice in ``data`` if it is well formed, signed with its submission's key and fresh."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split(" ")
    if len(parts) != 6 or parts[0] != MAGIC or parts[2] not in KINDS:
        return None
    key = key_of.get(parts[1])
    if key is None:
        return None
    body, mac = text.rsplit(" ", 1)
    import hmac  # see the imports at the top

    if not hmac.compare_digest(mac, _sign(key, body)):
        return None
    try:
        stamp = float(parts[4])
        ids = tuple(int(word) for word in parts[3].split(","))
    except ValueError:
        return None
    if abs((time.time() if now is None else now) - stamp) > MAX_AGE:
        return None
    return Notice(parts[1], parts[2], ids)


class NotifySender:
    """What a node agent holds: fire-and-forget datagrams to its daemon."""

    def __init__(self, target: NotifyTarget) -> None:
        import socket  # see the imports at the top

        self.target = target
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None
        self._addr: tuple[str, int] | None = None
        try:
            info = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(info[0], socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._addr = info[4][:2]
        except OSError as exc:
            log.warning(
                "no wake-ups to the daemon at %s:%d (%s): it will find results by polling",
                target.host,
                target.port,
                exc,
            )

    def send(self, kind: str, panda_ids: Iterable[int]) -> None:
        """Announce started (``S``) or ended (``E``) jobs; never blocks, never raises."""
        if self._sock is None or self._addr is None:
            return
        for datagram in encode(self.target.sub_id, self.target.key, kind, panda_ids):
            try:
                self._sock.sendto(datagram, self._addr)
                self.sent += 1
            except OSError:  # buffer full, ECONNREFUSED from an earlier send, no route: the poll covers it
                self.failed += 1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class NotifyListener:
    """What the daemon holds: one UDP socket, the keys of its submissions, verified notices."""

    def __init__(self, bind_host: str = "127.0.0.1", port: int = 0) -> None:
        import socket  # see the imports at the top

        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((bind_host, port))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.keys: dict[str, str] = {}
        self.rejected = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def add(self, sub_id: str, key: str) -> None:
        self.keys[sub_id] = key

    def remove(self, sub_id: str) -> None:
        self.keys.pop(sub_id, None)

    def drain(self, limit: int = 10000) -> list[Notice]:
        """Every datagram waiting now, verified; forged or stale ones are counted and dropped."""
        notices: list[Notice] = []
        for _ in range(limit):
            try:
                data = self.sock.recv(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            notice = decode(data, self.keys)
            if notice is None:
                self.rejected += 1
                if self.rejected in (1, 10, 100) or self.rejected % 1000 == 0:
                    log.warning("dropped %d unverifiable wake-up datagram(s) (forged, stale or unknown)", self.rejected)
            else:
                notices.append(notice)
        return notices

    def close(self) -> None:
        self.sock.close()
