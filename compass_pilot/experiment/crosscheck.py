"""The cross-check (pure): do a run's merged files hold exactly its chunks' events?

Per run, the merged files' event count must equal the sum over the chunks, and every
chunk must be in exactly one merged file.  Sizes are compared with a tolerance: a
merged file carries one header instead of one per chunk, so it is a little smaller
than the sum of its inputs, never much smaller or larger.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from compass_pilot.experiment.merging import ChunkOutput


@dataclass(frozen=True)
class MergedOutput:
    lfn: str
    size: int
    events: int
    inputs: tuple[str, ...]  # chunk output names merged into it


@dataclass(frozen=True)
class CrossCheckResult:
    ok: bool
    diag: str
    chunk_events: int
    merged_events: int


def cross_check(
    run: int, chunks: list[ChunkOutput], merged: list[MergedOutput], *, size_tolerance: float = 0.02
) -> CrossCheckResult:
    """Compare one run's chunk outputs with its merged files; the diagnostic names what differs."""
    chunk_events = sum(c.events for c in chunks)
    merged_events = sum(m.events for m in merged)
    problems = []
    if chunk_events != merged_events:
        problems.append(f"events: chunks {chunk_events} != merged {merged_events}")
    used = Counter(name for m in merged for name in m.inputs)
    names = {c.lfn for c in chunks}
    missing = sorted(names - set(used))
    duplicated = sorted(n for n, k in used.items() if k > 1)
    unknown = sorted(set(used) - names)
    if missing:
        problems.append(f"chunks not merged: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if duplicated:
        problems.append(f"chunks merged twice: {', '.join(duplicated[:5])}")
    if unknown:
        problems.append(f"merged inputs that are not chunks of the run: {', '.join(unknown[:5])}")
    chunk_bytes = sum(c.size for c in chunks)
    merged_bytes = sum(m.size for m in merged)
    if chunk_bytes and abs(merged_bytes - chunk_bytes) > size_tolerance * chunk_bytes:
        problems.append(f"size: chunks {chunk_bytes} B vs merged {merged_bytes} B (tolerance {size_tolerance:.0%})")
    if problems:
        return CrossCheckResult(False, f"run {run}: " + "; ".join(problems), chunk_events, merged_events)
    return CrossCheckResult(
        True, f"run {run}: {merged_events} events in {len(merged)} merged file(s) OK", chunk_events, merged_events
    )
