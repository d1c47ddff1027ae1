"""A stand-in for CORAL reconstruction with COMPASS's I/O pattern.

It reads one raw chunk, fetches the run's calibration constants through the
calibration-DB endpoint exported in its environment (as coral.exe reads CDBSERVER),
"reconstructs" each event, and writes the three outputs of a COMPASS reco job: an
mDST, a histogram file and an event dump (every tenth event, as DDD filtering would
keep), then prints the lines ProdSys parses ("N events had been written to miniDST",
"End of Job").  ``--inject`` reproduces real failure patterns for the tests.

Run as ``python -m compass_pilot.demo.reco --raw FILE --mdst F --hist F --evtdump F``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from compass_pilot.demo.rawdata import HEADER_PREFIX

INJECTIONS = ("fatal", "segv", "noend", "exit3", "hang", "nocalib", "oom", "slow", "truncate", "crash")


def _constants(run: int) -> dict[str, float]:
    """Calibration constants of the run, through the endpoint in the environment."""
    import calibdb

    try:
        conn = calibdb.connect(dict(os.environ))
        try:
            constants = calibdb.read_constants(conn, run)
        finally:
            conn.close()
    except Exception as exc:  # the payload's own message, as CORAL prints it
        print(f"CDB: can't connect to CDB database: {exc}", flush=True)
        sys.exit(3)
    if not constants:
        print(f"readCalibration(): no constants for run {run}: bad line", flush=True)
        sys.exit(4)
    return constants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True)
    parser.add_argument("--mdst", required=True)
    parser.add_argument("--hist", required=True)
    parser.add_argument("--evtdump", required=True)
    parser.add_argument("--run", type=int, default=0)
    parser.add_argument("--event-time", type=float, default=0.0, help="seconds of CPU-free work per event")
    parser.add_argument("--inject", choices=INJECTIONS, default=None)
    args = parser.parse_args(argv)

    print("CORAL stand-in (compass-pilot demo) starting", flush=True)
    if args.inject == "hang":
        time.sleep(10**6)
    if args.inject == "segv":
        print("*** Break *** segmentation violation", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    if args.inject == "nocalib":
        print("CDB: can't connect to CDB database: injected", flush=True)
        return 3

    raw = Path(args.raw)
    with open(raw, encoding="ascii") as handle:
        header = handle.readline().split()
        if not header or header[0] != HEADER_PREFIX:
            print("DaqEventsManager::GetEvent(): no event", flush=True)
            return 2
        fields = dict(item.split("=", 1) for item in header[1:])
        run = int(fields.get("run", args.run))
        constants = _constants(run)
        hist: dict[str, list[int]] = {d: [0] * 10 for d in constants}
        n_events = dumped = 0
        with open(args.mdst, "w", encoding="ascii") as mdst, open(args.evtdump, "w", encoding="ascii") as dump:
            mdst.write(f"#MDST run={run} chunk={fields.get('chunk', 0)}\n")
            dump.write(f"#EVTDUMP run={run} chunk={fields.get('chunk', 0)}\n")
            for line in handle:
                parts = line.split()
                if len(parts) < 3 or parts[0] != "E":
                    continue
                values = []
                for hit in parts[3:]:
                    det, _, val = hit.partition(":")
                    calibrated = float(val) * constants.get(det, 1.0)
                    values.append(f"{det}:{calibrated:.5f}")
                    if det in hist:
                        hist[det][min(9, int(float(val) * 10))] += 1
                mdst.write(f"R {parts[1]} {parts[2]} {' '.join(values)}\n")
                if int(parts[1]) % 10 == 0:
                    dump.write(line)
                    dumped += 1
                n_events += 1
                if args.event_time:
                    time.sleep(args.event_time)
                if args.inject == "fatal" and n_events == 5:
                    print("A FATAL ERROR APPEARED in event 5", flush=True)
                    return 1
        expected = int(fields.get("events", n_events))
        if n_events != expected:
            print(f"DaqEventsManager::GetEvent(): no event (read {n_events} of {expected})", flush=True)
            return 2
    Path(args.hist).write_text(json.dumps({"run": run, "events": n_events, "hist": hist}), encoding="ascii")
    if args.inject == "truncate":  # an output damaged after it was written: the cross-check must catch it
        lines = Path(args.mdst).read_text(encoding="ascii").splitlines(keepends=True)
        Path(args.mdst).write_text("".join(lines[: max(1, len(lines) - 11)]), encoding="ascii")
    if args.inject == "oom":
        print("Cannot Allocate memory for event buffer", flush=True)
        return 1
    if args.inject == "exit3":
        print("CORAL exiting with return code -3", flush=True)
        return 253
    if args.inject == "crash":  # no known pattern: the bare exit code (1305 with transExitCode 1)
        return 1
    print(f"{dumped} events written to the event dump", flush=True)
    print(f"{n_events} events had been written to miniDST", flush=True)
    if args.inject != "noend":
        print("End of Job", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
