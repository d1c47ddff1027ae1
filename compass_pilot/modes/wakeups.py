"""The daemon's end of the node agents' wake-ups: open the listener, gather a burst of notices.

Why a module of its own: the daemon loop (:mod:`compass_pilot.modes.multijob`) only needs
"which jobs of which submission started or ended just now"; where the socket binds
(``hpc.notify_*``), which host name the agents are told, and how a burst of datagrams
becomes one set of PandaIDs per submission are decisions made once, here.

A notice is a hint (:mod:`hpc.notify`): the daemon reads the named jobs' files and
trusts only those; the periodic poll stays the safety net for anything lost.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hpc import notify
from hpc.notify import NotifyListener

log = logging.getLogger(__name__)

#: How long a burst is gathered after its first notice: payloads of a submission end in
#: waves, and one bulk report for a wave costs PanDA one request instead of dozens.
COALESCE_WINDOW = 0.1
#: Receive buffer asked for (the kernel caps it at net.core.rmem_max): 512 payloads ending
#: at once are 512 datagrams, more than a default buffer holds.
RECEIVE_BUFFER = 4 << 20


def bind_address(hpc: Any) -> str | None:
    """The address the listener binds: None when wake-ups are off.

    "auto": the loopback when every agent runs on this host (``fork://`` or fake
    nodes) — nothing off the host can even reach the socket — else all interfaces.
    """
    bind = (hpc.notify_bind or "auto").strip()
    if bind == "off":
        return None
    if bind == "auto":
        local = hpc.fake_nodes or str(hpc.batch_url).startswith("fork://")
        return "127.0.0.1" if local else "0.0.0.0"
    return bind


def advertised_host(hpc: Any, bound: str) -> str:
    """The name the agents send to: ``notify_host``, else the loopback or this host's FQDN."""
    if hpc.notify_host:
        return str(hpc.notify_host)
    if bound.startswith("127.") or bound == "::1":
        return bound
    return socket.getfqdn()


def open_listener(hpc: Any) -> tuple[NoticeReader | None, str]:
    """The listener and the host name agents are told; ``(None, "")`` when off or unbindable.

    A fixed ``notify_port`` that is taken (another daemon, a lingering socket) costs
    only the early wake-ups: the daemon then listens on any free port, and submissions
    whose job sets name the old port are found by the poll.
    """
    bound = bind_address(hpc)
    if bound is None:
        return None, ""
    port = int(hpc.notify_port or 0)
    try:
        listener = NotifyListener(bound, port)
    except OSError as exc:
        if not port:
            log.warning("no wake-up listener on %s (%s): results are found by polling", bound, exc)
            return None, ""
        log.warning("wake-up port %s:%d unavailable (%s): listening on a free port", bound, port, exc)
        try:
            listener = NotifyListener(bound, 0)
        except OSError as exc2:
            log.warning("no wake-up listener on %s (%s): results are found by polling", bound, exc2)
            return None, ""
    try:
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError:
        pass
    host = advertised_host(hpc, bound)
    log.info("listening for node agents' wake-ups on %s:%d (advertised as %s)", bound, listener.port, host)
    return NoticeReader(listener), host


@dataclass
class Burst:
    """The PandaIDs named by a burst of notices, per submission."""

    started: dict[str, set[int]] = field(default_factory=dict)
    ended: dict[str, set[int]] = field(default_factory=dict)

    def add(self, notices: list[notify.Notice]) -> None:
        for notice in notices:
            into = self.ended if notice.kind == notify.ENDED else self.started
            into.setdefault(notice.sub_id, set()).update(notice.panda_ids)

    def __bool__(self) -> bool:
        return bool(self.started or self.ended)

    def sub_ids(self) -> list[str]:
        return sorted(set(self.started) | set(self.ended))

    def pop(self, sub_id: str) -> set[int]:
        """The PandaIDs named for ``sub_id`` (started or ended), taken out of the burst."""
        return self.started.pop(sub_id, set()) | self.ended.pop(sub_id, set())


class NoticeReader:
    """The listener emptied by a thread of its own; the daemon selects on :meth:`fileno`.

    Why a thread: while the daemon stages out and reports one burst (seconds for a few
    hundred jobs), the payloads still ending send more datagrams, and a socket buffer
    the daemon's thread does not empty drops them (a default buffer holds ~200): those
    jobs would wait for the poll.  The thread only blocks in ``select()`` on the socket,
    keeps the verified notices in memory and writes one byte to a pipe the daemon's
    loop selects on.  Keys are added and removed by the daemon's thread (single dict
    operations: atomic in CPython).
    """

    def __init__(self, listener: NotifyListener) -> None:
        self.listener = listener
        self._notices: deque[tuple[float, notify.Notice]] = deque()  # (monotonic arrival, notice)
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        os.set_blocking(self._ready_w, False)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="wakeups", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def rejected(self) -> int:
        return self.listener.rejected

    def add(self, sub_id: str, key: str) -> None:
        self.listener.add(sub_id, key)

    def remove(self, sub_id: str) -> None:
        self.listener.remove(sub_id)

    def fileno(self) -> int:
        """Readable when notices are waiting."""
        return self._ready_r

    def _run(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.listener, self._stop_r], [], [])
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            notices = self.listener.drain()
            if notices:
                now = time.monotonic()
                self._notices.extend((now, notice) for notice in notices)
                try:
                    os.write(self._ready_w, b"!")
                except OSError:  # the pipe is full: the daemon has a byte to wake on already
                    pass

    def take(self) -> tuple[list[notify.Notice], float]:
        """The notices received so far and when the first of them arrived (monotonic; 0 = none)."""
        try:
            while os.read(self._ready_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        out: list[notify.Notice] = []
        first = 0.0
        while self._notices:
            arrived, notice = self._notices.popleft()
            first = first or arrived
            out.append(notice)
        return out, first

    def gather(self, window: float = COALESCE_WINDOW, wake_fd: int | None = None) -> Burst:
        """Every notice waiting now, plus those arriving within ``window`` s after the first one arrived.

        Blocks only in ``select()`` (a stop request on ``wake_fd`` ends the gathering at
        once); an empty burst when nothing verifiable was waiting.
        """
        burst = Burst()
        notices, first = self.take()
        burst.add(notices)
        if not burst:
            return burst
        deadline = first + window  # notices that waited while the daemon was busy wait no longer
        fds = [self._ready_r] if wake_fd is None else [self._ready_r, wake_fd]
        while (left := deadline - time.monotonic()) > 0:
            try:
                ready, _, _ = select.select(fds, [], [], left)
            except InterruptedError:
                continue
            burst.add(self.take()[0])
            if wake_fd is not None and wake_fd in ready:
                break
        return burst

    def close(self) -> None:
        try:
            os.write(self._stop_w, b"!")
        except OSError:
            pass
        self._thread.join(5)
        for fd in (self._ready_r, self._ready_w, self._stop_r, self._stop_w):
            os.close(fd)
        self.listener.close()
