"""A daemon that runs for months: is its memory flat?

The real daemon (fetch, stage-in, packing, job set, watching, stage-out, bulk reports,
journal, pruning) runs in a child process on the simulated batch system
(``benchmarks/simbatch.py``: no payload processes, results written in the node agents'
format) against the real embedded dispatcher in this process, job set after job set —
``--sets`` × 64 jobs, payloads of ``--runtime`` s.  Pruning runs every ``--prune`` s
instead of hourly, so a few minutes here stand for months of a site's rounds.

Printed: the child's RSS (from ``/proc``, via psutil) against the number of jobs it has
settled (its state file), then the growth from the first 20 % of the jobs to the end and the
files left under the shared dir.  Flat means the growth is noise (a few MB), not a
multiple of the jobs run.  Never asserted: figures depend on the box.

    python benchmarks/daemon_rss.py [--sets 150] [--runtime 1] [--prune 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PER_SET = 64  # 2 nodes × 32 slots


def child(site_path: str, sets: int, runtime: float, prune: float) -> int:
    """The daemon process measured: the real MultiJobDaemon on a SimBatchBackend."""
    from simbatch import SimBatchBackend

    from compass_pilot.config import load_site_config
    from compass_pilot.modes.multijob import MultiJobDaemon
    from compass_pilot.panda.client import PandaClient

    site = load_site_config(site_path)
    client = PandaClient(site.panda, site.site)
    backend = SimBatchBackend(queue_delay=0.2, runtime=runtime, spread=0.1)
    daemon = MultiJobDaemon(site, client, backend)
    daemon.prune_interval = prune
    try:
        return daemon.run(max_cycles=sets)
    finally:
        client.close()
        backend.close()


def _settled(state_file: Path) -> int:
    """Jobs the daemon has settled (finished + failed), from its state file."""
    import json

    try:
        data = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return 0
    return int(data.get("jobs_finished", 0)) + int(data.get("jobs_failed", 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=150, help="job sets of 64 jobs run one after another")
    parser.add_argument("--runtime", type=float, default=1.0, help="virtual payload seconds")
    parser.add_argument("--prune", type=float, default=20.0, help="seconds between prunings (a site: 3600)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "compass-bench-cache"))
    parser.add_argument("--child", nargs=4, metavar=("SITE", "SETS", "RUNTIME", "PRUNE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        site, sets, runtime, prune = args.child
        return child(site, int(sets), float(runtime), float(prune))

    import dispatcher as dispatcher_bench
    from scale import _inputs

    from compass_pilot.panda.dispatcher import Dispatcher

    n_jobs = args.sets * PER_SET
    with tempfile.TemporaryDirectory(prefix="daemon-rss-") as tmp:
        base = Path(tmp)
        db = dispatcher_bench.prepared(Path(args.cache), n_jobs, base)
        _inputs(db, base / "castor")
        dispatcher = Dispatcher(str(db), port=0, check_interval=3600).start()
        site: dict[str, Any] = {
            "site": {"name": "RSS", "workdir": str(base / "work"), "min_free_mb": 64},
            "panda": {"url": dispatcher.url, "timeout": 60},
            "storage": {"input_root": str(base / "castor"), "output_root": str(base / "eos")},
            "hpc": {
                "max_jobs": PER_SET,
                "max_nodes": 2,
                "slots_per_node": 32,
                "fake_nodes": True,
                "shared_dir": str(base / "hpc"),
                "max_submissions": 4,
                "poll_interval": 1,
                "heartbeat_interval": 5,
                "no_jobs_backoff": 1,
                "failed_dir_keep_hours": 0.001,
            },
        }
        (base / "site.yaml").write_text(yaml.safe_dump(site))
        argv = [sys.executable, __file__, "--child", str(base / "site.yaml"), str(args.sets)]
        proc = subprocess.Popen([*argv, str(args.runtime), str(args.prune)], env=dict(os.environ, HOME=str(base)))
        daemon = psutil.Process(proc.pid)
        samples: list[tuple[int, float]] = []
        next_print = 0
        print(f"{'jobs settled':>12} {'daemon RSS MB':>14} {'files in shared dir':>20}")
        try:
            while proc.poll() is None:
                done = _settled(base / "hpc" / "daemon_state.json")
                try:
                    rss = daemon.memory_info().rss / 2**20
                except psutil.Error:
                    break
                samples.append((done, rss))
                if done >= next_print:
                    files = sum(1 for _ in (base / "hpc").rglob("*"))
                    print(f"{done:>12} {rss:>14.1f} {files:>20}", flush=True)
                    next_print = done + n_jobs // 10
                time.sleep(1)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            dispatcher.stop()
        files = sum(1 for _ in (base / "hpc").rglob("*"))
        early = [rss for done, rss in samples if done <= n_jobs * 0.2] or [samples[0][1]]
        late = [rss for done, rss in samples if done >= n_jobs * 0.8] or [samples[-1][1]]
        print(f"{n_jobs} jobs in {args.sets} job sets; daemon exit code {proc.returncode}")
        print(
            f"RSS: {max(early):.1f} MB at ≤20 % of the jobs, {max(late):.1f} MB at ≥80 %, "
            f"peak {max(r for _, r in samples):.1f} MB; growth {max(late) - max(early):+.1f} MB"
        )
        print(f"files left under the shared dir: {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
