"""One loop that waits for many payloads: no thread per payload.

A node agent runs 32 payloads.  With a waiter and a watchdog thread each, that was 64
threads (and their stacks and wake-ups) per agent, 16 agents per batch job on a
fake-node box.  Here each payload is a pidfd (``pidfd_open``, Linux ≥ 5.3) in one
epoll set; the kernel makes it readable when the payload exits, and the loop then
reaps exactly that pid with ``wait4`` (its exit status and rusage).  The same loop
runs the payloads' timers (walltime, the SIGKILL after a grace period, the
low-rate memory sample) as its select timeout, and returns when another file
descriptor the caller registered (its wake-up pipe) is readable.  Nothing polls.

Where ``pidfd_open`` is missing (older kernels), a payload gets a small thread that
blocks in ``waitid(..., WNOWAIT)`` — it only learns that the payload ended, without
reaping it — and writes to a pipe in the same epoll set; the loop reaps as before.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time

from compass_pilot.payload import PayloadProcess

log = logging.getLogger(__name__)


class PayloadReaper:
    """Waits for payloads (and the caller's own file descriptors) in one thread."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._procs: dict[int, PayloadProcess] = {}  # pid -> payload, until reaped
        self._fds: dict[int, int] = {}  # pid -> its pidfd
        self._fallback: tuple[int, int] | None = None  # (read, write) ends of the no-pidfd pipe
        self._early: list[PayloadProcess] = []  # ended before they could be watched

    @property
    def pending(self) -> int:
        """Payloads not reaped yet."""
        return len(self._procs)

    def watch(self, fd: int, data: object) -> None:
        """Also return from :meth:`wait` when ``fd`` is readable (``data`` is what it reports)."""
        self._sel.register(fd, selectors.EVENT_READ, ("fd", data))

    def add(self, proc: PayloadProcess) -> None:
        """Wait for this (started) payload; called by ``PayloadProcess.start(reaper)``."""
        assert proc.pid is not None
        pid = proc.pid
        self._procs[pid] = proc
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError) as exc:  # no pidfd on this kernel: a tiny notifier thread
            if not isinstance(exc, ProcessLookupError):
                self._notify_by_thread(pid)
                return
            fd = -1  # already gone and reaped by someone else: finish it below
        if fd < 0:
            proc = self._reap(pid)
            if proc is not None:
                self._early.append(proc)
            return
        self._fds[pid] = fd
        self._sel.register(fd, selectors.EVENT_READ, ("pid", pid))

    def _notify_by_thread(self, pid: int) -> None:
        if self._fallback is None:
            self._fallback = os.pipe()
            self._sel.register(self._fallback[0], selectors.EVENT_READ, ("fallback", None))
        wfd = self._fallback[1]

        def _wait() -> None:
            try:
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            try:
                os.write(wfd, f"{pid}\n".encode())
            except OSError:
                pass

        threading.Thread(target=_wait, name=f"waitid-{pid}", daemon=True).start()

    def wait(self, timeout: float | None = None) -> tuple[list[PayloadProcess], list[object]]:
        """Block until a payload ends, a watched fd is readable, a payload timer is due, or ``timeout``.

        Returns the payloads that ended (reaped, their result set) and the ``data`` of
        every watched fd that is readable (the caller reads it).
        """
        now = time.monotonic()
        dues = [d for d in (p.due() for p in self._procs.values()) if d is not None]
        if dues:
            first = max(0.0, min(dues) - now)
            timeout = first if timeout is None else min(timeout, first)
        ended, self._early = self._early, []
        ready: list[object] = []
        if ended:
            timeout = 0
        for key, _ in self._sel.select(timeout):
            kind, data = key.data
            if kind == "pid":
                proc = self._reap(data)  # type: ignore[arg-type]
                if proc is not None:
                    ended.append(proc)
            elif kind == "fallback":
                assert self._fallback is not None
                for word in os.read(self._fallback[0], 4096).split():
                    proc = self._reap(int(word))
                    if proc is not None:
                        ended.append(proc)
            else:
                ready.append(data)
        now = time.monotonic()
        for proc in list(self._procs.values()):
            due = proc.due()
            if due is not None and due <= now:
                proc.on_due(now)
        return ended, ready

    def _reap(self, pid: int) -> PayloadProcess | None:
        proc = self._procs.get(pid)
        if proc is None:
            return None
        try:
            got, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (should not happen): its status is lost
            got, status, usage = pid, None, None
        if got == 0:  # woken early (should not happen with a pidfd): wait on
            return None
        del self._procs[pid]
        fd = self._fds.pop(pid, None)
        if fd is not None:
            self._sel.unregister(fd)
            os.close(fd)
        proc.finish(status, usage)
        return proc

    def close(self) -> None:
        """Stop watching (the payloads still running are not touched)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._fallback is not None:
            for fd in self._fallback:
                os.close(fd)
            self._fallback = None
        self._sel.close()
