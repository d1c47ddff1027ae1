"""What a pilot costs while its payload runs: CPU seconds of the pilot process per payload.

The runner blocks in wait4 / Event.wait rather than polling, so a payload that only
sleeps should cost the pilot next to nothing.  This used to be a unit test with a CPU
bound (``< 0.3 s`` for a 2 s payload); a figure belongs here, printed, not asserted.

    python benchmarks/payload_idle.py [--seconds 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import psutil

from compass_pilot.payload import run_payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="how long each payload sleeps")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sample-interval", type=float, default=60, help="the memory sampler's period")
    args = parser.parse_args()
    me = psutil.Process()
    used: list[float] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="payload-idle-") as work:
            before = sum(me.cpu_times()[:2])
            run_payload(
                ["sleep", str(args.seconds)],
                Path(work),
                {"PATH": os.environ["PATH"]},
                sample_interval=args.sample_interval,
            )
            used.append(sum(me.cpu_times()[:2]) - before)
    print(f"pilot CPU while a {args.seconds:g} s payload runs (n={args.runs})")
    print(
        f"  median {statistics.median(used) * 1000:.1f} ms   max {max(used) * 1000:.1f} ms"
        f"   ({statistics.median(used) / args.seconds * 100:.2f} % of a core)"
    )
    print("  target: well under 0.3 s for a 2 s payload (no polling loop in the runner)")


if __name__ == "__main__":
    main()
