"""Synthetic COMPASS raw chunks with real naming (year/period/run/chunk).

The content is not DATE format, but it has what the pipeline relies on: a header
that says which run and chunk it is and how many events it holds, then one record
per event, so that reconstruction, filtering, merging and the cross-check can count
events end to end and a truncated file is detectable.
"""

from __future__ import annotations

import random
from pathlib import Path

from compass_pilot.experiment.naming import ChunkId

HEADER_PREFIX = "#COMPASS-RAW"
DETECTORS = ("FI01", "FI02", "GM01", "GM02", "MM01", "DC00", "ST03", "RW01", "HCAL1", "ECAL2")


def write_chunk(root: Path, chunk: ChunkId, n_events: int, seed: int | None = None) -> Path:
    """Write one raw chunk under ``root/<year>/raw/<period>/`` and return its path."""
    rng = random.Random(seed if seed is not None else chunk.run * 100000 + chunk.chunk)
    path = Path(root) / chunk.raw_path
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{HEADER_PREFIX} run={chunk.run} chunk={chunk.chunk} events={n_events}"]
    for i in range(n_events):
        spill = 1 + i // 50
        hits = " ".join(f"{d}:{rng.random():.5f}" for d in DETECTORS)
        lines.append(f"E {i} {spill} {hits}")
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def make_production_input(
    root: Path, year: int, period: str, runs: dict[int, int], n_events: int = 200, first_chunk: int = 11001
) -> list[ChunkId]:
    """Raw chunks for several runs: ``runs`` maps run number → number of chunks."""
    chunks = []
    for run, count in sorted(runs.items()):
        for k in range(count):
            chunk = ChunkId(year=year, period=period, run=run, chunk=first_chunk + k)
            write_chunk(root, chunk, n_events)
            chunks.append(chunk)
    return chunks


def read_header(path: Path) -> dict[str, int]:
    """The header fields of a raw chunk (run, chunk, events)."""
    with open(path, encoding="ascii") as handle:
        first = handle.readline().strip()
    if not first.startswith(HEADER_PREFIX):
        raise ValueError(f"{path.name}: not a COMPASS raw chunk")
    fields = dict(item.split("=", 1) for item in first.split()[1:])
    return {k: int(v) for k, v in fields.items()}
