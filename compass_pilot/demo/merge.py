"""Stand-in for COMPASS merging: mDSTs (events concatenated), histograms (bins summed),
event dumps (concatenated).  Prints what ProdSys parses: "Number of events saved to
output : N" and "End of Job".

    python -m compass_pilot.demo.merge --kind mdst --out mDST-275678-2-7.root --inputs a.root,b.root
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEADERS = {"mdst": ("#MDST", "R "), "dump": ("#EVTDUMP", "E ")}


def _merge_lines(kind: str, inputs: list[Path], out: Path) -> int:
    header, prefix = HEADERS[kind]
    runs, events, body = set(), 0, []
    for path in inputs:
        with open(path, encoding="ascii", errors="replace") as handle:
            first = handle.readline()
            if not first.startswith(header):
                raise ValueError(f"{path.name}: not a {kind} file")
            runs.add(dict(f.split("=", 1) for f in first.split()[1:] if "=" in f).get("run"))
            for line in handle:
                if line.startswith(prefix) and line.endswith("\n"):
                    body.append(line)
                    events += 1
    if len(runs) != 1:
        raise ValueError(f"inputs come from several runs: {sorted(map(str, runs))}")
    with open(out, "w", encoding="ascii") as handle:
        handle.write(f"{header} run={runs.pop()} merged={len(inputs)} inputs={','.join(p.name for p in inputs)}\n")
        handle.writelines(body)
    return events


def _merge_hist(inputs: list[Path], out: Path) -> int:
    total: dict[str, list[int]] = {}
    events, run = 0, None
    for path in inputs:
        data = json.loads(path.read_text())
        run = run or data["run"]
        events += int(data["events"])
        for det, bins in data["hist"].items():
            acc = total.setdefault(det, [0] * len(bins))
            total[det] = [a + b for a, b in zip(acc, bins, strict=True)]
    out.write_text(json.dumps({"run": run, "events": events, "hist": total, "inputs": [p.name for p in inputs]}))
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("mdst", "hist", "dump"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--inputs", required=True, help="comma-separated input files")
    args = parser.parse_args(argv)
    inputs = [Path(name) for name in args.inputs.split(",") if name]
    missing = [p.name for p in inputs if not p.is_file()]
    if missing:
        print(f"merge: missing input(s): {', '.join(missing)}", flush=True)
        return 1
    try:
        events = (
            _merge_hist(inputs, Path(args.out))
            if args.kind == "hist"
            else _merge_lines(args.kind, inputs, Path(args.out))
        )
    except (ValueError, KeyError, OSError) as exc:
        print(f"merge: corrupt input: {exc}", flush=True)
        return 1
    print(f"merged {len(inputs)} file(s) into {args.out}")
    print(f"Number of events saved to output : {events}")
    print("End of Job", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
