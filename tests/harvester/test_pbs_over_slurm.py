"""radical.saga's PBS Pro adaptor through REAL Torque-style commands: Debian's slurm-wlm-torque
``qsub`` / ``qstat`` / ``qdel`` over the test Slurm (2 fake nodes × 32 CPUs).

Where those wrappers' output differs from what radical.saga expects, the test cluster
puts a shim in front (``tests/slurm_cluster.py`` ``PBS_SHIMS`` lists each divergence:
``--version`` probes, ``qstat -fx``, the script's leading blank line, ``#PBS`` lines the
wrapper ignores and its single ``-l``, no ``exit_status`` for completed jobs).  The Cray
specifics (aprun, ``mppwidth``) cannot run here: ``tests/hpc`` keeps them as replayed formats.
"""

from __future__ import annotations

from pathlib import Path

from harvester_plugins import saga_backend

from .helpers import plugin, queue_dict, wait_status, worker

URL = "pbspro://localhost/?ppn=32"  # ppn given: the adaptor never parses pbsnodes -a


def test_two_node_worker_runs_on_both_nodes_through_qsub(slurm, tmp_path: Path) -> None:
    q = queue_dict(URL)
    body = "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 sh -c 'echo $SLURMD_NODENAME > node.$SLURM_PROCID'"
    ws = worker(str(tmp_path / "m"), body, queue="long", nodes=2, slots=32, worker_id=11)
    assert plugin(q, "submitter").submit_workers([ws]) == [(True, "")]
    assert ws.batchID.isdigit()
    seen = wait_status(q, ws, {"finished", "failed", "cancelled"}, timeout=60)
    assert seen[-1] == "finished", (seen, ws.last_diag)
    assert ws.nativeExitCode == 0
    assert {p.read_text().strip() for p in (tmp_path / "m").glob("node.*")} == {"n1", "n2"}
    # qstat -f through the wrapper: 2 nodes of 32, found by the worker's unique name (recovery)
    info = slurm.run(["scontrol", "show", "job", ws.batchID]).stdout
    assert "NumNodes=2" in info and "NumCPUs=64" in info
    found = saga_backend.find_job(URL, "compass-11", str(tmp_path / "m"))
    assert found == ws.batchID


def test_failed_worker_and_cancel_through_qdel(slurm, tmp_path: Path) -> None:
    q = queue_dict(URL)
    bad = worker(str(tmp_path / "bad"), "exit 3", queue="long", worker_id=12)
    slow = worker(str(tmp_path / "slow"), "sleep 120", queue="long", worker_id=13)
    assert plugin(q, "submitter").submit_workers([bad, slow]) == [(True, ""), (True, "")]
    assert wait_status(q, bad, {"finished", "failed", "cancelled"}, timeout=60)[-1] == "failed"
    wait_status(q, slow, {"running"}, timeout=60)
    assert plugin(q, "sweeper").kill_workers([slow]) == [(True, "")]
    assert wait_status(q, slow, {"cancelled", "failed", "finished"}, timeout=60)[-1] == "cancelled"
