"""Calibration DB start-to-ready time from a snapshot (issue #3 target: < 2 s median).

Prints the snapshot copy time and the start-to-ready time (server start until a real
query over the socket answers) over N starts, median and max, then the full
``CalibDB.start()`` (copy + start + ready), a second user joining the running
instance, and ``stop()`` (clean shutdown + scratch removal) times.

    python benchmarks/calibdb_start.py [--runs 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import calibdb
from compass_pilot.config import CalibDBSection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="calibdb-bench-"))
    try:
        t0 = time.monotonic()
        snapshot = calibdb.demo_snapshot("mariadb", work / "cache")
        build = time.monotonic() - t0
        copies, readies, totals, joins, stops = [], [], [], [], []
        for i in range(args.runs):
            cfg = CalibDBSection(backend="mariadb", snapshot=str(snapshot), scratch_dir=str(work / f"node{i}"))
            db = calibdb.open_calibdb(cfg)
            t0 = time.monotonic()
            db.start()
            totals.append(time.monotonic() - t0)
            second = calibdb.open_calibdb(cfg)  # another job on the same node joins it
            t0 = time.monotonic()
            second.start()
            joins.append(time.monotonic() - t0)
            second.stop()
            copies.append(db.copy_seconds)
            readies.append(db.ready_seconds)
            t0 = time.monotonic()
            db.stop()
            stops.append(time.monotonic() - t0)
        size = sum(p.stat().st_size for p in snapshot.rglob("*") if p.is_file())
        print(f"snapshot: {size / 1e6:.1f} MB datadir, built once in {build:.2f} s")
        print(f"snapshot copy    : median {statistics.median(copies):.3f} s  max {max(copies):.3f} s")
        print(f"start-to-ready   : median {statistics.median(readies):.3f} s  max {max(readies):.3f} s  (target < 2 s)")
        print(f"CalibDB.start()  : median {statistics.median(totals):.3f} s  max {max(totals):.3f} s")
        print(f"second user join : median {statistics.median(joins):.3f} s  max {max(joins):.3f} s")
        print(f"CalibDB.stop()   : median {statistics.median(stops):.3f} s  max {max(stops):.3f} s")
        print(f"runs: {args.runs}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
