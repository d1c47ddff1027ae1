"""Stand-in for the ProdSys cross-check: merged files vs the chunks' reported events and sizes.

The chunk figures come from what the chunk jobs reported to PanDA (passed as job
parameters), the merged figures from reading the merged files themselves — so a
chunk output damaged after its job finished shows up as missing events.

    python -m compass_pilot.demo.xcheck --kind mdst --run R --chunks a,b --chunk-events 200,200
        --chunk-sizes 1000,1000 --merged m.root
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compass_pilot.experiment.crosscheck import MergedOutput, cross_check
from compass_pilot.experiment.merging import ChunkOutput

PREFIX = {"mdst": "R ", "dump": "E "}


def read_merged(path: Path, kind: str) -> MergedOutput:
    if kind == "hist":
        data = json.loads(path.read_text())
        return MergedOutput(path.name, path.stat().st_size, int(data["events"]), tuple(data.get("inputs", [])))
    with open(path, encoding="ascii", errors="replace") as handle:
        header = handle.readline()
        fields = dict(f.split("=", 1) for f in header.split()[1:] if "=" in f)
        events = sum(1 for line in handle if line.startswith(PREFIX[kind]) and line.endswith("\n"))
    inputs = tuple(n for n in fields.get("inputs", "").split(",") if n)
    return MergedOutput(path.name, path.stat().st_size, events, inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("mdst", "hist", "dump"), required=True)
    parser.add_argument("--run", type=int, required=True)
    parser.add_argument("--chunks", required=True)
    parser.add_argument("--chunk-events", required=True)
    parser.add_argument("--chunk-sizes", required=True)
    parser.add_argument("--merged", required=True)
    parser.add_argument("--size-tolerance", type=float, default=0.05)
    args = parser.parse_args(argv)
    names = args.chunks.split(",")
    events = [int(x) for x in args.chunk_events.split(",")]
    sizes = [int(x) for x in args.chunk_sizes.split(",")]
    if not len(names) == len(events) == len(sizes):
        print("xcheck: --chunks, --chunk-events and --chunk-sizes differ in length", flush=True)
        return 2
    chunks = [ChunkOutput(args.run, i, n, s, e) for i, (n, e, s) in enumerate(zip(names, events, sizes, strict=True))]
    try:
        merged = [read_merged(Path(name), args.kind) for name in args.merged.split(",")]
    except (OSError, ValueError, KeyError) as exc:
        print(f"xcheck: cannot read merged file: {exc}", flush=True)
        return 1
    result = cross_check(args.run, chunks, merged, size_tolerance=args.size_tolerance)
    print(f"cross-check {'PASSED' if result.ok else 'FAILED'}: {result.diag}", flush=True)
    if not result.ok:
        return 1
    print("End of Job", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
