"""The daemon's batch backend (PluginBatchBackend) on fork://: the same plugins, the real node-agent command line."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from compass_pilot.config import load_site_config
from compass_pilot.job import JobSpec
from harvester_plugins.daemon_backend import PluginBatchBackend
from hpc.packing import plan_submissions
from tests.core.jobdicts import reco_job_dict

ROOT = Path(__file__).resolve().parents[2]


def _site(tmp_path: Path, url: str = "fork://localhost"):
    site = load_site_config(ROOT / "site_configs" / "local.yaml")
    # the agents give up on a missing job set after 1 s: a failed worker
    hpc = dataclasses.replace(site.hpc, batch_url=url, shared_dir=str(tmp_path), jobset_wait=1.0)
    return dataclasses.replace(site, hpc=hpc)


def test_submit_renders_node_agent_and_reports_failure_of_missing_jobset(tmp_path: Path) -> None:
    site = _site(tmp_path)
    (sub,) = plan_submissions([JobSpec.from_panda(reco_job_dict(7))], site.hpc)
    subdir = tmp_path / "sub-1"
    backend = PluginBatchBackend(site)
    batch_id = backend.submit(sub, subdir, subdir / "missing-jobset.json")
    assert batch_id
    body = (subdir / "worker.sh").read_text()
    assert "hpc.node_agent" in body and "--jobset" in body and "missing-jobset.json" in body and "mpiexec" in body
    assert "--jobset-wait 1" in body  # the daemon's hpc.jobset_wait reaches the agents

    deadline = time.monotonic() + 30
    status = backend.status(batch_id, subdir)
    while status not in ("finished", "failed", "cancelled", "missed") and time.monotonic() < deadline:
        time.sleep(0.5)
        status = backend.status(batch_id, subdir)
    assert status == "failed"  # the agent cannot read the job set: a failed worker, not an exception
    backend.kill(batch_id, subdir)  # killing an ended job is fine


def test_bad_batch_url_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nosuch"):
        PluginBatchBackend(_site(tmp_path, "nosuch://host"))
