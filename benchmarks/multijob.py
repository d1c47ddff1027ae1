"""Multi-job mode at Blue Waters scale: 16 fake nodes × 32 slots = 512 sleep payloads.

The daemon runs as its own process (``compass-pilot daemon --once``) against the
embedded dispatcher, submits through radical.saga ``fork://`` and real ``mpiexec`` with
16 node agents.  Printed figures (issue #4 targets in brackets):

- HTTP requests used to fetch the 512 jobs                          [1]
- seconds from daemon start to all 512 running                      [< 3 s after submission]
- update requests per heartbeat round, and for the final reports    [≤ 2]
- CPU seconds of daemon + node agents + mpiexec per minute, steady  [< 0.6 s = 1 % of a core]
- peak RSS of the daemon and of one node agent                      [daemon < 50 MB]

    python benchmarks/multijob.py [--sleep 90] [--window 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

import calibdb
from compass_pilot.demo.rawdata import make_production_input
from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from compass_pilot.payload import cpu_seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared task builder lives in tests/
from tests.tasks import reco_task

NODES, SLOTS = 16, 32


def _procs(daemon: psutil.Process) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """Node agents and launcher processes (mpiexec, hydra proxies, the batch shell) of this run."""
    agents, launchers = [], []
    for proc in daemon.children(recursive=True) + _saga_children(daemon):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "hpc.node_agent" in cmd and "mpiexec" not in cmd:
            agents.append(proc)
        elif "mpiexec" in cmd or "hydra_pmi_proxy" in cmd or "worker_wrapper" in cmd:
            launchers.append(proc)
    return agents, launchers


def _saga_children(daemon: psutil.Process) -> list[psutil.Process]:
    # radical.saga's fork adaptor may re-parent the batch job; find it by our shared dir
    out = []
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        if proc.info["ppid"] == 1 and "compass-bench" in " ".join(proc.info["cmdline"] or []):
            out.append(proc)
            out.extend(proc.children(recursive=True))
    return out


def _phases(shared: Path, start_wall: float) -> tuple[float, float, int, float] | None:
    """Where the time to all-running goes: daemon work, batch + agent start-up, payload launches."""
    try:
        jobset = next(shared.glob("sub-*/jobset.json")).stat().st_mtime
        starts = sorted(float(p.read_text().split()[1]) for p in shared.glob("sub-*/reports/*.started"))
    except (StopIteration, OSError, IndexError, ValueError):
        return None
    if not starts:
        return None
    return jobset - start_wall, starts[0] - jobset, len(starts), starts[-1] - starts[0]


def sleeper(base: Path, seconds: int) -> str:
    """A site wrapper that sleeps, then leaves the outputs a reco job declares (listed in payload.commands).

    With the outputs it creates ``<base>/ends/<its work dir's name>``: the benchmarks read
    each payload's end from there (the work dirs are cleaned up when the job is done).  The
    files are made by the shell's own redirections, not ``touch``: the stand-in payload is
    ``sh`` + ``sleep``, two processes, so the tree CPU counts ours, not a third exec per job.
    """
    path = base / "bin" / "compass-bench-sleep"
    path.parent.mkdir(parents=True, exist_ok=True)
    ends = base / "ends"  # <work dir name> touched with the outputs: when each payload ended (no extra process)
    ends.mkdir(exist_ok=True)
    path.write_text(
        f"#!/bin/sh\nsleep {seconds}\n"
        f': >"$TMPMDSTFILE"; : >"$TMPHISTFILE"; : >"$EVTDUMPFILE"; : >"{ends}/${{PWD##*/}}"\n'
        'echo "0 events had been written to miniDST"\necho "End of Job"\n'
    )
    path.chmod(0o755)
    return str(path)


def prepare_run(base: Path, sleep: int, poll: float) -> tuple[Dispatcher, Path, dict[str, str]]:
    """A dispatcher holding 512 × ``sleep`` jobs, the daemon's site file and environment (shared with e2e.py)."""
    dispatcher = Dispatcher(str(base / "panda.sqlite"), port=0, check_interval=600).start()
    chunks = make_production_input(base / "castor", 2016, "W14", {275678: NODES * SLOTS}, n_events=5)
    command = sleeper(base, sleep)
    task = reco_task([c.raw_path for c in chunks], name="bench", max_walltime=3600, transformation=command)
    submit_task(str(base / "panda.sqlite"), task)
    site = {
        "site": {"name": "BENCH", "workdir": str(base / "work")},
        "panda": {"url": dispatcher.url, "timeout": 60},
        "storage": {"input_root": str(base / "castor"), "output_root": str(base / "eos")},
        "calibdb": {
            "backend": "sqlite",
            "snapshot": str(calibdb.demo_snapshot("sqlite", base / "calib")),
            "scratch_dir": str(base / "scratch"),
        },
        "payload": {"commands": [command]},
        "hpc": {
            "max_jobs": NODES * SLOTS,
            "max_nodes": NODES,
            "slots_per_node": SLOTS,
            "fake_nodes": True,
            "batch_url": "fork://localhost",
            "poll_interval": poll,
            "heartbeat_interval": poll,
            "shared_dir": str(base / "hpc"),
            "max_submissions": 1,
        },
    }
    site_yaml = base / "site.yaml"
    site_yaml.write_text(yaml.safe_dump(site))
    env = dict(os.environ, HOME=str(base / "home"), RADICAL_BASE=str(base / "radical"))
    (base / "home").mkdir(exist_ok=True)
    return dispatcher, site_yaml, env


def daemon_argv(site_yaml: Path) -> list[str]:
    """``compass-pilot daemon --once`` on that site file."""
    return [
        sys.executable,
        "-m",
        "compass_pilot.cli",
        "--log-level",
        "WARNING",
        "daemon",
        "--site",
        str(site_yaml),
        "--once",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sleep", type=int, default=90, help="payload seconds")
    parser.add_argument("--window", type=float, default=40, help="steady-state measuring window (s)")
    parser.add_argument("--poll", type=float, default=10, help="daemon poll interval (site default 30)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="compass-bench-"))
    dispatcher, site_yaml, env = prepare_run(base, args.sleep, args.poll)
    daemon_proc = None
    try:
        start = time.monotonic()
        start_wall = time.time()
        daemon_proc = subprocess.Popen(
            daemon_argv(site_yaml),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        daemon = psutil.Process(daemon_proc.pid)
        reports = base / "hpc"
        all_running = None
        peak_daemon = peak_agent = 0
        while time.monotonic() - start < 120:
            started = len(list(reports.glob("sub-*/reports/*.started")))
            peak_daemon = max(peak_daemon, daemon.memory_info().rss)
            if started >= NODES * SLOTS:
                all_running = time.monotonic() - start
                break
            time.sleep(0.2)
        phases = _phases(reports, start_wall)
        agents, launchers = _procs(daemon)
        requests_at_start = dict(dispatcher.store.request_counts)
        # steady state: everything running, only heartbeats and polling
        time.sleep(2)
        watched = [daemon, *agents, *launchers]
        cpu0 = cpu_seconds(watched)
        parts0 = (cpu_seconds([daemon]), cpu_seconds(agents), cpu_seconds(launchers))
        updates0 = dispatcher.store.request_counts["updateJobsInBulk"]
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.window:
            peak_daemon = max(peak_daemon, daemon.memory_info().rss)
            for agent in agents:
                try:
                    peak_agent = max(peak_agent, agent.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(1)
        window = time.monotonic() - t0
        cpu_steady = cpu_seconds(watched) - cpu0
        parts = [
            b - a
            for a, b in zip(parts0, (cpu_seconds([daemon]), cpu_seconds(agents), cpu_seconds(launchers)), strict=True)
        ]
        heartbeat_requests = dispatcher.store.request_counts["updateJobsInBulk"] - updates0
        rounds = max(1, round(window / args.poll))
        before_final = dispatcher.store.request_counts["updateJobsInBulk"]
        output = daemon_proc.communicate(timeout=args.sleep + 300)[0].decode()
        total = time.monotonic() - start
        summary = dispatcher.summary()
        final_requests = dispatcher.store.request_counts["updateJobsInBulk"] - before_final
        state = json.loads((base / "hpc" / "daemon_state.json").read_text())
        print(f"jobs: {summary['jobs_by_status']}  (daemon said: {output.strip().splitlines()[-1]})")
        print(
            f"getJob requests to fetch {NODES * SLOTS} jobs: {requests_at_start.get('getJob', 0)}"
            f" (whole run: {dispatcher.store.request_counts['getJob']})"
        )
        print(
            f"daemon start → all {NODES * SLOTS} payloads running: {all_running:.1f} s"
            if all_running
            else "not all running within 120 s"
        )
        if phases:
            print(
                "  of which: fetch + stage-in + job set written {:.1f} s, batch job + agents up → first payload"
                " {:.1f} s, first → last of the {} payloads {:.1f} s".format(*phases)
            )
        print(
            f"update requests in the {window:.0f} s steady window: {heartbeat_requests} over ~{rounds} poll rounds"
            f" = {heartbeat_requests / rounds:.2f} per round"
        )
        print(f"update requests for the final reports: {final_requests}")
        print(
            f"all update requests: {dispatcher.store.request_counts['updateJobsInBulk']}"
            f" (+{dispatcher.store.request_counts['updateJob']} single) for {summary['updates']} job updates"
        )
        print(
            f"CPU, daemon + {len(agents)} agents + {len(launchers)} launcher procs, steady: "
            f"{cpu_steady / window * 60:.2f} s per minute = {cpu_steady / window * 100:.2f} % of one core"
        )
        print(
            f"  of which daemon {parts[0] / window * 60:.2f} s, agents {parts[1] / window * 60:.2f} s, "
            f"launchers {parts[2] / window * 60:.2f} s per minute"
        )
        print(f"peak RSS: daemon {peak_daemon / 2**20:.1f} MiB, one node agent {peak_agent / 2**20:.1f} MiB")
        print(
            f"total wall time {total:.0f} s; daemon fetch/update requests by its own count: "
            f"{state['fetch_requests']}/{state['update_requests']}"
        )
        return 0 if summary["jobs_by_status"].get("finished") == NODES * SLOTS else 1
    finally:
        if daemon_proc and daemon_proc.poll() is None:
            daemon_proc.kill()
        dispatcher.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
