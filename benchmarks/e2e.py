"""End to end: 512 × ``sleep N`` from daemon start to every final acknowledged by PanDA.

The same run as ``benchmarks/multijob.py`` (its ``prepare_run``: the embedded
dispatcher in this process, 16 fake nodes × 32 slots, real mpiexec and node agents
through radical.saga ``fork://``), measured from the outside:

- **wall**: daemon start → the dispatcher holds 512 acknowledged finals;
- **overhead**: wall − N (what the pilot system adds to the payloads' own time);
- **tree CPU**: user + system CPU of every process the daemon started, however deep
  and whoever re-parented it — this process is a child subreaper
  (``prctl(PR_SET_CHILD_SUBREAPER)``), so orphans (the batch job radical.saga detaches,
  hydra proxies) come back to it and their usage is counted when reaped;
- **peak RSS** of the daemon (sampled) and of the largest single process in the tree.

The dispatcher's own CPU (this process) is printed apart.  Issue 15 targets (printed,
not asserted): overhead < 3 s, tree CPU < 5 s, daemon peak RSS < 50 MiB.  Run it
``--runs 3`` times and read the medians: the box is shared.

    python benchmarks/e2e.py [--sleep 10] [--runs 1]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import multijob  # the run's set-up is shared, not duplicated

PR_SET_CHILD_SUBREAPER = 36
JOBS = multijob.NODES * multijob.SLOTS


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


class Reaper(threading.Thread):
    """Reap every descendant that comes back to us; remember the daemon's exit status."""

    def __init__(self, daemon_pid: int) -> None:
        super().__init__(daemon=True)
        self.daemon_pid = daemon_pid
        self.daemon_status: int | None = None
        self.max_rss_kib = 0
        self.idle = threading.Event()  # no child left

    def run(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, 0)
            except ChildProcessError:
                self.idle.set()
                return
            self.max_rss_kib = max(self.max_rss_kib, usage.ru_maxrss)
            if pid == self.daemon_pid:
                self.daemon_status = os.waitstatus_to_exitcode(status)


def one_run(sleep: int, poll: float) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="compass-bench-e2e-"))
    dispatcher, site_yaml, env = multijob.prepare_run(base, sleep, poll)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        start = time.monotonic()
        proc = subprocess.Popen(
            multijob.daemon_argv(site_yaml), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        reaper = Reaper(proc.pid)
        reaper.start()
        daemon = psutil.Process(proc.pid)
        peak = 0
        acked = None
        while time.monotonic() - start < sleep + 600:
            try:
                peak = max(peak, daemon.memory_info().rss)
            except psutil.Error:
                pass
            counts = dispatcher.store.status_counts()
            if counts.get("finished", 0) + counts.get("failed", 0) >= JOBS and acked is None:
                acked = time.monotonic() - start
            if reaper.daemon_status is not None and acked is not None:
                break
            if reaper.daemon_status is not None and reaper.idle.is_set():
                break
            time.sleep(0.1)
        reaper.idle.wait(60)  # the tree's stragglers (agents, proxies) are reaped too
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        counts = dispatcher.store.status_counts()
    finally:
        if proc.poll() is None:
            proc.kill()
        dispatcher.stop()
        shutil.rmtree(base, ignore_errors=True)
    return {
        "wall": acked,
        "tree_cpu": (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime),
        "dispatcher_cpu": (own.ru_utime - self0.ru_utime) + (own.ru_stime - self0.ru_stime),
        "daemon_rss": peak,
        "max_rss": reaper.max_rss_kib * 1024,
        "counts": counts,
        "exit": reaper.daemon_status,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sleep", type=int, default=10, help="payload seconds (N)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--poll", type=float, default=30, help="daemon poll interval (site default 30)")
    args = parser.parse_args()
    become_subreaper()
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs} …", file=sys.stderr)
        runs.append(one_run(args.sleep, args.poll))
    ok = [r for r in runs if r["wall"] is not None]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in ok) if ok else float("nan")

    print(
        f"{'run':>4} | {'wall s':>7} | {'overhead s':>10} | {'tree CPU s':>10} | {'daemon RSS MiB':>14} |"
        f" {'max proc RSS MiB':>16} | {'dispatcher CPU s':>16} | jobs (daemon exit)"
    )
    for i, r in enumerate(runs, 1):
        wall = f"{r['wall']:.1f}" if r["wall"] is not None else "-"
        over = f"{r['wall'] - args.sleep:.1f}" if r["wall"] is not None else "-"
        print(
            f"{i:>4} | {wall:>7} | {over:>10} | {r['tree_cpu']:>10.1f} | {r['daemon_rss'] / 2**20:>14.1f} |"
            f" {r['max_rss'] / 2**20:>16.1f} | {r['dispatcher_cpu']:>16.1f} | {r['counts']} ({r['exit']})"
        )
    if ok:
        print(
            f"median of {len(ok)}: wall {med('wall'):.1f} s, overhead {med('wall') - args.sleep:.1f} s (target < 3),"
            f" tree CPU {med('tree_cpu'):.1f} s (target < 5), daemon peak RSS {med('daemon_rss') / 2**20:.1f} MiB"
            " (target < 50); box shared with other work"
        )
    return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
