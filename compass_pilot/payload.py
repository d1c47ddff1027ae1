"""Run one payload: own process group, logs to files, walltime watchdog, memory samples.

The old COMPASS pilots spent a CPU core each polling their payloads.  Here the only
thing that wakes up is a waiter thread blocked in ``os.wait4`` (the kernel tells us
when the payload ends) and a watchdog blocked on an ``Event`` with a timeout that is
either the next memory sample (default 60 s) or the walltime deadline, whichever
comes first.  Killing always targets the whole process group, so a payload's
children (coral.exe under a shell wrapper) cannot outlive it.

A process that runs many payloads (the node agent, 32 per node) gives them one
:class:`compass_pilot.reaper.PayloadReaper` instead: no thread per payload, one loop
that the kernel wakes when any of them ends and that runs their timers.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compass_pilot.errors import ErrorCode, code_for_signal

if TYPE_CHECKING:  # psutil is imported where it is used: a node agent starts without it (~10 ms)
    import subprocess  # only grid mode's Popen start needs it: a node agent spawns (~3 ms)

    import psutil

    from compass_pilot.reaper import PayloadReaper

log = logging.getLogger(__name__)

EXITCODE_NAME = "payload.exitcode"

#: The payload runs under this bash wrapper, which writes its exit status to
#: ``payload.exitcode`` even when the pilot is gone (killed, restarted): a restarted
#: pilot then knows how a payload it could not wait for ended.  A payload killed by a
#: signal makes the wrapper kill itself with the same signal, so the pilot that does
#: wait still sees the signal, not 128+n.
_WRAPPER = (
    '"$@"; rc=$?; printf "%d\\n" "$rc" > '
    + EXITCODE_NAME
    + ".tmp && mv -f "
    + EXITCODE_NAME
    + ".tmp "
    + EXITCODE_NAME
    + '; if [ "$rc" -gt 128 ] && [ "$rc" -lt 160 ]; then trap - $((rc - 128)); '
    'kill -s $((rc - 128)) $$; fi; exit "$rc"'
)


def wrap_command(cmd: list[str]) -> list[str]:
    """The argv that runs ``cmd`` under the exit-code wrapper.

    Only argv lists: a payload's words come from the dispatcher, and a string would
    have to go through a shell that parses them.  The wrapper runs ``"$@"``, which
    never re-parses its arguments.
    """
    if isinstance(cmd, str) or not cmd or not all(isinstance(word, str) for word in cmd):
        raise TypeError("a payload command is a non-empty argv list of strings (no shell command lines)")
    return ["/bin/bash", "-c", _WRAPPER, "payload-wrapper", *cmd]


def read_exitcode(workdir: Path) -> int | None:
    """The exit status the wrapper recorded, or None if the payload never ended normally."""
    try:
        return int((Path(workdir) / EXITCODE_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class PayloadResult:
    """How a payload ended and what it used."""

    exit_code: int | None  # None when it was killed by a signal
    signal: int | None
    cpu_seconds: float
    max_rss: int  # bytes, peak over the process tree
    wall_seconds: float
    timed_out: bool = False
    killed_by: str = ""  # "", "walltime", "server", "pilot", "batch", "looping"
    start_time: float = 0.0
    end_time: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.killed_by

    def error(self) -> tuple[int, str] | None:
        """Pilot error code and diagnostic for an unsuccessful run, None if it exited 0."""
        if self.killed_by == "walltime":
            return ErrorCode.BATCH_TIME_LIMIT, f"payload exceeded its walltime after {self.wall_seconds:.0f} s"
        if self.killed_by == "server":
            return ErrorCode.KILLED_BY_SERVER, "payload killed on the server's request"
        if self.killed_by == "looping":  # compass_pilot.looping: the work dir stopped changing
            return ErrorCode.LOOPING_JOB, f"payload looping: no file changed, killed after {self.wall_seconds:.0f} s"
        if self.killed_by == "batch":
            return ErrorCode.BATCH_TIME_LIMIT, "payload killed at the end of the batch allocation"
        if self.killed_by:
            return ErrorCode.SIGTERM, f"payload killed by the pilot ({self.killed_by})"
        if self.signal is not None:
            name = signal.Signals(self.signal).name if self.signal in signal.Signals.__members__.values() else "?"
            return code_for_signal(self.signal), f"payload killed by signal {self.signal} ({name})"
        if self.exit_code != 0:
            return ErrorCode.PAYLOAD_FAILED, f"payload exited with code {self.exit_code}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PayloadResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class _SessionMemory:
    """RSS per session from ONE scan of the process table, shared by every payload of this process.

    Each payload leads its own session, so its whole tree is "processes whose session id is
    the payload's pid".  A node agent runs 32 payloads: one scan per sampling round (cached
    for a few seconds, as their watchers wake together) instead of 32 full scans — at 512
    payloads per submission that is the difference between ~0 and several CPU seconds a minute.
    """

    MAX_AGE = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -1e9
        self._by_session: dict[int, int] = {}

    def rss(self, session: int) -> int:
        with self._lock:
            now = time.monotonic()
            if now - self._at > self.MAX_AGE:
                self._by_session, self._at = _rss_by_session(), now
            return self._by_session.get(session, 0)


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_by_session() -> dict[int, int]:
    """Resident bytes per session id, from one read of ``/proc/<pid>/stat`` per process.

    One file read per process gives both the session (field 6) and the RSS in pages
    (field 24); psutil's ``memory_info`` plus a ``getsid`` call cost several times that,
    which matters where fake nodes share one host and each agent scans every process.
    """
    by_session: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return by_session
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        try:
            sid, pages = int(fields[3]), int(fields[21])
        except (IndexError, ValueError):
            continue
        by_session[sid] = by_session.get(sid, 0) + pages * _PAGE
    return by_session


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 first); None if gone.

    The command name may hold spaces and ')', so the split starts after its last ')'.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # gone since the listing, or not ours to read
        return None
    return stat[stat.rfind(b")") + 2 :].split()


_SESSIONS = _SessionMemory()


def _stat_rss(pid: int) -> int | None:
    """Resident bytes of one process from ``/proc/<pid>/stat``; None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        return int(fields[21]) * _PAGE
    except (IndexError, ValueError):
        return None


def _children(pid: int) -> list[int] | None:
    """Child pids of every thread of ``pid``; None where the kernel has no ``children`` files."""
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(k) for k in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # no CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            continue
    return kids


def _tree_rss(pid: int) -> int:
    """Sum of RSS over a payload's process tree; 0 if it is gone.

    Walks down from the payload through ``/proc/<pid>/task/*/children``: a few reads per
    process of the tree, where a scan of the whole process table reads every process on
    the host (on fake nodes, 16 agents would each read all 16 nodes' payloads).  Without
    the ``children`` files the payload's session is summed from one table scan instead.
    """
    total, stack, seen = 0, [pid], set()
    while stack:
        proc = stack.pop()
        if proc in seen:
            continue
        seen.add(proc)
        rss = _stat_rss(proc)
        if rss is None:
            continue
        total += rss
        kids = _children(proc)
        if kids is None:
            return _SESSIONS.rss(pid)
        stack.extend(kids)
    return total


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of these processes (the ones already gone count as 0)."""
    import psutil

    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_HERE = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC  # enough for fchdir
#: Signals Python ignores at start-up that a payload must not inherit ignored (what Popen's
#: ``restore_signals`` resets too): with SIGPIPE ignored, ``producer | head`` never ends.
_RESTORED = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name))


def _which(exe: str, env: dict[str, str]) -> str:
    """``exe`` looked up in the payload's own PATH, as ``Popen(env=...)`` does (not the agent's PATH)."""
    if os.sep in exe:
        return exe
    for directory in os.get_exec_path(env):
        candidate = os.path.join(directory, exe)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exe)


def spawn(argv: list[str], workdir: Path, env: dict[str, str], stdout: Path, stderr: Path) -> int:
    """Start ``argv`` in ``workdir`` as the leader of a new session; its pid.

    ``os.posix_spawn`` (glibc: ``clone(CLONE_VM | CLONE_VFORK)``, no page tables copied)
    instead of ``subprocess.Popen``: the same child — own session and process group, stdin
    from /dev/null, stdout and stderr appended to files, default signal dispositions — for a
    fifth of the parent's CPU, which a node agent launching 32 payloads (16 fake nodes: 512
    on one box) pays on the critical path to "all running".  ``posix_spawn`` has no working
    directory: the caller's is switched to ``workdir`` around the call and restored, so the
    caller's other threads must use absolute paths only (the node agent does).  File
    descriptors the child must not get are close-on-exec: Python's own are, and the node
    agent marks inherited ones so (:func:`hpc.node_agent.main`).  Raises ``OSError`` when the
    command cannot be started (glibc reports the failed exec to the parent).
    """
    out = os.open(stdout, _APPEND, 0o644)
    try:
        err = os.open(stderr, _APPEND, 0o644)
        try:
            home = os.open(".", _HERE)
            try:
                os.chdir(workdir)
                try:
                    return os.posix_spawn(
                        _which(argv[0], env),
                        argv,
                        env,
                        file_actions=[
                            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                            (os.POSIX_SPAWN_DUP2, out, 1),
                            (os.POSIX_SPAWN_DUP2, err, 2),
                        ],
                        setsid=True,
                        setsigdef=_RESTORED,
                    )
                finally:
                    os.fchdir(home)
            finally:
                os.close(home)
        finally:
            os.close(err)
    finally:
        os.close(out)


class PayloadProcess:
    """A payload running in its own session; non-blocking, with a blocking ``wait``.

    ``wrap=True`` (grid mode) runs it under the exit-code wrapper so a restarted pilot
    can learn how it ended; ``wrap=False`` runs the command itself, one process per
    payload (the node agent: its keeper process collects exit codes instead, see
    :mod:`hpc.keeper`).  ``start()`` alone gives the payload its own waiter and
    watchdog threads; ``start(reaper)`` hands both jobs to a shared
    :class:`~compass_pilot.reaper.PayloadReaper` — then every call on this object
    must come from the reaper's thread.
    """

    def __init__(
        self,
        cmd: list[str],
        workdir: Path,
        env: dict[str, str],
        *,
        walltime: float = 0,
        grace: float = 60,
        sample_interval: float = 60,
        stdout_name: str = "payload.stdout",
        stderr_name: str = "payload.stderr",
        wrap: bool = True,
    ) -> None:
        wrap_command(cmd)  # refuse a shell string now, not in start()
        self.cmd = list(cmd)
        self.wrap = wrap
        self.workdir = Path(workdir)
        self.env = env
        self.walltime = walltime
        self.grace = grace
        self.sample_interval = max(1.0, sample_interval)
        self.stdout_path = self.workdir / stdout_name
        self.stderr_path = self.workdir / stderr_name
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._result: PayloadResult | None = None
        self._killed_by = ""
        self._peak_rss = 0
        self._start = 0.0
        self._create_time: float | None = None
        # timers when a reaper drives this payload (monotonic seconds; None = not set)
        self._reaper: PayloadReaper | None = None
        self._deadline: float | None = None
        self._hard_kill_at: float | None = None
        self._next_sample: float | None = None

    @property
    def create_time(self) -> float:
        """The process's start time as psutil sees it (grid mode journals it to recognise the pid later)."""
        if self._create_time is None:
            import psutil

            try:
                self._create_time = psutil.Process(self.pid).create_time() if self.pid else 0.0
            except psutil.Error:
                self._create_time = 0.0
        return self._create_time

    def start(self, reaper: PayloadReaper | None = None) -> PayloadProcess:
        """Start the payload; raises OSError if it cannot be started at all."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.wrap:
            (self.workdir / EXITCODE_NAME).unlink(missing_ok=True)
        argv = wrap_command(self.cmd) if self.wrap else self.cmd
        if reaper is not None:  # the node agent: 32 launches per node, each one counts
            self.pid = spawn(argv, self.workdir, self.env, self.stdout_path, self.stderr_path)
        else:
            import subprocess  # see the imports at the top

            with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
                self._proc = subprocess.Popen(
                    argv,
                    cwd=self.workdir,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            self.pid = self._proc.pid
        self._start = time.time()
        if self.wrap:
            _ = self.create_time  # now, while the pid is surely this process
        # a reaper's owner (the node agent) logs each start and end itself, with the PandaID
        log.log(logging.DEBUG if reaper else logging.INFO, "payload started pid=%d workdir=%s", self.pid, self.workdir)
        self._go(reaper)
        return self

    @classmethod
    def adopt(
        cls,
        pid: int,
        workdir: Path,
        *,
        start_time: float,
        reaper: PayloadReaper,
        walltime: float = 0,
        grace: float = 60,
        sample_interval: float = 60,
        stdout_name: str = "payload.stdout",
        stderr_name: str = "payload.stderr",
    ) -> PayloadProcess:
        """Take over a running payload that is already our child (re-parented to us when its
        node agent died, see :mod:`hpc.keeper`); its walltime counts from ``start_time``."""
        proc = cls(["adopted"], workdir, {}, walltime=walltime, grace=grace, sample_interval=sample_interval,
                   stdout_name=stdout_name, stderr_name=stderr_name, wrap=False)  # fmt: skip
        proc.pid = pid
        proc._start = start_time
        proc._go(reaper)
        return proc

    def _go(self, reaper: PayloadReaper | None) -> None:
        if reaper is None:
            threading.Thread(target=self._reap, name=f"reap-{self.pid}", daemon=True).start()
            threading.Thread(target=self._watch, name=f"watch-{self.pid}", daemon=True).start()
            return
        self._reaper = reaper
        now = time.monotonic()
        if self.walltime > 0:
            self._deadline = now + max(0.0, self._start + self.walltime - time.time())
        self._next_sample = now + self.sample_interval
        reaper.add(self)

    # -- the two threads (or the reaper's calls) --------------------------------------
    def _reap(self) -> None:
        """Block in wait4 until the payload ends: the kernel wakes us, nobody polls."""
        assert self.pid is not None
        try:
            _, status, usage = os.wait4(self.pid, 0)
        except ChildProcessError:  # reaped elsewhere (should not happen)
            status, usage = 0, None
        self.finish(status, usage)

    def finish(self, status: int | None, usage: Any) -> None:
        """Record how the payload ended (its ``wait4`` status and rusage; None = unknown)."""
        end = time.time()
        exit_code = os.waitstatus_to_exitcode(status) if status is not None else None
        sig = -exit_code if exit_code is not None and exit_code < 0 else None
        cpu = (usage.ru_utime + usage.ru_stime) if usage else 0.0
        rss = max(self._peak_rss, (usage.ru_maxrss * 1024) if usage else 0)
        if self._proc is not None:
            self._proc.returncode = exit_code  # so Popen does not try to reap it again
        # whatever the payload left behind in its group goes with it
        self._signal_group(signal.SIGKILL)
        self._deadline = self._hard_kill_at = self._next_sample = None
        with self._lock:
            self._result = PayloadResult(
                exit_code=None if sig else exit_code,
                signal=sig,
                cpu_seconds=round(cpu, 3),
                max_rss=rss,
                wall_seconds=round(end - self._start, 3),
                timed_out=self._killed_by == "walltime",
                killed_by=self._killed_by,
                start_time=self._start,
                end_time=end,
            )
        self._done.set()
        log.log(
            logging.DEBUG if self._reaper else logging.INFO,
            "payload pid=%d ended exit=%s signal=%s killed_by=%s",
            self.pid,
            exit_code,
            sig,
            self._killed_by,
        )

    def due(self) -> float | None:
        """When the reaper must next call :meth:`on_due` (monotonic), None when nothing is pending."""
        times = [t for t in (self._deadline, self._hard_kill_at, self._next_sample) if t is not None]
        return min(times) if times else None

    def on_due(self, now: float) -> None:
        """The reaper's timer: the SIGKILL after a grace period, the walltime, a memory sample."""
        if self._done.is_set():
            return
        if self._hard_kill_at is not None and now >= self._hard_kill_at:
            self._hard_kill_at = None
            log.warning("payload pid=%s ignored SIGTERM: SIGKILL", self.pid)
            self._signal_group(signal.SIGKILL)
        if self._next_sample is not None and now >= self._next_sample:
            assert self.pid is not None
            self._peak_rss = max(self._peak_rss, _tree_rss(self.pid))
            self._next_sample = now + self.sample_interval
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            log.warning("payload pid=%d exceeded walltime %.0f s", self.pid, self.walltime)
            self.kill("walltime")

    def _watch(self) -> None:
        """Sample memory at a low rate and enforce the walltime; sleeps on the done event."""
        assert self.pid is not None
        deadline = self._start + self.walltime if self.walltime > 0 else None
        while not self._done.is_set():
            timeout = self.sample_interval
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.time()))
            if self._done.wait(timeout):
                return
            self._peak_rss = max(self._peak_rss, _tree_rss(self.pid))
            if deadline is not None and time.time() >= deadline:
                log.warning("payload pid=%d exceeded walltime %.0f s", self.pid, self.walltime)
                self.kill("walltime")
                return

    # -- control -------------------------------------------------------------------------
    def _signal_group(self, signum: int) -> None:
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, reason: str = "pilot", grace: float | None = None) -> None:
        """SIGTERM the whole group, then SIGKILL after the grace period (in a timer thread)."""
        if self._done.is_set():
            return
        with self._lock:
            if not self._killed_by:
                self._killed_by = reason
        self._signal_group(signal.SIGTERM)
        wait = self.grace if grace is None else grace
        if self._reaper is not None:  # the reaper's loop sends the SIGKILL when due
            due = time.monotonic() + wait
            self._hard_kill_at = due if self._hard_kill_at is None else min(self._hard_kill_at, due)
            return

        def _hard_kill() -> None:
            if not self._done.wait(wait):
                log.warning("payload pid=%s ignored SIGTERM for %.0f s: SIGKILL", self.pid, wait)
                self._signal_group(signal.SIGKILL)

        threading.Thread(target=_hard_kill, name=f"kill-{self.pid}", daemon=True).start()

    def wait(self, timeout: float | None = None) -> PayloadResult | None:
        """The result once the payload has ended, or None if ``timeout`` passed first."""
        if not self._done.wait(timeout):
            return None
        return self._result

    @property
    def done(self) -> threading.Event:
        """Set when the payload has ended (for callers that wait on several at once)."""
        return self._done

    def sample(self) -> dict[str, float]:
        """Current CPU seconds and RSS of the tree (for heartbeats)."""
        if self.pid is None or self._done.is_set():
            return {}
        import psutil

        try:
            root = psutil.Process(self.pid)
            cpu = cpu_seconds([root, *root.children(recursive=True)])
        except psutil.Error:
            return {}
        rss = _tree_rss(self.pid)
        self._peak_rss = max(self._peak_rss, rss)
        return {"cpu_seconds": cpu, "rss": rss, "max_rss": self._peak_rss}


def run_payload(
    cmd: list[str],
    workdir: Path,
    env: dict[str, str],
    *,
    walltime: float = 0,
    grace: float = 60,
    sample_interval: float = 60,
    stop_event: threading.Event | None = None,
    stdout_name: str = "payload.stdout",
    stderr_name: str = "payload.stderr",
) -> PayloadResult:
    """Run a payload to its end; ``stop_event`` set → the payload is killed ("pilot")."""
    proc = PayloadProcess(
        cmd,
        workdir,
        env,
        walltime=walltime,
        grace=grace,
        sample_interval=sample_interval,
        stdout_name=stdout_name,
        stderr_name=stderr_name,
    ).start()
    if stop_event is not None:

        def _stop_on_event() -> None:
            # Two events cannot be waited on together with threading; a 5 s period only
            # bounds how long this helper thread outlives its payload.
            while not proc.done.is_set():
                if stop_event.wait(5):
                    proc.kill("pilot")
                    return

        threading.Thread(target=_stop_on_event, daemon=True).start()
    result = proc.wait()
    assert result is not None
    return result
