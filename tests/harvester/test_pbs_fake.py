"""The pbspro:// path (Blue Waters) with FAKE qsub/qstat/qdel/pbsnodes — PBS cannot run on this box.

tests/harvester/fakepbs/ replays PBS Pro's documented output formats as radical.saga's
pbspro adaptor reads them (``qstat -fx`` ``Job Id:`` blocks with ``job_state``,
``Exit_status``; ``qsub`` printing ``<seq>.<server>``; ``Unknown Job Id``), and really
runs the submitted script in the background so states move Q → R → F.  The adaptor's
own monitor thread refreshes states every 5 s, hence the longer waits.
"""

from __future__ import annotations

from pathlib import Path

from .helpers import plugin, queue_dict, wait_status, worker

URL = "pbspro://localhost"


def test_pbs_submit_directives_and_states(fakepbs: Path, tmp_path: Path) -> None:
    q = queue_dict(URL, projectname="bayr")
    ws = worker(str(tmp_path / "p"), "echo pbs-ran > out.txt", queue="medium", nodes=2, slots=32, walltime=3 * 3600)
    assert plugin(q, "submitter").submit_workers([ws]) == [(True, "")]
    assert ws.batchID == "1"
    script = (fakepbs / "1" / "script").read_text()
    assert "#PBS -q medium" in script
    assert "#PBS -A bayr" in script
    assert "#PBS -l walltime=3:0:00" in script  # radical.saga's own format: hours:minutes:00
    assert "select=2:ncpus=32" in script
    assert f"/bin/bash {tmp_path / 'p' / 'worker_wrapper.sh'}" in script
    seen = wait_status(q, ws, {"finished", "failed"}, timeout=30, step=1)
    assert seen[-1] == "finished", (seen, ws.last_diag)
    assert (tmp_path / "p" / "out.txt").read_text() == "pbs-ran\n"


def test_pbs_rejected_queue_and_kill(fakepbs: Path, tmp_path: Path) -> None:
    q = queue_dict(URL)
    (fakepbs / "reject_queue").write_text("closed")
    try:
        ((ok, diag),) = plugin(q, "submitter").submit_workers([worker(str(tmp_path / "r"), "true", queue="closed")])
    finally:
        (fakepbs / "reject_queue").unlink()
    assert ok is False and "Unknown queue" in diag
    ws = worker(str(tmp_path / "k"), "sleep 60", queue="long")
    assert plugin(q, "submitter").submit_workers([ws]) == [(True, "")]
    wait_status(q, ws, {"running"}, timeout=30, step=1)
    assert plugin(q, "sweeper").kill_workers([ws]) == [(True, "")]
    assert wait_status(q, ws, {"cancelled", "failed"}, timeout=30, step=1)[-1] == "cancelled"
