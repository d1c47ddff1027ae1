"""Blue Waters scale by simulation: one MOM-node daemon at 30 × 512 jobs, and 300 daemons' jobs at one dispatcher.

Two parts, one table (issue 15's targets beside the figures, printed, never asserted):

**one daemon** — the real daemon (``benchmarks/simbatch.py``: fetch, stage-in, packing,
job sets, watching, stage-out, bulk reports, journal — only the batch system and the
compute nodes are simulated, in another process) holds ``--submissions`` × 512 jobs
(default 30 × 512 = 15,360, the queue depth of the seed's ``qstat`` listing) against the
real embedded dispatcher.  The daemon fills at one submission per 1 s round, then runs
at ``--poll`` seconds per round with ``--heartbeat`` seconds between heartbeats.
Printed: the time to fill, the daemon's CPU per minute while it holds all of them
running (% of one core), its peak RSS over the whole run, and the drain: every virtual
payload ends ``--runtime`` s after the first submission, in a 20 s wave — seconds from the
wave to all finals acknowledged (stage-out, bulk finals) — or what was acknowledged within
``--drain-window`` s, as jobs/s — and the daemon's CPU per 1,000 jobs finished.  Inputs
are linked, not copied (``storage.link_inputs``).

**one dispatcher** — ``--daemons`` (300) daemons' worth of jobs live at once (300 × 512
= 153,600 running, plus a queued reserve) in the real dispatcher, driven over loopback
by ``--clients`` processes that replay what each daemon sends: a heartbeat of its 512
jobs every ``--heartbeat`` s, and when its submission ends (every ``--runtime`` s,
staggered) 512 finals, getJob(512), 512 starting, 512 running — all bulk, as the daemon
does.  ``--speed`` compresses time (5 = five times the traffic of those intervals).  A
probe sends a single updateJob every 0.2 s, as a grid pilot would.  Printed: p50/p99
latency per request kind and the dispatcher's CPU per minute.

How a site reads it: the daemon's CPU per minute and its RSS at the queue depth you plan
(``--submissions``) size the MOM node; the drain line says how fast a wave of endings
reaches PanDA.  The dispatcher part says how many daemons one dispatcher host can serve
at your payload runtime and heartbeat interval: raise ``--speed`` until p99 passes what
your pilots tolerate.  This box is 2 shared cores: figures from a busy box are upper
bounds for cost and lower bounds for speed.

    python benchmarks/scale.py [--part daemon|dispatcher|both] [--submissions 30] [--daemons 300]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

# benchmarks/dispatcher.py: the shared DB builder and client (benchmarks/ is not a package)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import dispatcher as dispatcher_bench

from compass_pilot.job import JobReport
from compass_pilot.panda import page
from compass_pilot.panda.dispatcher import Dispatcher
from compass_pilot.panda.metrics import BUCKETS

HERE = Path(__file__).resolve().parent
SLOTS, NODES = 32, 16
PER_SUB = SLOTS * NODES


# -- part 1: one daemon on the simulated batch system -------------------------------------
def _inputs(db: Path, root: Path) -> None:
    """The raw chunk files the jobs stage in: hard links of one small file (content is not read)."""
    template = root / ".raw-template"
    root.mkdir(parents=True, exist_ok=True)
    template.write_bytes(b"\0" * 4096)
    conn = sqlite3.connect(db)
    try:
        for (spec,) in conn.execute("SELECT spec FROM jobs"):
            job = json.loads(spec)
            directory = root / job["realDatasetsIn"]
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / job["inFiles"]
            if not target.exists():
                os.link(template, target)
    finally:
        conn.close()


def run_daemon_part(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    n_jobs = args.submissions * PER_SUB
    base.mkdir(parents=True, exist_ok=True)
    db = dispatcher_bench.prepared(Path(args.cache), n_jobs, base)
    _inputs(db, base / "castor")
    dispatcher = Dispatcher(str(db), port=0, check_interval=3600).start()
    site = {
        "site": {"name": "SIM", "workdir": str(base / "work")},
        "panda": {"url": dispatcher.url, "timeout": 120},
        "storage": {"input_root": str(base / "castor"), "output_root": str(base / "eos"), "link_inputs": True},
        "hpc": {
            "max_jobs": PER_SUB,
            "max_nodes": NODES,
            "slots_per_node": SLOTS,
            "fake_nodes": True,
            "shared_dir": str(base / "hpc"),
            "max_submissions": args.submissions,
            "poll_interval": args.poll,
            "heartbeat_interval": args.heartbeat,
        },
    }
    (base / "site.yaml").write_text(yaml.safe_dump(site))
    status = base / "phases.jsonl"
    env = dict(os.environ, HOME=str(base))
    start = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "simbatch.py"),
            "--site",
            str(base / "site.yaml"),
            "--runtime",
            str(args.runtime),
            "--hold-poll",
            str(args.poll),
            "--fill",
            str(args.submissions),
            "--status",
            str(status),
        ],
        env=env,
    )
    daemon = psutil.Process(proc.pid)
    peak = 0
    out: dict[str, Any] = {"jobs": n_jobs}

    def counts() -> dict[str, int]:
        return dispatcher.store.status_counts()

    last_cpu = [0.0]

    def cpu() -> float:
        """The daemon's own CPU seconds (the last known figure once it has exited)."""
        try:
            last_cpu[0] = sum(daemon.cpu_times()[:2])
        except psutil.Error:
            pass
        return last_cpu[0]

    def sample() -> None:
        nonlocal peak
        cpu()
        try:
            peak = max(peak, daemon.memory_info().rss)
        except psutil.Error:
            pass

    try:
        limit = start + args.runtime * 2 + 240
        # fill: until every job is running at the dispatcher
        while counts().get("running", 0) < n_jobs and time.monotonic() < limit and proc.poll() is None:
            sample()
            time.sleep(0.5)
        out["fill_s"] = time.monotonic() - start
        wave = 0.0
        while not wave and proc.poll() is None and time.monotonic() < limit:
            lines = status.read_text().splitlines() if status.exists() else []
            wave = next((json.loads(x)["wave"] for x in lines if '"filled"' in x), 0.0)
            time.sleep(0.2)
        if not wave:  # the daemon never said it held them all: no hold nor drain to measure
            out["phase_error"] = "the daemon never reported holding every submission at once ('filled')"
        # hold: everything running, nothing ended yet (the wave is --runtime after the first submission)
        cpu0, t0 = cpu(), time.monotonic()
        hold_end = min(t0 + args.window, t0 + wave - time.time() - 1)
        while time.monotonic() < hold_end:
            sample()
            time.sleep(1)
        hold = time.monotonic() - t0
        out["hold_s"] = hold
        out["hold_rss"] = peak  # the fill included: the memory of holding them all
        out["hold_cpu_min"] = (cpu() - cpu0) / max(hold, 1e-9) * 60
        # drain: from the wave of endings to all finals acknowledged
        while time.time() < wave:
            sample()
            time.sleep(0.2)
        cpu1, t1 = cpu(), time.monotonic()
        drain_end = min(limit, t1 + args.drain_window)
        while counts().get("finished", 0) + counts().get("failed", 0) < n_jobs and time.monotonic() < drain_end:
            sample()
            time.sleep(0.5)
        out["drain_s"] = time.monotonic() - t1
        out["drain_cpu"] = cpu() - cpu1
        out["final"] = counts()
        if sum(out["final"].get(k, 0) for k in ("finished", "failed")) >= n_jobs:
            proc.wait(timeout=120)
        lines = status.read_text().splitlines() if status.exists() else []
        done = [json.loads(x) for x in lines if '"done"' in x]
        out["wakeups"] = done[-1].get("wakeups") if done else None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        dispatcher.stop()
    out["peak_rss"] = peak
    return out


# -- part 2: many daemons' jobs at one dispatcher -----------------------------------------
def live_db(cache: Path, work: Path, live: int, reserve: int) -> Path:
    """A DB with ``live`` jobs running (PandaIDs 1..live) and ``reserve`` queued behind them."""
    template = cache / f"live-{live}-{reserve}.sqlite"
    if not template.exists():
        partial = dispatcher_bench.prepared(cache, live + reserve, work)
        conn = sqlite3.connect(partial)
        now = time.time()
        conn.execute(
            "UPDATE jobs SET status = 'running', modified = ?, heartbeat = ?, node = 'sim' WHERE panda_id <= ?",
            (now, now, live),
        )
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        shutil.move(partial, template)
    target = work / f"live-{time.monotonic_ns()}.sqlite"
    shutil.copyfile(template, target)
    return target


def _daemons(
    url: str, first: int, count: int, args: dict[str, Any], start_at: float, out: Any
) -> None:  # pragma: no cover - a client process
    """Play ``count`` daemons, each owning 512 consecutive live PandaIDs, until the window closes."""
    import heapq
    import random

    client = dispatcher_bench._client(url)
    rng = random.Random(first)
    hb, runtime = args["heartbeat"] / args["speed"], args["runtime"] / args["speed"]
    owned: dict[int, list[tuple[int, int]]] = {
        d: [(pid, 1) for pid in range(d * PER_SUB + 1, (d + 1) * PER_SUB + 1)] for d in range(first, first + count)
    }
    events: list[tuple[float, int, str]] = []
    while time.time() < start_at:
        time.sleep(0.01)
    now = time.monotonic()
    for d in owned:
        heapq.heappush(events, (now + rng.uniform(0, hb), d, "heartbeat"))
        heapq.heappush(events, (now + rng.uniform(0, runtime), d, "cycle"))
    end = now + args["warmup"] + args["window"]
    measure_from = now + args["warmup"]
    lat: dict[str, list[float]] = {}
    lag: list[float] = []

    def timed(kind: str, call: Any, *a: Any) -> Any:
        t0 = time.perf_counter()
        value = call(*a)
        if time.monotonic() >= measure_from:
            lat.setdefault(kind, []).append(time.perf_counter() - t0)
        return value

    while events:
        when, d, kind = heapq.heappop(events)
        if when >= end:
            break
        wait = when - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elif time.monotonic() >= measure_from:
            lag.append(-wait)
        jobs = owned[d]
        if kind == "heartbeat":
            timed("heartbeat 512", client.update_jobs, [JobReport(p, "running", a) for p, a in jobs])
            heapq.heappush(events, (when + hb, d, "heartbeat"))
            continue
        finals = [JobReport(p, "finished", a, n_events=100) for p, a in jobs]
        timed("finals 512", client.update_jobs, finals)
        got = timed("getJob 512", client.get_jobs, PER_SUB)
        owned[d] = jobs = [(int(j["PandaID"]), int(j["attemptNr"])) for j in got]
        if jobs:
            timed("starting 512", client.update_jobs, [JobReport(p, "starting", a) for p, a in jobs])
            timed("running 512", client.update_jobs, [JobReport(p, "running", a) for p, a in jobs])
            heapq.heappush(events, (when + runtime, d, "cycle"))
    client.close()
    out.put((lat, lag))


def _probe(url: str, live: int, args: dict[str, Any], start_at: float, out: Any) -> None:  # pragma: no cover
    """A grid pilot's single heartbeat every 0.2 s on a job outside the daemons' blocks."""
    client = dispatcher_bench._client(url)
    while time.time() < start_at:
        time.sleep(0.01)
    t_end = time.monotonic() + args["warmup"] + args["window"]
    measure_from = time.monotonic() + args["warmup"]
    lat: list[float] = []
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        client.update_job(JobReport(live, "running", 1))
        if time.monotonic() >= measure_from:
            lat.append(time.perf_counter() - t0)
        time.sleep(0.2)
    client.close()
    out.put(({"single updateJob": lat}, []))


def run_dispatcher_part(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    live = args.daemons * PER_SUB
    base.mkdir(parents=True, exist_ok=True)
    reserve = max(PER_SUB * 40, int(live * args.window / args.runtime * args.speed * 1.5))
    reserve = ((reserve + PER_SUB - 1) // PER_SUB) * PER_SUB
    db = live_db(Path(args.cache), base, live + 1, reserve)  # +1: the probe's own job
    dispatcher = Dispatcher(str(db), port=0, check_interval=3600).start()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    plan = {
        "heartbeat": args.heartbeat,
        "runtime": args.runtime,
        "speed": args.speed,
        "warmup": 10.0,
        "window": args.window,
    }
    start_at = time.time() + 4.0
    per = -(-args.daemons // args.clients)
    procs = [
        ctx.Process(target=_daemons, args=(dispatcher.url, i, min(per, args.daemons - i), plan, start_at, out))
        for i in range(0, args.daemons, per)
    ]
    procs.append(ctx.Process(target=_probe, args=(dispatcher.url, live + 1, plan, start_at, out)))
    for proc in procs:
        proc.start()
    while time.time() < start_at + plan["warmup"]:
        time.sleep(0.05)
    stats = page.request_stats(dispatcher.store)  # the wire's own per-request timing (histograms)
    served0 = stats.snapshot()
    cpu0, t0 = time.process_time(), time.monotonic()
    results = [out.get(timeout=plan["window"] + 600) for _ in procs]
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    served1 = stats.snapshot()
    for proc in procs:
        proc.join()
    counts = dispatcher.store.status_counts()
    dispatcher.stop()
    lat: dict[str, list[float]] = {}
    lags: list[float] = []
    for kinds, lag in results:
        for kind, values in kinds.items():
            lat.setdefault(kind, []).extend(values)
        lags.extend(lag)
    every = [v for values in lat.values() for v in values]
    return {
        "live": live,
        "lat": lat,
        "all": every,
        "cpu_min": cpu / wall * 60,
        "lag_p99": dispatcher_bench.pct(lags, 0.99) if lags else 0.0,
        "counts": counts,
        "rate": live / args.runtime * args.speed * 60,
        "served_p99": _histogram_p99(served0, served1),
    }


def _histogram_p99(before: dict[str, Any], after: dict[str, Any]) -> tuple[float, int]:
    """(upper bound of the bucket holding the 99th percentile, requests) over every method, in the window."""
    counts = [0] * (len(BUCKETS) + 1)
    for method, (bucket_counts, _sum) in after.items():
        old = before.get(method, ([0] * len(counts), 0.0))[0]
        for i, n in enumerate(bucket_counts):
            counts[i] += n - old[i]
    total = sum(counts)
    seen = 0
    for bound, n in zip((*BUCKETS, math.inf), counts, strict=True):
        seen += n
        if total and seen >= 0.99 * total:
            return bound, total
    return math.nan, total


def _p50_p99(values: list[float]) -> str:
    return f"{dispatcher_bench.pct(values, 0.5) * 1000:.0f} / {dispatcher_bench.pct(values, 0.99) * 1000:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("daemon", "dispatcher", "both"), default="both")
    parser.add_argument("--submissions", type=int, default=30, help="one daemon: submissions of 512 to hold")
    parser.add_argument(
        "--runtime", type=float, default=200.0, help="daemon part: seconds from the first submission to the endings"
    )
    parser.add_argument("--poll", type=float, default=30.0, help="daemon poll interval once filled (site default)")
    parser.add_argument("--heartbeat", type=float, default=1800.0, help="heartbeat interval (pilot3/site default)")
    parser.add_argument("--window", type=float, default=60.0, help="measuring window, seconds")
    parser.add_argument("--drain-window", type=float, default=90.0, help="daemon part: seconds of drain measured")
    parser.add_argument("--daemons", type=int, default=300, help="dispatcher part: daemons of 512 live jobs")
    parser.add_argument("--job-runtime", type=float, default=3600.0, help="dispatcher part: payload seconds")
    parser.add_argument("--speed", type=float, default=5.0, help="dispatcher part: time compression")
    parser.add_argument("--clients", type=int, default=4, help="dispatcher part: client processes")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "compass-bench-dispatcher"))
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (to look into it)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="compass-bench-scale-"))
    rows: list[tuple[str, str, str]] = []
    try:
        if args.part in ("daemon", "both"):
            print(f"one daemon, {args.submissions} × {PER_SUB} jobs …", file=sys.stderr)
            d = run_daemon_part(args, base / "daemon")
            pct_core = d["hold_cpu_min"] / 60 * 100
            broken = d.get("phase_error")  # hold and drain figures would be nonsense: say why instead
            finished = d["final"].get("finished", 0)
            done = "all" if finished + d["final"].get("failed", 0) >= d["jobs"] else f"{finished}"
            rows += [
                ("one daemon: jobs", f"{d['jobs']} ({finished} finished, {d['final'].get('failed', 0)} failed)", ""),
                ("  start → all running at the dispatcher", f"{d['fill_s']:.0f} s", ""),
                (
                    f"  CPU while holding them (poll {args.poll:.0f} s, {d['hold_s']:.0f} s window)",
                    f"not measured: {broken}"
                    if broken
                    else f"{d['hold_cpu_min']:.2f} s/min = {pct_core:.2f} % of a core",
                    "< 5 % of a core",
                ),
                (
                    "  peak RSS: fill + hold / whole run",
                    f"{d['hold_rss'] / 2**20:.0f} / {d['peak_rss'] / 2**20:.0f} MiB",
                    "< 150 MiB",
                ),
                (
                    "  wake-ups the simulated agents sent (S + E datagrams)",
                    "daemon still running at the end: not counted"
                    if d.get("wakeups") is None
                    else f"{d['wakeups'].get('sent', 0)} sent, {d['wakeups'].get('failed', 0)} failed"
                    + ("" if d["wakeups"].get("sent") else " — no notify target in the job sets: poll measured"),
                    "",
                ),
                (
                    f"  drain: wave of endings → {done} finals acknowledged",
                    "not measured (see above)"
                    if broken
                    else f"{d['drain_s']:.0f} s = {finished / max(d['drain_s'], 1e-9):.0f} jobs/s, daemon CPU"
                    + (
                        f" {d['drain_cpu'] / finished * 1000:.1f} s per 1,000 jobs"
                        if finished
                        else f" {d['drain_cpu']:.0f} s (no final acknowledged yet)"
                    ),
                    "",
                ),
            ]
        if args.part in ("dispatcher", "both"):
            print(f"one dispatcher, {args.daemons} daemons × {PER_SUB} live jobs …", file=sys.stderr)
            args.runtime = args.job_runtime
            r = run_dispatcher_part(args, base / "dispatcher")
            rows.append(
                (
                    f"one dispatcher: {r['live']} live jobs, {args.daemons} daemons",
                    f"{r['rate']:.0f} jobs/min ending, heartbeat every {args.heartbeat / args.speed:.0f} s",
                    "",
                )
            )
            for kind, values in sorted(r["lat"].items()):
                rows.append(
                    (
                        f"  {kind}: p50 / p99 ({len(values)} requests)",
                        _p50_p99(values),
                        "",
                    )
                )
            rows.append(
                (
                    "  every request: p50 / p99",
                    _p50_p99(r["all"]),
                    "p99 < 100 ms",
                )
            )
            bound, served = r["served_p99"]
            rows.append(
                (
                    "  inside the dispatcher (body read → answer written): p99",
                    f"<= {bound * 1000:.0f} ms ({served} requests, /metrics histogram bucket)",
                    "",
                )
            )
            rows.append(
                ("  dispatcher CPU", f"{r['cpu_min']:.1f} s/min = {r['cpu_min'] / 60 * 100:.0f} % of a core", "")
            )
            rows.append(
                ("  load average (1 / 5 / 15 min) at the end", " / ".join(f"{x:.1f}" for x in os.getloadavg()), "")
            )
            rows.append(("  client schedule lag p99 (server too slow if large)", f"{r['lag_p99']:.1f} s", ""))
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{'figure':<{width}} | {'measured':<{vwidth}} | target")
    for name, value, target in rows:
        print(f"{name:<{width}} | {value:<{vwidth}} | {target}")
    print("(2-core box shared with other work: cost figures are upper bounds, speed figures lower bounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
