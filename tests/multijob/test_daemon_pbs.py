"""The daemon end to end through real Torque-style commands: radical.saga's pbspro adaptor →
slurm-wlm-torque's qsub / qstat / qdel (with the test cluster's shims) → a real Slurm
(2 fake nodes × 32 CPUs) → node agents under mpiexec → real payloads → the dispatcher."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from harvester_plugins import saga_backend
from tests.multijob.test_daemon import _run, _summary, mom  # noqa: F401  (the fixture)
from tests.slurm_cluster import SlurmCluster

URL = "pbspro://localhost/?ppn=32"


@pytest.fixture(scope="module")
def torque() -> Iterator[SlurmCluster]:
    saved = {k: os.environ.get(k) for k in ("PATH", "SLURM_CONF")}
    with SlurmCluster(nodes=2, cpus=32, partitions=("long", "medium", "short")) as cluster:
        os.environ.update(cluster.env)
        try:
            yield cluster
        finally:
            saga_backend.drop_service(URL)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def test_daemon_runs_a_two_node_submission_through_qsub(torque: SlurmCluster, mom) -> None:  # noqa: F811
    site, client, dispatcher, submit = mom
    site.hpc.batch_url = URL
    site.hpc.slots_per_node = 32
    site.hpc.max_nodes = 2
    site.hpc.max_jobs = 64
    submit(40)  # 2 nodes: 32 + 8
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon, timeout=240)
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 40}
    (sub,) = daemon.submissions.values()
    assert sub.nodes == 2 and sub.batch_id.isdigit()
    info = torque.run(["scontrol", "show", "job", sub.batch_id]).stdout
    assert "NumNodes=2" in info
    assert dispatcher.duplicate_finals() == []
