"""A multi-job submission end to end through the REAL Slurm: the daemon, the Harvester plugins
on radical.saga slurm://, srun starting one node agent on each of 2 nodes × 4 slots."""

from __future__ import annotations

import threading
from pathlib import Path

import calibdb
from compass_pilot.config import load_site_config
from compass_pilot.demo.rawdata import make_production_input
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from compass_pilot.panda.client import PandaClient
from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from tests.tasks import reco_task


def test_eight_jobs_on_two_slurm_nodes(slurm, tmp_path: Path) -> None:
    chunks = make_production_input(tmp_path / "castor", 2016, "W14", {275678: 8}, n_events=20)
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60).start()
    try:
        submit_task(db, reco_task([c.raw_path for c in chunks], name="slurm"))
        site = load_site_config(None)
        site.panda.url = dispatcher.url
        site.storage.input_root, site.storage.output_root = str(tmp_path / "castor"), str(tmp_path / "eos")
        site.calibdb.snapshot = str(calibdb.demo_snapshot("sqlite", tmp_path / "calib"))
        site.calibdb.scratch_dir = str(tmp_path / "scratch")
        site.hpc.batch_url = "slurm://localhost"
        site.hpc.launcher = "srun"
        site.hpc.max_nodes, site.hpc.slots_per_node, site.hpc.max_jobs = 2, 4, 8
        site.hpc.shared_dir = str(tmp_path / "hpc")
        site.hpc.poll_interval = 1
        daemon = MultiJobDaemon(site, PandaClient(site.panda, site.site), make_backend(site))
        thread = threading.Thread(target=daemon.run, kwargs={"once": True}, daemon=True)
        thread.start()
        thread.join(120)
        assert not thread.is_alive(), "daemon did not finish"
        (sub,) = daemon.submissions.values()
        assert dispatcher.summary()["jobs_by_status"] == {"finished": 8}
        assert sub.nodes == 2 and sub.batch_id
        batch_log = (Path(sub.subdir) / "batch.err").read_text()
        assert "node_agent[0]" in batch_log and "node_agent[1]" in batch_log  # srun started one agent per node
    finally:
        dispatcher.stop()
