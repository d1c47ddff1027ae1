"""When did a file appear: inotify on many directories, for benchmarks that must not poll them.

Why: e2e.py needs the moment each job's outcome file was written (to split "payload end
→ final acknowledged" into the agent's part and the daemon's part), but the daemon
removes the work dirs once a job is reported, and stat-ing 512 directories every 50 ms
would cost more than what is being measured.  One inotify descriptor, one watch per
directory, one thread blocked in ``read``: the kernel stamps nothing, so the time is
when the thread woke (sub-millisecond on an idle core, a little later on a busy box).
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
import time

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len


class FileWatch(threading.Thread):
    """Records ``{(directory, name): first time seen}`` for files written or renamed into watched dirs."""

    def __init__(self, names: set[str]) -> None:
        super().__init__(daemon=True, name="filewatch")
        self.names = names
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.dirs: dict[int, str] = {}
        self.seen: dict[tuple[str, str], float] = {}
        self._closing = threading.Event()

    def add(self, directory: str) -> bool:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_CLOSE_WRITE | IN_MOVED_TO)
        if wd < 0:
            return False
        self.dirs[wd] = directory
        return True

    def run(self) -> None:
        while not self._closing.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if not ready:
                continue
            now = time.time()
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0").decode()
                offset += _EVENT.size + length
                if name in self.names and wd in self.dirs:
                    self.seen.setdefault((self.dirs[wd], name), now)

    def close(self) -> None:
        self._closing.set()
        self.join(2)
        os.close(self.fd)
