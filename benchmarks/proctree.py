"""Who in a process tree spent the CPU: a child subreaper's per-process accounting.

Why: ``getrusage(RUSAGE_CHILDREN)`` gives one number for the whole tree a benchmark
started; to know what to cut we need it by *kind* of process (the daemon, radical.saga's
helpers, mpiexec and hydra proxies, node agents, payload wrappers, the payloads).

How (cheap enough to run beside the measured tree on a 2-core box):

- this process is a child subreaper, so every orphan of the tree comes back to it;
- a scanner *process* (its own GIL; started before this one becomes a subreaper, and
  re-parented away, so it is neither in the tree nor in its CPU) lists ``/proc`` every
  ``interval`` s and reads ``stat`` + ``cmdline`` of each new pid whose parent is in the
  tree (the cmdline again while the process is young: a fork shows its parent's cmdline
  until it execs), and samples the CPU (``stat`` utime+stime, ``schedstat`` ns) of the
  long-lived kinds each scan and of payload-side processes once a second;
- the reaper thread waits with ``WNOWAIT`` first, so it can still read the zombie's
  ``/proc/<pid>/stat`` (its children's CPU, ``cutime``+``cstime``), then ``wait4`` for
  its exact rusage: a reaped process's own CPU = rusage − children's CPU.

Processes reaped by someone else (a wrapper reaped by its agent) are known only by
their last sample, so a short-lived one, or the tail of one after its last sample, is
missed: the difference between the tree total (exact) and the sum of the parts is
printed as its own line, "not sampled", never spread over the kinds.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
#: the order the breakdown is printed in
KINDS = (
    "daemon",
    "batch broker",
    "saga helpers",
    "batch script",
    "mpiexec",
    "hydra proxies",
    "node agents",
    "node keepers",
    "payload wrappers",
    "payloads",
    "profiler",
    "other",
)


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


BOOT = _boot_time()  # whole seconds: calibrated below against a child we start


def _calibrate() -> float:
    """The epoch of boot as /proc start times see it (``btime`` is rounded, and a VM's clocks drift)."""
    import subprocess

    before = time.time()
    child = subprocess.Popen(["true"])
    after = time.time()
    try:
        with open(f"/proc/{child.pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
        ticks = int(raw[raw.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        ticks = None
    child.wait()
    return BOOT if ticks is None else (before + after) / 2 - ticks / HZ


def _stat(pid: int) -> tuple[str, int, float, float, float, int] | None:
    """(comm, ppid, own CPU s, children's CPU s, start epoch, RSS bytes) from /proc/<pid>/stat (zombies too)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17, starttime=22, rss=24
    own = (int(rest[11]) + int(rest[12])) / HZ
    children = (int(rest[13]) + int(rest[14])) / HZ
    return comm, int(rest[1]), own, children, BOOT + int(rest[19]) / HZ, int(rest[21]) * PAGE


def _schedstat(pid: int) -> float:
    """The main thread's CPU in ns precision (exact for the single-threaded shells and sleeps)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as handle:
            return int(handle.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return [w.decode("utf-8", "replace") for w in raw.split(b"\0") if w] or None


@dataclass
class Proc:
    pid: int
    ppid: int
    comm: str
    start: float  # epoch, from /proc stat (10 ms)
    seen: float  # monotonic, first scan that saw it
    argv: list[str] = field(default_factory=list)
    own: float = 0.0  # best CPU figure so far (s)
    children_cpu: float = 0.0  # its waited-for children's CPU at the last look
    reaped: bool = False  # own is exact (rusage − children)
    end: float | None = None  # epoch when reaped by us
    kind: str = ""
    rss: int = 0  # peak resident bytes seen by the scans


class Scanner:
    """Samples, from ``/proc``, every process descending from ``root`` (runs in its own process: see serve)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.procs: dict[int, Proc] = {}
        self.gone: list[Proc] = []  # vanished from /proc (pids may be reused)
        self._seen_pids: dict[int, float] = {}  # pids not (yet) in the tree → first look
        self._last_slow = 0.0

    def scan(self) -> None:
        now = time.monotonic()
        slow = now - self._last_slow >= 1.0
        if slow:
            self._last_slow = now
        try:
            listed = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        except OSError:
            return
        for pid in [p for p in self.procs if p not in listed]:
            self.gone.append(self.procs.pop(pid))
        for pid in listed:
            proc = self.procs.get(pid)
            if proc is None:
                first = self._seen_pids.get(pid)
                if first is not None and not (slow and now - first < 5.0):
                    continue  # not ours; a young one is looked at again (re-parented to the root?)
                self._seen_pids.setdefault(pid, now)
                st = _stat(pid)
                if st is None:
                    continue
                comm, ppid, own, kids, start, rss = st
                if ppid != self.root and ppid not in self.procs:
                    continue
                proc = Proc(pid, ppid, comm, start, now, own=own, children_cpu=kids, rss=rss)
                proc.argv = _cmdline(pid) or []
                self.procs[pid] = proc
                self._seen_pids.pop(pid, None)
                continue
            young = now - proc.seen < 1.0
            if young or slow or _long_lived(proc):
                st = _stat(pid)
                if st is None:
                    continue
                comm, ppid, own, kids, _, rss = st
                proc.comm, proc.ppid = comm, ppid
                proc.rss = max(proc.rss, rss)
                proc.own = max(proc.own, own, _schedstat(pid))
                proc.children_cpu = max(proc.children_cpu, kids)
                if young:
                    proc.argv = _cmdline(pid) or proc.argv

    def dump(self) -> list[list[Any]]:
        return [
            [p.pid, p.ppid, p.comm, p.start, p.argv, p.own, p.children_cpu, p.rss]
            for p in [*self.gone, *self.procs.values()]
        ]


def _long_lived(proc: Proc) -> bool:
    comm = proc.comm
    return comm.startswith("python") or comm.startswith("mpiexec") or comm.startswith("hydra")


def serve(root: int, interval: float, commands: int) -> None:
    """The scanner process: ``start`` (a line on fd ``commands``) begins a run, ``stop`` answers it on stdout.

    Why a process of its own: in the benchmark's process the scans compete for the GIL
    with the embedded dispatcher, and each of their thousands of small reads gives it up
    — scans then came seconds apart, just when payloads start and end.
    """
    global BOOT
    BOOT = _calibrate()
    try:
        os.nice(-10)  # a starved scanner samples late; it is light, so let it run first where allowed
    except OSError:
        pass
    scanner: Scanner | None = None
    gaps: list[float] = []
    cpu0 = 0.0
    last = 0.0
    source = os.fdopen(commands, "r")
    while True:
        ready, _, _ = select.select([source], [], [], interval if scanner else None)
        if ready:
            line = source.readline()
            if not line:
                return
            if line.strip() == "start":
                scanner, gaps, cpu0, last = Scanner(root), [], time.process_time(), time.monotonic()
                scanner.scan()
            elif line.strip() == "stop" and scanner is not None:
                scanner.scan()
                out = {"procs": scanner.dump(), "gaps": gaps, "cpu": time.process_time() - cpu0}
                sys.stdout.write(json.dumps(out) + "\n")
                sys.stdout.flush()
                scanner = None
            continue
        if scanner is not None:
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            scanner.scan()


class ScannerClient:
    """The benchmark's end of the scanner process; start it BEFORE becoming a subreaper.

    Started through a shell that exits at once, so the scanner is re-parented away from
    this process: it is not in the tree it measures, its CPU not in the tree's.
    """

    def __init__(self, interval: float = 0.1) -> None:
        read_cmd, self._cmd = os.pipe()
        self._answers, write_out = os.pipe()
        argv = [sys.executable, __file__, str(os.getpid()), str(interval), str(read_cmd)]
        # (a background job's stdin is /dev/null: the commands come on an fd of their own)
        shell = subprocess.Popen(["/bin/sh", "-c", '"$0" "$@" &', *argv], stdout=write_out, pass_fds=(read_cmd,))
        shell.wait()
        os.close(read_cmd)
        os.close(write_out)
        self._out = os.fdopen(self._answers, "r")

    def begin(self) -> None:
        os.write(self._cmd, b"start\n")

    def end(self) -> dict[str, Any]:
        os.write(self._cmd, b"stop\n")
        line = self._out.readline()
        return json.loads(line) if line else {"procs": [], "gaps": [], "cpu": 0.0}

    def close(self) -> None:
        os.close(self._cmd)  # EOF: the scanner exits
        self._out.close()


class ProcTree:
    """One run's accounting: the scanner process's samples + this process's reaper (a subreaper thread)."""

    def __init__(self, scanner: ScannerClient) -> None:
        self.scanner = scanner
        self.procs: list[Proc] = []  # after finish()
        self.lock = threading.Lock()
        self.idle = threading.Event()
        self.exit_status: dict[int, int] = {}
        self.total = 0.0  # exact: every reaped child's rusage (children included)
        self.max_rss_kib = 0
        self.scan_cpu = 0.0  # the scanner process's CPU (not in the tree)
        self.gaps: list[float] = []  # seconds between scans
        self._reaped: dict[int, tuple[Any, float, float]] = {}  # pid → (zombie's stat, rusage CPU, epoch)
        self._reaper = threading.Thread(target=self._reap_loop, daemon=True, name="proctree-reap")
        global BOOT
        BOOT = _calibrate()

    def start(self) -> ProcTree:
        self.scanner.begin()
        return self

    def start_reaper(self) -> None:
        """Start reaping (after the first child exists: no child = the reaper would end)."""
        self._reaper.start()

    # -- reaping ----------------------------------------------------------------------
    def _reap_loop(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                self.idle.set()
                return
            except InterruptedError:
                continue
            if info is None:
                continue
            pid = info.si_pid
            st = _stat(pid)  # the zombie's: its children's CPU is still readable
            try:
                _, status, usage = os.wait4(pid, 0)
            except ChildProcessError:
                continue
            total = usage.ru_utime + usage.ru_stime
            with self.lock:
                self.max_rss_kib = max(self.max_rss_kib, usage.ru_maxrss)
                self.total += total
                self.exit_status[pid] = os.waitstatus_to_exitcode(status)
                self._reaped[pid] = (st, total, time.time())

    # -- results ----------------------------------------------------------------------
    def finish(self, timeout: float = 60) -> None:
        """Wait for the tree to be gone, then merge the scanner's samples with what the reaper knows exactly."""
        self.idle.wait(timeout)
        answer = self.scanner.end()
        self.gaps, self.scan_cpu = answer["gaps"], answer["cpu"]
        procs = {}
        for pid, ppid, comm, start, argv, own, kids, rss in answer["procs"]:
            procs[pid] = Proc(pid, ppid, comm, start, 0.0, argv=argv, own=own, children_cpu=kids, rss=rss)
        with self.lock:
            for pid, (st, total, end) in self._reaped.items():
                proc = procs.get(pid)
                if proc is None:  # born and gone between two scans
                    if st is None:
                        continue
                    proc = procs[pid] = Proc(pid, st[1], st[0], st[4], 0.0)
                if st is not None:
                    proc.children_cpu = st[3]
                proc.own = max(0.0, total - proc.children_cpu)
                proc.reaped = True
                proc.end = end
        self.procs = list(procs.values())

    def all(self) -> list[Proc]:
        return list(self.procs)

    def classify(self, daemon_pid: int) -> list[Proc]:
        """Give every process its kind: by its argv, else its parent's (the daemon's unmatched children: saga)."""
        procs = self.all()
        by_pid = {p.pid: p for p in procs}  # pid reuse within one run is not expected

        def kind_of(p: Proc, depth: int = 0) -> str:
            if p.kind:
                return p.kind
            argv = p.argv
            prog = os.path.basename(argv[0]) if argv else p.comm
            text = " ".join(argv)
            if p.pid == daemon_pid:
                k = "daemon"
            elif prog == "py-spy":
                k = "profiler"
            elif prog.startswith("python") and "harvester_plugins.batch_broker" in argv:
                k = "batch broker"
            elif prog.startswith("hydra_pmi_proxy"):
                k = "hydra proxies"
            elif prog.startswith("mpiexec"):
                k = "mpiexec"
            elif p.comm == "node-keeper":  # hpc.keeper: the agent's forked parent, same argv
                k = "node keepers"
            elif prog.startswith("python") and "hpc.node_agent" in text:  # -m, or hpc.launch's -c bootstrap
                k = "node agents"
            elif len(argv) > 3 and argv[3] == "payload-wrapper":
                k = "payload wrappers"
            elif "compass-bench-sleep" in text or p.comm.startswith("compass-bench") or prog in ("sleep", "touch"):
                k = "payloads"
            elif "worker_wrapper" in text or "job.sh" in text:
                k = "batch script"
            else:
                parent = by_pid.get(p.ppid)
                if p.ppid == daemon_pid:
                    k = "saga helpers"
                elif parent is not None and depth < 50:
                    k = kind_of(parent, depth + 1)  # a wrapper's own helpers (mv): wrappers, and so on
                    if k in ("node agents", "node keepers"):
                        k = "other"  # neither a payload nor a wrapper: an agent's helper (a DB server, …)
                    elif k in ("daemon", "batch broker"):
                        k = "saga helpers"
                else:
                    k = "saga helpers" if "radical" in text or prog in ("sh", "bash") else "other"
            p.kind = k
            return k

        for p in procs:
            kind_of(p)
        return procs

    def breakdown(self, daemon_pid: int) -> dict[str, tuple[float, int]]:
        """CPU seconds and process count by kind, plus what no sample saw, by the tree it hid in.

        A process we reaped knows its children's CPU exactly (``cutime``): what its
        descendants' samples do not explain is "not sampled" under its kind (the tails of
        wrappers and payloads after their last sample, helpers born and gone between scans).
        """
        procs = self.classify(daemon_pid)
        out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for p in procs:
            out[p.kind][0] += p.own
            out[p.kind][1] += 1
        result = {k: (out[k][0], int(out[k][1])) for k in KINDS if k in out}
        # Anchors: processes whose children's CPU (cutime) we know — reaped by us (exact) or
        # node agents (sampled every scan, and they outlive their payloads: the last reading
        # holds them all; a hydra proxy's last reading may precede its agent's exit, so it is
        # no anchor).  What an anchor's children's CPU holds beyond what its descendants'
        # samples (down to the next anchors) explain, no sample saw.
        by_pid = {p.pid: p for p in procs}

        def anchor(p: Proc) -> bool:
            return p.reaped or p.kind == "node agents"

        def nearest_anchor(p: Proc) -> Proc | None:
            q, depth = by_pid.get(p.ppid), 0
            while q is not None and not anchor(q) and depth < 50:
                q, depth = by_pid.get(q.ppid), depth + 1
            return q if q is not None and anchor(q) else None

        explained: dict[int, float] = defaultdict(float)
        for p in procs:
            if p.reaped:
                continue  # in nobody's children's CPU but ours
            a = nearest_anchor(p)
            if a is not None:
                explained[a.pid] += p.own + (p.children_cpu if anchor(p) else 0.0)
        hidden: dict[str, float] = defaultdict(float)
        for p in procs:
            if anchor(p):
                hidden[p.kind] += p.children_cpu - explained.get(p.pid, 0.0)
        for kind, cpu in hidden.items():
            if abs(cpu) >= 0.005:
                result[f"not sampled under {kind}"] = (cpu, 0)
        result["not sampled, elsewhere"] = (self.total - sum(v[0] for v in result.values()), 0)
        return result

    def peak_rss(self, *kinds: str) -> int:
        """The largest peak RSS the scans saw in one process of these kinds (e.g. the batch broker child)."""
        return max((p.rss for p in self.all() if p.kind in kinds), default=0)


if __name__ == "__main__":  # the scanner process (ScannerClient starts it)
    serve(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
