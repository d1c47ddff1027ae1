"""The one task-file builder the tests and benchmarks share (production P09, 2016 W14, slot 2, PHAST 7)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compass_pilot.panda.dispatcher import Dispatcher


def chunk_paths(n: int, run: int = 275678, first: int = 11001) -> list[str]:
    """Raw chunk paths as a task file lists them."""
    return [f"2016/raw/W14/cdr{first + i:05d}-{run:06d}.raw" for i in range(n)]


def reco_task(paths: list[str], **extra: Any) -> dict[str, Any]:
    """A reco task over the given raw paths; ``extra`` overrides or adds keys (chunks, max_attempts, …)."""
    task: dict[str, Any] = {
        "name": "test-reco",
        "prod": "P09",
        "year": 2016,
        "period": "W14",
        "job_type": "reco",
        "sw_release": "slt2-phast7",
        "slt": 2,
        "phast": 7,
        "max_attempts": 1,
        "max_walltime": 600,
        "chunks": paths,
    }
    task.update(extra)
    return task


def serve_task(tmp_path: Path, chunks: int, name: str, first: int = 11000) -> Dispatcher:
    """A started embedded dispatcher (``tmp_path/panda.sqlite``) holding one reco task of
    ``chunks`` chunks; the caller stops it."""
    from compass_pilot.panda.dispatcher import Dispatcher, submit_task

    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60)
    dispatcher.start()
    submit_task(db, reco_task(chunk_paths(chunks, first=first), name=name))
    return dispatcher
