"""A real dispatcher, real storage dirs and a real calibration snapshot for grid-mode tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from compass_pilot.config import SiteConfig, load_site_config
from compass_pilot.demo.rawdata import make_production_input
from compass_pilot.experiment.naming import ChunkId
from tests.tasks import reco_task as shared_reco_task


@dataclass
class GridWorld:
    base: Path
    castor: Path
    eos: Path
    db: str
    url: str
    dispatcher: object
    chunks: list[ChunkId]

    def site(self, **grid: object) -> SiteConfig:
        import calibdb

        site = load_site_config(None)
        site.site.workdir = str(self.base / "work")
        site.panda.url = self.url
        site.panda.backoff = 0.1
        site.panda.retries = 2
        site.storage.input_root = str(self.castor)
        site.storage.output_root = str(self.eos)
        site.calibdb.backend = "sqlite"
        site.calibdb.snapshot = str(calibdb.demo_snapshot("sqlite", self.base / "calib"))
        site.calibdb.scratch_dir = str(self.base / "scratch")
        site.grid.heartbeat_interval = 1
        site.grid.sample_interval = 1
        site.grid.payload_grace = 1
        for key, value in grid.items():
            setattr(site.grid, key, value)
        return site


@pytest.fixture
def world(tmp_path: Path) -> Iterator[GridWorld]:
    from compass_pilot.panda.dispatcher import Dispatcher

    castor, eos = tmp_path / "castor", tmp_path / "eos"
    chunks = make_production_input(castor, 2016, "W14", {275678: 3}, n_events=50)
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=1)
    dispatcher.start()
    try:
        yield GridWorld(tmp_path, castor, eos, db, dispatcher.url, dispatcher, chunks)
    finally:
        dispatcher.stop()


def reco_task(chunks: list[ChunkId], **extra: object) -> dict:
    """The shared reco task over these chunks, two attempts unless the test says otherwise."""
    return shared_reco_task([c.raw_path for c in chunks], **{"max_attempts": 2, "priority": 2000, **extra})
