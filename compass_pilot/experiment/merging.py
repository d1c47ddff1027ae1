"""The merge planner (pure): chunk outputs of a run → merge jobs of about a target size.

ProdSys merges a run's chunk outputs once every chunk job of the run is finished, in
chunk order, into files of up to 4.5 GB (mDST, histograms) or 2.15 GB (event dumps),
with at most 1000 inputs per merge job; when a run needs more than one merged file,
the parts are numbered ``.000``, ``.001``, …
"""

from __future__ import annotations

from dataclasses import dataclass

from compass_pilot.experiment import naming
from compass_pilot.experiment.naming import ProcessingOptions

TARGET_BYTES = {"mdst": 4_500_000_000, "hist": 4_500_000_000, "dump": 2_150_000_000}
MAX_INPUTS = 1000
_NAMERS = {"mdst": naming.merged_mdst, "hist": naming.merged_hist, "dump": naming.merged_dump}


@dataclass(frozen=True)
class ChunkOutput:
    """One chunk job's output file, as its final report described it."""

    run: int
    chunk: int
    lfn: str
    size: int
    events: int


@dataclass(frozen=True)
class MergePlan:
    """One merge job: its run, kind, part number (None if the only part), output and inputs."""

    run: int
    kind: str
    part: int | None
    output: str
    inputs: tuple[ChunkOutput, ...]

    @property
    def events(self) -> int:
        return sum(c.events for c in self.inputs)


def plan_merges(
    chunks: list[ChunkOutput],
    kind: str,
    opts: ProcessingOptions,
    *,
    target_bytes: int | None = None,
    max_inputs: int = MAX_INPUTS,
) -> list[MergePlan]:
    """Bins per run, in chunk order: ≤ max_inputs inputs and ≤ target_bytes each (a chunk
    larger than the target alone gets a bin of its own)."""
    if kind not in _NAMERS:
        raise ValueError(f"unknown merge kind {kind!r} (one of {', '.join(_NAMERS)})")
    if max_inputs < 1:
        raise ValueError("max_inputs must be at least 1")
    target = target_bytes if target_bytes is not None else TARGET_BYTES[kind]
    plans: list[MergePlan] = []
    for run in sorted({c.run for c in chunks}):
        ordered = sorted((c for c in chunks if c.run == run), key=lambda c: (c.chunk, c.lfn))
        bins: list[list[ChunkOutput]] = []
        current: list[ChunkOutput] = []
        size = 0
        for chunk in ordered:
            if current and (len(current) >= max_inputs or size + chunk.size > target):
                bins.append(current)
                current, size = [], 0
            current.append(chunk)
            size += chunk.size
        if current:
            bins.append(current)
        for i, inputs in enumerate(bins):
            part = i if len(bins) > 1 else None
            plans.append(MergePlan(run, kind, part, _NAMERS[kind](run, opts, part), tuple(inputs)))
    return plans
