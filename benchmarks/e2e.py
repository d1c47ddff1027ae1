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
- **peak RSS** of the daemon (sampled), of its largest helper process (radical.saga's shell, a
  batch broker) and of the largest single process in the tree.

The dispatcher's own CPU (this process) is printed apart.  Issue 15 targets (printed,
not asserted): overhead < 3 s, tree CPU < 5 s, daemon peak RSS < 50 MiB.  Run it
``--runs 3`` times and read the medians: the box is shared.

    python benchmarks/e2e.py [--sleep 10] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import multijob  # the run's set-up is shared, not duplicated
from filewatch import FileWatch
from proctree import KINDS, ProcTree, ScannerClient, become_subreaper

JOBS = multijob.NODES * multijob.SLOTS
FINAL = ("finished", "failed")
TARGETS = {"start_running": 2.0, "end_ack": 0.5, "overhead": 3.0, "tree_cpu": 5.0, "daemon_rss": 50.0}


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def job_times(base: Path, outcomes: dict[tuple[str, str], float]) -> dict[int, dict[str, float]]:
    """Per job: payload started (its marker), payload ended, outcome written (``outcomes``, from inotify).

    Payload end = the mtime of ``<base>/ends/<work dir name>``, which the sleeper creates
    with its outputs as its last act (the daemon removes the work dirs once a job is done).
    """
    out: dict[int, dict[str, float]] = {}
    for jobset in _jobsets(base):
        reports = Path(jobset["reports_dir"])
        name = _attributes_name(jobset)
        for panda_id, workdir in _node_jobs(jobset):
            rec: dict[str, float] = {}
            try:
                rec["started"] = float((reports / f"{panda_id}.started").read_text().split()[1])
            except (OSError, ValueError, IndexError):
                pass
            end = _mtime(base / "ends" / workdir.name)
            if end is not None:
                rec["ended"] = end
            if (str(workdir), name) in outcomes:
                rec["outcome"] = outcomes[(str(workdir), name)]
            out[panda_id] = rec
    return out


def _jobsets(base: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted((base / "hpc").glob("sub-*/jobset.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def _attributes_name(jobset: dict[str, Any]) -> str:
    """The outcome file the agents write last (Harvester's attributes file, or the job set's own name)."""
    from harvester_plugins.jobfiles import ATTRIBUTES_KEY, DEFAULT_NAMES

    return str((jobset.get("report_files") or {}).get(ATTRIBUTES_KEY) or DEFAULT_NAMES[ATTRIBUTES_KEY])


def _node_jobs(jobset: dict[str, Any]) -> list[tuple[int, Path]]:
    """(PandaID, work dir) of every job in a job set's JSON (format: hpc/jobset.py)."""
    return [
        (int(entry["panda_id"]), Path(entry["workdir"]))
        for node in jobset.get("node_jobs") or []
        for entry in node.get("jobs") or []
    ]


def dispatcher_times(dispatcher: Any) -> tuple[dict[int, float], dict[int, tuple[float, str]], list[str]]:
    """From the dispatcher's update log: when PanDA first showed each job running (or already done),
    the accepted final per job, and error diags.

    A job whose payload ended before the daemon said 'running' goes starting → finished:
    its final counts as its first sign of life, so "all 512 running" is reached with short payloads too.
    """
    running: dict[int, float] = {}
    finals: dict[int, tuple[float, str]] = {}
    for row in dispatcher.store.query(
        "SELECT panda_id, state, time FROM updates WHERE accepted = 1 AND state IN ('running','finished','failed')"
        " ORDER BY time"
    ):
        running.setdefault(row["panda_id"], row["time"])
        if row["state"] != "running":
            finals.setdefault(row["panda_id"], (row["time"], row["state"]))
    diags = [
        f"PandaID {r['panda_id']}: {r['error_code']} {r['error_diag']}"
        for r in dispatcher.store.query(
            "SELECT panda_id, error_code, error_diag FROM jobs WHERE status = 'failed' ORDER BY panda_id LIMIT 3"
        )
    ]
    return running, finals, diags


def hold_jobs(dispatcher: Any, site_yaml: Path, until: float) -> None:
    """Warm mode: the queued jobs are not handed out before ``until`` (epoch s; the store's
    own retry back-off column), and the daemon asks again every second while none are —
    so the first job set reaches a daemon already up, its batch broker's job service open."""
    with dispatcher.store._write() as conn:
        conn.execute("UPDATE jobs SET ready_at = ?", (until,))
    site = yaml.safe_load(site_yaml.read_text())
    site["hpc"].update(no_jobs_backoff=1.0, no_jobs_backoff_max=1.0)
    site_yaml.write_text(yaml.safe_dump(site))


def one_run(
    sleep: int,
    poll: float,
    keep: bool,
    log_level: str,
    scanner: ScannerClient,
    spy: str | None,
    warm: float = 0.0,
    saga_state: str = "",
    jobset_wait: float | None = None,
) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="compass-bench-e2e-"))
    dispatcher, site_yaml, env = multijob.prepare_run(base, sleep, poll)
    if jobset_wait is not None:  # 0: stage in first, then submit (the order before hpc.jobset_wait)
        site = yaml.safe_load(site_yaml.read_text())
        site["hpc"]["jobset_wait"] = jobset_wait
        site_yaml.write_text(yaml.safe_dump(site))
    if saga_state:  # radical.saga's state (its shell wrapper, staged on first use) as a MOM node keeps it
        Path(saga_state).mkdir(parents=True, exist_ok=True)
        env["RADICAL_BASE"] = str(Path(saga_state).resolve())
    if warm:
        hold_jobs(dispatcher, site_yaml, time.time() + warm)
    argv = multijob.daemon_argv(site_yaml)
    argv[argv.index("--log-level") + 1] = log_level
    if warm:  # --once ends a daemon whose first getJob finds nothing; one job set, then drain
        argv[argv.index("--once") : argv.index("--once") + 1] = ["--max-cycles", "1"]
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    tree = ProcTree(scanner).start()
    from harvester_plugins.jobfiles import ATTRIBUTES_KEY, DEFAULT_NAMES

    watch = FileWatch({DEFAULT_NAMES[ATTRIBUTES_KEY]})
    watch.start()
    watched = 0
    marks: dict[str, float] = {}
    proc = None
    try:
        with open(base / "daemon.log", "wb") as log:
            start_wall = time.time()
            start = time.monotonic()
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        if spy:
            start_py_spy(proc.pid, base / "daemon.pyspy", gil=spy == "gil")
        tree.start_reaper()
        daemon = psutil.Process(proc.pid)
        peak = 0
        while time.monotonic() - start < sleep + 600:
            try:
                peak = max(peak, daemon.memory_info().rss)
            except psutil.Error:
                pass
            counts = dispatcher.store.status_counts()
            now = time.time() - start_wall
            if "fetched" not in marks and counts.get("activated", 0) == 0:
                marks["fetched"] = now
            if watched < JOBS and "fetched" in marks:  # watch the work dirs as soon as a job set names them
                jobsets = _jobsets(base)
                watch.names.update(_attributes_name(j) for j in jobsets)
                dirs = [str(w) for j in jobsets for _, w in _node_jobs(j)]
                written = [t for t in map(_mtime, (base / "hpc").glob("sub-*/jobset.json")) if t]
                if written and "jobset" not in marks:
                    marks["jobset"] = min(written)
                if len(dirs) > watched:
                    for directory in dirs[watched:]:
                        watch.add(directory)
                    watched = len(dirs)
            if "acked" not in marks and sum(counts.get(s, 0) for s in FINAL) >= JOBS:
                marks["acked"] = now
            exited = proc.pid in tree.exit_status
            if exited and ("acked" in marks or tree.idle.is_set()):
                break
            time.sleep(0.05)
        tree.finish(60)  # the tree's stragglers (agents, proxies) are reaped too
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        counts = dispatcher.store.status_counts()
        running, finals, diags = dispatcher_times(dispatcher)
        jobs = job_times(base, dict(watch.seen))
        hot = py_spy_summary(base / "daemon.pyspy") if spy else []
    finally:
        watch.close()
        if proc is not None and proc.pid not in tree.exit_status:
            proc.kill()
        dispatcher.stop()
        if keep:
            print(f"kept the run's directory: {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    breakdown = tree.breakdown(proc.pid)
    profiler = breakdown.pop("profiler", (0.0, 0))[0]  # py-spy is our child, not the daemon's
    procs = tree.all()
    return {
        "wall": _wall(finals, start_wall, marks.get("acked")),
        "tree_cpu": (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime) - profiler,
        "profiler_cpu": profiler,
        "scan_cpu": tree.scan_cpu,
        "hot": hot,
        "dispatcher_cpu": (own.ru_utime - self0.ru_utime) + (own.ru_stime - self0.ru_stime),
        "daemon_rss": peak,
        "max_rss": tree.max_rss_kib * 1024,
        "helper_rss": tree.peak_rss("batch broker", "saga helpers"),
        "counts": counts,
        "exit": tree.exit_status.get(proc.pid),
        "breakdown": breakdown,
        "timeline": timeline(base, start_wall, marks, running, finals, jobs, procs),
        "end_ack": [finals[i][0] - j["ended"] for i, j in jobs.items() if i in finals and "ended" in j],
        "latency": {
            "payload start → running at PanDA": [
                running[i] - j["started"] for i, j in jobs.items() if i in running and "started" in j
            ],
            "payload end → outcome file (agent)": [
                j["outcome"] - j["ended"] for j in jobs.values() if "outcome" in j and "ended" in j
            ],
            "outcome file → final acked (daemon)": [
                finals[i][0] - j["outcome"] for i, j in jobs.items() if i in finals and "outcome" in j
            ],
        },
        "diags": diags,
        "base": base,
    }


def timeline(
    base: Path,
    t0: float,
    marks: dict[str, float],
    running: dict[int, float],
    finals: dict[int, tuple[float, str]],
    jobs: dict[int, dict[str, float]],
    procs: list[Any],
) -> list[tuple[str, float | None]]:
    """Seconds after the daemon's start of each phase the run shows from outside."""

    def rel(t: float | None) -> float | None:
        return None if t is None else t - t0

    def nth(values: list[float], n: int) -> float | None:
        values = sorted(values)
        return values[n - 1] if len(values) >= n else None

    jobset = marks.get("jobset")  # its mtime when first seen: the file goes with the run's clean-up
    batch = [p.start for p in procs if p.kind in ("batch script", "mpiexec")]
    agents = [p.start for p in procs if p.kind == "node agents"]
    keepers = [p.start for p in procs if p.kind == "node keepers"]
    broker = [p.start for p in procs if p.kind == "batch broker"]
    started = [j["started"] for j in jobs.values() if "started" in j]
    ended = [j["ended"] for j in jobs.values() if "ended" in j]
    outcome = [j["outcome"] for j in jobs.values() if "outcome" in j]
    acked = [t for t, _ in finals.values()]
    rows = [
        ("batch broker started", rel(min(broker, default=None))),
        ("all jobs fetched (none activated; polled)", marks.get("fetched")),
        ("job set written (stage-in done before it)", rel(jobset)),
        ("batch job started (first batch shell / mpiexec)", rel(min(batch, default=None))),
        ("first / last node agent started (the keeper's exec)", None),
        ("  first", rel(min(keepers, default=None))),
        ("  last", rel(max(keepers, default=None))),
        ("first / last agent forked by its keeper (imports done)" if keepers else "first / last node agent", None),
        ("  first", rel(min(agents, default=None))),
        ("  last", rel(max(agents, default=None))),
        ("first payload started (marker)", rel(min(started, default=None))),
        (f"all {JOBS} payloads started (marker)", rel(nth(started, JOBS))),
        ("first job running at PanDA", rel(min(running.values(), default=None))),
        (f"all {JOBS} running (or done) at PanDA (dispatcher)", rel(nth(list(running.values()), JOBS))),
        ("first payload ended", rel(min(ended, default=None))),
        ("last payload ended", rel(max(ended, default=None))),
        ("last outcome file written", rel(max(outcome, default=None))),
        ("first final acknowledged", rel(min(acked, default=None))),
        (f"all {JOBS} finals acknowledged", rel(nth(acked, JOBS))),
    ]
    if not keepers:  # no keeper (older agents): one pair of rows
        rows = [r for r in rows if r[0] != "first / last node agent started (the keeper's exec)"]
        i = next(i for i, r in enumerate(rows) if r[0] == "  first")
        del rows[i : i + 2]
    if not broker:
        rows = rows[1:]
    return rows


def start_py_spy(pid: int, out: Path, gil: bool = False) -> None:
    """Sample the daemon with py-spy (100 Hz, not pausing it); its CPU is taken out of the tree's."""
    exe = shutil.which("py-spy")
    if exe is None:
        print("--py-spy: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return
    subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--nonblocking", "--output", str(out)]
        + (["--gil"] if gil else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def py_spy_summary(raw: Path, top: int = 15) -> list[tuple[float, str]]:
    """The project's functions by share of the daemon's samples (inclusive), then any function's own share.

    Active = on CPU or in a system call (py-spy counts a thread in ``fsync`` as busy), all
    threads together: read it as where the daemon's time goes, not as CPU seconds.
    """
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    try:
        lines = raw.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        total += n
        seen = set()
        leaf = stack.split(";")[-1]
        leaf_name, _, leaf_where = leaf.partition(" (")
        leaf_key = f"{leaf_name} ({'/'.join(leaf_where.rstrip(')').split('/')[-2:])})"  # keeps :line
        own[leaf_key] = own.get(leaf_key, 0) + n
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            if not any(part in where for part in ("compass_pilot/", "hpc/", "harvester_plugins/")):
                continue
            key = f"{name} ({'/'.join(where.rstrip(')').split(':')[0].split('/')[-2:])})"
            if key not in seen:
                seen.add(key)
                inclusive[key] = inclusive.get(key, 0) + n
    if not total:
        return []
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    leaves = sorted(own.items(), key=lambda kv: -kv[1])[:10]
    return [(n / total * 100, key) for key, n in ranked] + [(n / total * 100, f"self: {key}") for key, n in leaves]


def _wall(finals: dict[int, tuple[float, str]], t0: float, polled: float | None) -> float | None:
    """Daemon start → the 512th final in the dispatcher's update log (exact), else the polled moment."""
    times = sorted(t for t, _ in finals.values())
    return times[JOBS - 1] - t0 if len(times) >= JOBS else polled


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sleep", type=int, default=10, help="payload seconds (N)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--poll", type=float, default=30, help="daemon poll interval (site default 30)")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (markers, logs, daemon.log)")
    parser.add_argument("--log-level", default="WARNING", help="the daemon's log level (its log: <run>/daemon.log)")
    parser.add_argument("--scan", type=float, default=0.1, help="process scan interval for the CPU breakdown (s)")
    parser.add_argument("--timeline", action="store_true", help="print each run's phase time line")
    parser.add_argument(
        "--py-spy",
        nargs="?",
        const="active",
        choices=("active", "gil"),
        help="sample the daemon with py-spy and print its hot functions; 'gil': only samples holding the GIL (≈ CPU)",
    )
    parser.add_argument(
        "--warm",
        type=float,
        default=0.0,
        metavar="S",
        help="hold the jobs back until the daemon has run S s (its batch service open, as on a MOM node that"
        " runs for days): wall and overhead then count from the job set's fetch",
    )
    parser.add_argument(
        "--saga-state",
        default="",
        metavar="DIR",
        help="radical.saga's state dir (RADICAL_BASE), kept across runs as on a MOM node that ran a daemon before:"
        " its fork job service then skips staging its shell wrapper (~0.5 s of the first open). Default: a fresh"
        " one per run (a node's first daemon)",
    )
    parser.add_argument(
        "--jobset-wait",
        type=float,
        default=None,
        metavar="S",
        help="hpc.jobset_wait (default: the site default, 600: submit while staging in); 0 = stage in, then submit",
    )
    args = parser.parse_args()
    scanner = ScannerClient(args.scan)  # first: it must not be our child
    become_subreaper()
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs} …", file=sys.stderr)
        runs.append(
            one_run(
                args.sleep,
                args.poll,
                args.keep,
                args.log_level,
                scanner,
                args.py_spy,
                args.warm,
                args.saga_state,
                args.jobset_wait,
            )
        )
    for r in runs:
        tl = dict(r["timeline"])
        r["start_started"] = tl[f"all {JOBS} payloads started (marker)"]
        r["start_running"] = tl[f"all {JOBS} running (or done) at PanDA (dispatcher)"]
        fetched = tl["all jobs fetched (none activated; polled)"]
        r["fetch_running"] = None if fetched is None or r["start_running"] is None else r["start_running"] - fetched
        if args.warm:  # the wall and the start count from the job set's fetch, not the daemon's start
            r["wall"] = None if r["wall"] is None or fetched is None else r["wall"] - fetched
        r["end_ack_p50"], r["end_ack_p95"], r["end_ack_max"] = (pct(r["end_ack"], q) for q in (50, 95, 100))
        r["failed"] = r["counts"].get("failed", 0) + (JOBS - sum(r["counts"].get(s, 0) for s in FINAL))
    ok = [r for r in runs if r["wall"] is not None and not r["failed"]]

    print(
        f"{'run':>3} | {'wall s':>6} | {'overhead s':>10} | {'→512 started':>12} | {'→512 running':>12} |"
        f" {'fetch→512 running':>17} |"
        f" {'end→ack p50/p95/max s':>21} | {'tree CPU s':>10} | {'daemon RSS MiB':>14} |"
        f" {'helper MiB':>10} | {'max proc MiB':>12} |"
        f" {'dispatcher CPU s':>16} | jobs (daemon exit)"
    )
    for i, r in enumerate(runs, 1):
        over = r["wall"] - args.sleep if r["wall"] is not None else None
        lat = f"{fmt(r['end_ack_p50'])}/{fmt(r['end_ack_p95'])}/{fmt(r['end_ack_max'])}"
        print(
            f"{i:>3} | {fmt(r['wall'], 1):>6} | {fmt(over, 1):>10} | {fmt(r['start_started']):>12} |"
            f" {fmt(r['start_running']):>12} | {fmt(r['fetch_running']):>17} | {lat:>21} | {r['tree_cpu']:>10.1f} |"
            f" {r['daemon_rss'] / 2**20:>14.1f} |"
            f" {r['helper_rss'] / 2**20:>10.1f} | {r['max_rss'] / 2**20:>12.1f} | {r['dispatcher_cpu']:>16.1f} |"
            f" {r['counts']} ({r['exit']})"
        )
    if args.timeline:
        for i, r in enumerate(runs, 1):
            print(f"time line of run {i} (s after daemon start):")
            for name, t in r["timeline"]:
                print(f"  {'' if name.startswith('first / last') else fmt(t):>7}  {name}")
    print("latency per job, s: p50 / p95 / max (n) per run:")
    for name in runs[0]["latency"]:
        cells = []
        for r in runs:
            v = r["latency"][name]
            cells.append(f"{fmt(pct(v, 50))} / {fmt(pct(v, 95))} / {fmt(pct(v, 100))} ({len(v)})")
        print(f"  {name:<36} " + " | ".join(cells))
    scans = ", ".join(f"{r['scan_cpu']:.2f}" for r in runs)
    print(
        "tree CPU by process kind, s (processes), per run; 'not sampled under K': CPU of K's descendants"
        f" no sample saw (the scanner process took {scans} CPU-s, outside the tree):"
    )
    names = [k for k in KINDS if any(k in r["breakdown"] for r in runs)]
    names += sorted({k for r in runs for k in r["breakdown"] if k not in KINDS})
    for name in names:
        cells = []
        for r in runs:
            cpu, n = r["breakdown"].get(name, (0.0, 0))
            cells.append(f"{cpu:6.2f}" + (f" ({n:>4})" if n else "       "))
        print(f"  {name:<34} " + " | ".join(cells))

    for i, r in enumerate(runs, 1):
        if r["hot"]:
            print(
                f"daemon, run {i} (py-spy, its own {r['profiler_cpu']:.1f} CPU-s left out of the tree's):"
                f" project functions by share of {'GIL-holding' if args.py_spy == 'gil' else 'active'} samples"
                " (all threads, inclusive):"
            )
            for share, name in r["hot"]:
                print(f"  {share:5.1f} %  {name}")

    def med(key: str) -> float:
        values = [r[key] for r in ok if r[key] is not None]
        return statistics.median(values) if values else float("nan")

    if ok:
        t = TARGETS
        print(
            f"median of {len(ok)}: start → {JOBS} running at PanDA {fmt(med('start_running'))} s"
            f" (target < {t['start_running']}; from the job set's fetch {fmt(med('fetch_running'))} s"
            f"{', daemon warm' if args.warm else ''}), payload end → final acked p95 {fmt(med('end_ack_p95'))} s,"
            f" max {fmt(med('end_ack_max'))} s (target < {t['end_ack']}), overhead {med('wall') - args.sleep:.1f} s"
            f" (target < {t['overhead']}), tree CPU {med('tree_cpu'):.1f} s (target < {t['tree_cpu']}),"
            f" daemon peak RSS {med('daemon_rss') / 2**20:.1f} MiB (target < {t['daemon_rss']}); box shared"
        )
    bad = [(i, r) for i, r in enumerate(runs, 1) if r not in ok]
    for i, r in bad:
        print(
            f"RUN {i} FAILED: {r['failed']} of {JOBS} jobs not finished ({r['counts']}), daemon exit {r['exit']};"
            f" first errors: {'; '.join(r['diags']) or 'none recorded'}"
            + (f"; run dir {r['base']}" if args.keep else " (--keep to keep the run dir)"),
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
