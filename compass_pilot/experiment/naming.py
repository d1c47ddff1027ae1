"""COMPASS file naming, as ProdSys writes it.

Results are matched back by name, so these functions are the one place that knows
the conventions (see shared/REFERENCE.md, "File names"):

- raw chunk            ``cdr<chunk>-<run>.raw`` under ``<year>/raw/<period>/``
- mDST chunk           ``mDST-<run>-<chunk>-<slt>-<phast>.root``
- histogram chunk      ``<run>-<chunk>-<slt>.root``
- event dump chunk     ``evtdump<slt>-<chunk>-<run>.raw``
- job log              ``<prod>-<run>-<chunk>-<slt>-<phast>.job.log.tgz``
- merged mDST          ``mDST-<run>-<slt>-<phast>.root[.NNN]``
- merged histograms    ``<run>-<slt>-<phast>.root[.NNN]``
- merged event dump    ``evtdump<slt>-<run>.raw[.NNN]``
- job name             ``<prod>-<year>--<run>-<chunk>-<slt>-<phast>-<id>-<attempt>``
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RAW_RE = re.compile(r"^cdr(?P<chunk>\d{5})-(?P<run>\d{5,6})\.raw$")

#: Output directory (under the production's area) for each output kind.
OUTPUT_DIRS = {
    "mdst": "mDST.chunks",
    "hist": "TRAFDIC",
    "evtdump": "evtdump/slot{slt}",
    "log": "logFiles",
    "merged_mdst": "mDST",
    "merged_hist": "histos",
    "merged_dump": "mergedDump/slot{slt}",
}


@dataclass(frozen=True)
class ChunkId:
    """One raw chunk: year, period, run, chunk."""

    year: int
    period: str
    run: int
    chunk: int

    @property
    def raw_name(self) -> str:
        return f"cdr{self.chunk:05d}-{self.run:06d}.raw"

    @property
    def raw_path(self) -> str:
        """Path of the raw file relative to the storage root: ``<year>/raw/<period>/<name>``."""
        return f"{self.year}/raw/{self.period}/{self.raw_name}"


def parse_raw_name(name: str) -> tuple[int, int]:
    """``cdr11091-275678.raw`` → (run 275678, chunk 11091)."""
    match = RAW_RE.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a COMPASS raw chunk name (cdrCCCCC-RRRRRR.raw)")
    return int(match["run"]), int(match["chunk"])


@dataclass(frozen=True)
class ProcessingOptions:
    """Production name and the processing slot / PHAST version of a production."""

    prod: str  # e.g. "P09"
    slt: int  # processing slot
    phast: int  # PHAST version


def mdst_chunk(run: int, chunk: int, o: ProcessingOptions) -> str:
    return f"mDST-{run}-{chunk}-{o.slt}-{o.phast}.root"


def hist_chunk(run: int, chunk: int, o: ProcessingOptions) -> str:
    return f"{run}-{chunk}-{o.slt}.root"


def evtdump_chunk(run: int, chunk: int, o: ProcessingOptions) -> str:
    return f"evtdump{o.slt}-{chunk}-{run}.raw"


def job_log(run: int, chunk: int, o: ProcessingOptions) -> str:
    return f"{o.prod}-{run}-{chunk}-{o.slt}-{o.phast}.job.log.tgz"


def _part(n: int | None) -> str:
    return "" if n is None else f".{n:03d}"


def merged_mdst(run: int, o: ProcessingOptions, part: int | None = None) -> str:
    return f"mDST-{run}-{o.slt}-{o.phast}.root{_part(part)}"


def merged_hist(run: int, o: ProcessingOptions, part: int | None = None) -> str:
    return f"{run}-{o.slt}-{o.phast}.root{_part(part)}"


def merged_dump(run: int, o: ProcessingOptions, part: int | None = None) -> str:
    return f"evtdump{o.slt}-{run}.raw{_part(part)}"


def merge_log(kind: str, run: int, o: ProcessingOptions, part: int | None = None) -> str:
    return f"{o.prod}-{run}-{o.slt}-{o.phast}-{kind}{_part(part)}.job.log.tgz"


def job_name(year: int, run: int, chunk: int, o: ProcessingOptions, job_id: int, attempt: int) -> str:
    """ProdSys job name: ``<prod>-<year>--<run>-<chunk>-<slt>-<phast>-<id>-<attempt>``."""
    return f"{o.prod}-{year}--{run}-{chunk}-{o.slt}-{o.phast}-{job_id}-{attempt}"


def reco_outputs(run: int, chunk: int, o: ProcessingOptions) -> dict[str, str]:
    """Output file names of one reconstruction job, keyed by kind (mdst, hist, evtdump, log)."""
    return {
        "mdst": mdst_chunk(run, chunk, o),
        "hist": hist_chunk(run, chunk, o),
        "evtdump": evtdump_chunk(run, chunk, o),
        "log": job_log(run, chunk, o),
    }


def ddd_outputs(run: int, chunk: int, o: ProcessingOptions) -> dict[str, str]:
    """DDD filtering writes event dumps only (plus its log)."""
    return {"evtdump": evtdump_chunk(run, chunk, o), "log": job_log(run, chunk, o)}


def output_dir(kind: str, o: ProcessingOptions) -> str:
    """Directory of an output kind under the production area ``<prod>/``."""
    return f"{o.prod}/" + OUTPUT_DIRS[kind].format(slt=o.slt)
