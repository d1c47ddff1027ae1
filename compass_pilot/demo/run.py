"""``compass-pilot demo``: a small COMPASS production, end to end, on one machine.

It starts the embedded dispatcher on a free loopback port, writes synthetic raw
chunks into a local "Castor", builds a calibration DB snapshot, submits a reco task
(20 chunks of one run), and runs real grid pilots — separate processes, two at a time
— until every job has a final state.  Then it prints jobs by status, events and
outputs.  It says what it does as it goes (a progress line whenever the jobs' states
change), gives the monitor page's URL while the dispatcher is up, and where it left its
files.  Exit 0 only if every job finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from compass_pilot.demo.rawdata import make_production_input
from compass_pilot.exitcodes import ExitCode

log = logging.getLogger(__name__)

YEAR, PERIOD, PROD, SLT, PHAST = 2016, "W14", "P09", 2, 7
FIRST_RUN = 275678


def fetch_summary(url: str) -> dict[str, Any]:
    """The dispatcher's JSON summary (jobs by status, per-run table, errors)."""
    with urllib.request.urlopen(f"{url}/api/summary", timeout=30) as answer:
        return json.loads(answer.read().decode())


def demo_site(base: Path, url: str, calib_backend: str, snapshot: Path, *, storage: dict[str, Any]) -> dict[str, Any]:
    """The site config the demo's pilots run with (written as YAML for the subprocesses)."""
    return {
        "site": {"name": "LOCAL_COMPASS", "workdir": str(base / "work")},
        "panda": {"url": url, "dialect": "legacy", "timeout": 30, "retries": 5, "backoff": 0.5},
        "grid": {"heartbeat_interval": 10, "max_jobs": 0, "payload_grace": 10, "sample_interval": 10},
        "storage": storage,
        "calibdb": {"backend": calib_backend, "snapshot": str(snapshot), "scratch_dir": str(base / "scratch")},
        "hpc": {
            "shared_dir": str(base / "hpc"),
            "fake_nodes": True,
            "max_jobs": 64,
            "max_nodes": 2,
            "poll_interval": 2,
            "heartbeat_interval": 10,
        },
    }


def run_pilots(site_file: Path, url: str, parallel: int, base: Path, deadline: float) -> int:
    """Run grid pilots, ``parallel`` at a time, until the dispatcher has nothing left to hand out.

    Prints a progress line whenever the jobs' states change (the loop wakes when a pilot
    ends, at the latest every 5 s), so a person watching knows it is moving.
    """
    launched = 0
    running: list[subprocess.Popen[bytes]] = []
    logs = base / "pilots"
    logs.mkdir(exist_ok=True)
    start = time.time()
    last_line = ""
    while time.time() < deadline:
        summary = fetch_summary(url)
        open_jobs = summary.get("open_jobs", 0)
        running = [p for p in running if p.poll() is None]
        line = progress_line(summary, len(running))
        if line != last_line:
            print(f"  [{time.time() - start:5.1f} s] {line}", flush=True)
            last_line = line
        if open_jobs == 0 and not running:
            break
        waiting = summary.get("activated_jobs", open_jobs)
        while len(running) < parallel and waiting > len(running):
            launched += 1
            out = open(logs / f"pilot-{launched}.log", "wb")  # noqa: SIM115 - closed when the process ends
            cmd = [sys.executable, "-m", "compass_pilot.cli", "grid", "--site-config", str(site_file)]
            running.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        if running:
            try:
                running[0].wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(2)  # jobs are sent but not final yet (another attempt may come)
    for proc in running:
        proc.terminate()
    return launched


def progress_line(summary: dict[str, Any], pilots: int) -> str:
    """ "12/20 finished, 0 failed, 2 running, 6 waiting; 2 pilots" from the dispatcher's summary."""
    by = summary.get("jobs_by_status", {})
    total = summary.get("total_jobs", sum(by.values()))
    active = sum(by.get(s, 0) for s in ("sent", "starting", "running", "transferring", "holding"))
    return (
        f"{by.get('finished', 0)}/{total} finished, {by.get('failed', 0)} failed, {active} running,"
        f" {by.get('activated', 0)} waiting; {pilots} pilot{'s' if pilots != 1 else ''}"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    import calibdb
    from compass_pilot.panda.dispatcher import Dispatcher, submit_task

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="compass-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    castor, eos = base / "castor", base / "eos"
    runs = {FIRST_RUN: 10, FIRST_RUN + 1: 10} if args.chain else {FIRST_RUN: args.chunks}
    n_chunks = sum(runs.values())
    print(f"demo in {base}", flush=True)
    print(f"  writing {n_chunks} raw chunks of {args.events} events into {castor} …", flush=True)
    chunks = make_production_input(castor, YEAR, PERIOD, runs, n_events=args.events)
    print(f"  building the {args.calibdb} calibration snapshot …", flush=True)
    snapshot = calibdb.demo_snapshot(args.calibdb, base / "calib")
    dispatcher = Dispatcher(str(base / "panda.sqlite"), port=0, check_interval=5)
    dispatcher.start()
    print(f"  dispatcher up: monitor page {dispatcher.url}/ (while the demo runs)", flush=True)
    try:
        return _run_demo(args, base, castor, eos, chunks, snapshot, dispatcher, submit_task)
    finally:
        print(f"files left in {base} (castor/ raw input, eos/ outputs, pilots/ logs, panda.sqlite)", flush=True)
        if not args.dir:
            print(f"  remove them with: rm -rf {base}", flush=True)


def _run_demo(
    args: argparse.Namespace,
    base: Path,
    castor: Path,
    eos: Path,
    chunks: list[Any],
    snapshot: Path,
    dispatcher: Any,
    submit_task: Any,
) -> int:
    xrootd = None
    try:
        storage: dict[str, Any] = {"copytool": "local", "input_root": str(castor), "output_root": str(eos)}
        if args.xrootd:
            from compass_pilot.copytools.xrootd_server import XRootDServer

            xrootd = XRootDServer()
            xrootd.__enter__()
            storage = {"copytool": "xrootd", "input_root": f"{xrootd.url}/castor", "output_root": f"{xrootd.url}/eos"}
            # the raw chunks move into the server's export; outputs will arrive there too
            shutil.copytree(castor, xrootd.data / "castor")
            xrootd.give_to_server(xrootd.data / "castor")
            eos = xrootd.data / "eos"
        site_file = base / "site.yaml"
        site_file.write_text(yaml.safe_dump(demo_site(base, dispatcher.url, args.calibdb, snapshot, storage=storage)))
        task = {
            "name": f"demo-{PROD}-{'chain' if args.chain else 'reco'}",
            "prod": PROD,
            "year": YEAR,
            "period": PERIOD,
            "job_type": "reco",
            "sw_release": f"slt{SLT}-phast{PHAST}",
            "slt": SLT,
            "phast": PHAST,
            "max_attempts": 3,
            "priority": 2000,
            "max_walltime": 3600,
            "chunks": [c.raw_path for c in chunks],
        }
        if args.chain:
            task["chain"] = True
        submit_task(str(base / "panda.sqlite"), task)
        print(f"  task {task['name']} submitted; running pilots, {args.pilots} at a time:", flush=True)
        start = time.time()
        pilots = run_pilots(site_file, dispatcher.url, args.pilots, base, deadline=start + 1800)
        summary = fetch_summary(dispatcher.url)
        ok = print_summary(summary, eos, pilots, time.time() - start, chain=args.chain)
        if args.keep_running:
            print(f"dispatcher left running: monitor page {dispatcher.url}/ — Ctrl-C to stop", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return ExitCode.OK if ok else ExitCode.FAILURE
    finally:
        if xrootd is not None:
            xrootd.__exit__(None, None, None)
        dispatcher.stop()
        print("dispatcher stopped", flush=True)


def print_summary(summary: dict[str, Any], eos: Path, pilots: int, seconds: float, *, chain: bool) -> bool:
    by_status = summary.get("jobs_by_status", {})
    outputs = sorted(p for p in eos.rglob("*") if p.is_file()) if eos.exists() else []
    print(f"\n{pilots} pilots ran in {seconds:.1f} s")
    print("jobs by status: " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))
    print(f"events reconstructed: {summary.get('events', 0)}")
    print(f"outputs at the destination: {len(outputs)} files, {sum(p.stat().st_size for p in outputs)} bytes")
    for row in summary.get("runs", []):
        # one vocabulary with the monitor page: PanDA's "activated", not "defined"
        print("  run " + "  ".join(f"{'activated' if k == 'defined' else k}={v}" for k, v in row.items()))
    errors = summary.get("errors", [])
    for err in errors[:10]:
        print(f"  error {err}")
    total = sum(by_status.values())
    finished = by_status.get("finished", 0)
    ok = total > 0 and finished == total
    if chain:
        ok = ok and all(
            row.get("cross_checked") == "passed" and row.get("dump_cross_checked") == "passed"
            for row in summary.get("runs", [])
        )
    print("DEMO OK" if ok else "DEMO FAILED")
    return ok


if __name__ == "__main__":
    from compass_pilot.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
