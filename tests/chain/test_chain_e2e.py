"""The whole chain through the dispatcher with real grid pilots and real payloads."""

from __future__ import annotations

from pathlib import Path

import calibdb
from compass_pilot.config import load_site_config
from compass_pilot.demo.rawdata import make_production_input
from compass_pilot.modes.grid import GridPilot
from compass_pilot.panda.client import PandaClient
from compass_pilot.panda.dispatcher import Dispatcher, submit_task

RUNS = {275678: 3, 275679: 3}


def _setup(tmp_path: Path, job_type: str = "reco", **task_extra):
    chunks = make_production_input(tmp_path / "castor", 2016, "W14", RUNS, n_events=30)
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60).start()
    site = load_site_config(None)
    site.site.workdir = str(tmp_path / "work")
    site.panda.url = dispatcher.url
    site.storage.input_root, site.storage.output_root = str(tmp_path / "castor"), str(tmp_path / "eos")
    site.calibdb.snapshot = str(calibdb.demo_snapshot("sqlite", tmp_path / "calib"))
    site.calibdb.scratch_dir = str(tmp_path / "scratch")
    site.grid.max_jobs = 0
    submit_task(
        db,
        {
            "name": "chain",
            "prod": "P09",
            "year": 2016,
            "period": "W14",
            "job_type": job_type,
            "slt": 2,
            "phast": 7,
            "max_attempts": 1,
            "chain": True,
            "chunks": [c.raw_path for c in chunks],
            **task_extra,
        },
    )
    return dispatcher, site


def _pilot_round(site) -> None:
    GridPilot(site, PandaClient(site.panda, site.site)).run()


def test_reco_chain_passes_for_every_run(tmp_path: Path) -> None:
    dispatcher, site = _setup(tmp_path)
    try:
        for _ in range(6):  # each round runs what the previous one's completion defined
            _pilot_round(site)
        runs = {r["run"]: r for r in dispatcher.summary()["runs"]}
        for run in RUNS:
            assert runs[run]["cross_checked"] == "passed" and runs[run]["dump_cross_checked"] == "passed"
            assert runs[run]["status"] == "done"
        merged = tmp_path / "eos/P09/mDST/mDST-275678-2-7.root"
        assert merged.read_text().count("\nR ") == 3 * 30
        assert (tmp_path / "eos/P09/histos/275678-2-7.root").exists()
        assert (tmp_path / "eos/P09/mergedDump/slot2/evtdump2-275679.raw").exists()
        assert dispatcher.summary()["jobs_by_status"] == {"finished": 6 + 2 * 5}  # per run: 3 merges + 2 checks
    finally:
        dispatcher.stop()


def test_damaged_chunk_output_fails_the_cross_check(tmp_path: Path) -> None:
    # one chunk's mDST loses its last 11 events after the payload counted them
    dispatcher, site = _setup(tmp_path, inject={"cdr11002-275679.raw": "truncate"})
    try:
        for _ in range(5):
            _pilot_round(site)
        runs = {r["run"]: r for r in dispatcher.summary()["runs"]}
        assert runs[275678]["status"] == "done"
        assert runs[275679]["cross_checked"] == "failed"
        assert runs[275679]["status"].startswith("manual check") and "chunks 90 != merged 79" in runs[275679]["status"]
        assert runs[275679]["hist_merging"] == "-"  # the chain stopped there
    finally:
        dispatcher.stop()


def test_ddd_chain(tmp_path: Path) -> None:
    dispatcher, site = _setup(tmp_path, "ddd")
    try:
        for _ in range(4):
            _pilot_round(site)
        runs = {r["run"]: r for r in dispatcher.summary()["runs"]}
        assert all(runs[run]["dump_cross_checked"] == "passed" for run in RUNS)
        assert not list((tmp_path / "eos/P09").glob("mDST*"))
    finally:
        dispatcher.stop()
