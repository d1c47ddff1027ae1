"""Looping-job watchdog: kill a payload whose files stop changing, as pilot3 does.

pilot3 (``pilot/control/monitor.py`` / ``looping_job``) checks every so often when a
file in the job's work directory was last modified; when nothing has been written for
the looping limit it kills the payload and fails the job with 1150, "Looping job killed
by pilot".  A reconstruction stuck in an endless loop holds its slot until the walltime
otherwise (hours on COMPASS queues).

This watchdog watches the work directory's files (size and modification time: the
payload's outputs and its stdout/stderr) and sleeps on the payload's ``done`` event
between checks, so it costs nothing while the payload writes and ends with it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KILL_REASON = "looping"  # PayloadResult.killed_by → ErrorCode.LOOPING_JOB (1150)
MAX_CHECK_INTERVAL = 600.0  # pilot3 verifies every 10 min; a shorter limit checks more often


def newest_change(workdir: Path) -> tuple[float, int]:
    """(latest modification time, total size) of the regular files under ``workdir``."""
    latest, total = 0.0, 0
    for root, _dirs, files in os.walk(workdir):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name), follow_symlinks=False)
            except OSError:
                continue  # removed between listing and stat: the payload is busy, which is fine
            latest = max(latest, st.st_mtime)
            total += st.st_size
    return latest, total


class LoopingWatchdog:
    """Kill ``proc`` (a :class:`~compass_pilot.payload.PayloadProcess`) when its work dir goes quiet."""

    def __init__(self, proc: Any, timeout: float, *, clock: Any = time.time) -> None:
        self.proc = proc
        self.timeout = timeout
        self.interval = min(max(timeout / 4, 1.0), MAX_CHECK_INTERVAL)
        self._clock = clock
        self._last_growth = clock()
        self._last_seen: tuple[float, int] = (0.0, -1)
        self.fired = False

    def start(self) -> LoopingWatchdog:
        """Watch in a daemon thread; a timeout of 0 disables the watchdog (pilot3's default off)."""
        if self.timeout > 0:
            threading.Thread(target=self._run, name=f"looping-{self.proc.pid}", daemon=True).start()
        return self

    def check(self) -> bool:
        """One check: True (and the payload killed) when nothing changed for ``timeout`` seconds."""
        seen = newest_change(Path(self.proc.workdir))
        now = self._clock()
        if seen != self._last_seen:
            self._last_seen = seen
            self._last_growth = now
            return False
        quiet = now - self._last_growth
        if quiet < self.timeout:
            return False
        log.warning(
            "payload pid=%s looping: no file in %s changed for %.0f s (limit %.0f s): killing it (1150)",
            self.proc.pid,
            self.proc.workdir,
            quiet,
            self.timeout,
        )
        self.fired = True
        self.proc.kill(KILL_REASON)
        return True

    def _run(self) -> None:
        while not self.proc.done.wait(self.interval):
            if self.check():
                return
