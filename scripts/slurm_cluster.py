#!/usr/bin/env python3
"""Start a throw-away Slurm cluster (munged + slurmctld + fake slurmd nodes) in a private network namespace.

Usage: ``python scripts/slurm_cluster.py [--nodes 2] [--cpus 32]`` — prints the
environment to export (PATH with nsenter wrappers for sbatch/squeue/scancel/scontrol,
SLURM_CONF) and keeps the cluster up until SIGINT / SIGTERM.  The reusable part is
``tests.slurm_cluster.SlurmCluster`` (what the tests use).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.slurm_cluster import SlurmCluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with SlurmCluster(nodes=args.nodes, cpus=args.cpus) as cluster:
        for key, value in cluster.env.items():
            sys.stdout.write(f"export {key}={value}\n")
        sys.stdout.flush()
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
