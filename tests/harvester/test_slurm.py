"""Plugins against a REAL Slurm 22.05 (2 fake nodes × 32 CPUs in a private network namespace).

The cluster comes from tests.slurm_cluster (session fixture); when Slurm or
munge is missing the fixture raises and these tests FAIL, naming the binary.
"""

from __future__ import annotations

from pathlib import Path

from .helpers import plugin, queue_dict, wait_status, worker

URL = "slurm://localhost"


def test_submit_monitor_finish_fail_through_slurm(slurm, tmp_path: Path) -> None:
    q = queue_dict(URL)
    good = worker(str(tmp_path / "ok"), "echo $SLURM_JOB_PARTITION > part.txt; sleep 1", queue="short", worker_id=1)
    bad = worker(str(tmp_path / "bad"), "exit 3", queue="long", worker_id=2)
    assert plugin(q, "submitter").submit_workers([good, bad]) == [(True, ""), (True, "")]
    assert good.batchID.isdigit()
    assert not list((tmp_path / "ok").glob("tmp_*.slurm")), "radical.saga's tmp_*.slurm left behind"
    seen = wait_status(q, good, {"finished", "failed", "cancelled"}, timeout=30)
    assert seen[-1] == "finished", (seen, good.last_diag)
    assert (tmp_path / "ok" / "part.txt").read_text().strip() == "short"
    assert wait_status(q, bad, {"finished", "failed", "cancelled"}, timeout=30)[-1] == "failed"
    assert good.nativeExitCode == 0 and bad.nativeExitCode == 3


def test_kill_running_worker(slurm, tmp_path: Path) -> None:
    q = queue_dict(URL)
    ws = worker(str(tmp_path / "k"), "sleep 120", worker_id=3)
    assert plugin(q, "submitter").submit_workers([ws]) == [(True, "")]
    wait_status(q, ws, {"running"}, timeout=30)
    assert plugin(q, "sweeper").kill_workers([ws]) == [(True, "")]
    assert wait_status(q, ws, {"cancelled", "failed", "finished"}, timeout=30)[-1] == "cancelled"
    res = slurm.run(["squeue", "-h", "-j", ws.batchID])
    assert ws.batchID not in res.stdout or "CA" in res.stdout


def test_batch_system_error_is_a_failed_worker(slurm, tmp_path: Path) -> None:
    q = queue_dict(URL)
    ws = worker(str(tmp_path / "e"), "true", queue="nosuchpartition", worker_id=4)
    ((ok, diag),) = plugin(q, "submitter").submit_workers([ws])
    assert ok is False
    assert "partition" in diag.lower(), diag  # sbatch's own message reaches the diag
    assert ws.batchID is None


def test_two_nodes_four_slots_multi_node_worker(slurm, tmp_path: Path) -> None:
    """A 2-node × 4-slot worker: srun puts one task on each node (shell payload per node)."""
    q = queue_dict(URL)
    body = "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 sh -c 'echo $SLURMD_NODENAME > node.$SLURM_PROCID'"
    ws = worker(str(tmp_path / "m"), body, nodes=2, slots=4, worker_id=5)
    assert plugin(q, "submitter").submit_workers([ws]) == [(True, "")]
    seen = wait_status(q, ws, {"finished", "failed", "cancelled"}, timeout=40)
    assert seen[-1] == "finished", (seen, ws.last_diag, (tmp_path / "m" / "batch.err").read_text())
    nodes = {p.read_text().strip() for p in (tmp_path / "m").glob("node.*")}
    assert nodes == {"n1", "n2"}
