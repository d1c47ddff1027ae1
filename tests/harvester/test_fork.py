"""Plugins against radical.saga's real fork:// backend (the embedded default), driven as Harvester drives them."""

from __future__ import annotations

from pathlib import Path

from harvester_plugins.compat import WORKER_STATUSES, WorkSpec

from .helpers import plugin, queue_dict, wait_status, worker

URL = "fork://localhost"


def test_submit_run_finish_and_fail(tmp_path: Path) -> None:
    q = queue_dict(URL)
    good = worker(str(tmp_path / "w1"), "echo hello > out.txt; sleep 1", worker_id=1)
    bad = worker(str(tmp_path / "w2"), "echo oops >&2; exit 7", worker_id=2)
    results = plugin(q, "submitter").submit_workers([good, bad])
    assert results == [(True, ""), (True, "")]
    for ws in (good, bad):
        assert ws.batchID and ws.submissionHost
        assert ws.get_work_attribute("sagaJobID")[1].startswith("[fork://localhost]-[")
    seen = wait_status(q, good, {"finished", "failed"}, timeout=20)
    assert seen[-1] == "finished", (seen, good.last_diag)
    assert (tmp_path / "w1" / "out.txt").read_text() == "hello\n"
    seen_bad = wait_status(q, bad, {"finished", "failed"}, timeout=20)
    assert seen_bad[-1] == "failed"
    _, ((_, diag),) = plugin(q, "monitor").check_workers([bad])
    assert "7" in diag
    assert set(seen + seen_bad) <= set(WORKER_STATUSES)


def test_kill_gives_cancelled_or_failed_and_sweep_removes_dir(tmp_path: Path) -> None:
    q = queue_dict(URL)
    ws = worker(str(tmp_path / "w"), "sleep 60", worker_id=3)
    assert plugin(q, "submitter").submit_workers([ws]) == [(True, "")]
    wait_status(q, ws, {"running"}, timeout=15)
    assert plugin(q, "sweeper").kill_workers([ws]) == [(True, "")]
    seen = wait_status(q, ws, {"cancelled", "failed"}, timeout=15)
    assert seen[-1] in ("cancelled", "failed")  # fork reports a killed process as Failed
    assert (tmp_path / "w").exists()
    assert plugin(q, "sweeper").sweep_worker(ws) == (True, "")
    assert not (tmp_path / "w").exists()


def test_one_entry_per_worker_for_missing_and_unknown_batch_ids(tmp_path: Path) -> None:
    q = queue_dict(URL)
    no_id = worker(str(tmp_path / "a"), "true", worker_id=10)
    unknown = worker(str(tmp_path / "b"), "true", worker_id=11)
    unknown.batchID = "999999.0"
    ok, results = plugin(q, "monitor").check_workers([no_id, unknown, no_id])
    assert ok is True
    assert len(results) == 3
    assert results[0][0] == "missed" and "no batch id" in results[0][1]
    assert results[1][0] == "missed" and "999999" in results[1][1]
    assert plugin(q, "sweeper").kill_workers([no_id, unknown]) == [
        (True, "worker has no batch id: nothing to kill"),
        (True, plugin(q, "sweeper").kill_worker(unknown)[1]),
    ]


def test_bad_input_is_a_worker_failure_not_an_exception(tmp_path: Path) -> None:
    q = queue_dict(URL)
    no_ap = WorkSpec()
    no_ap.workerID = 20
    no_ap.workParams = {"executable": "true"}
    weird = worker(str(tmp_path / "has space"), "true", worker_id=21)
    bad_nodes = worker(str(tmp_path / "c"), "true", worker_id=22)
    bad_nodes.workParams = {"queue": "long", "nodes": 0, "slotsPerNode": 1, "walltime": 60}
    res = plugin(q, "submitter").submit_workers([no_ap, weird, bad_nodes])
    assert [r[0] for r in res] == [False, False, False]
    assert "accessPoint" in res[0][1]
    assert "has space" in res[1][1]
    assert "nodes" in res[2][1]
    bad_url = queue_dict("nosuch://x")
    res = plugin(bad_url, "submitter").submit_workers([worker(str(tmp_path / "d"), "true")])
    assert res[0][0] is False and "nosuch" in res[0][1]


def test_an_idle_job_service_is_closed_and_reopened_on_use(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """radical.saga's state monitor thread lives as long as the service: an idle one must go."""
    import threading
    import time

    from harvester_plugins import saga_backend

    monkeypatch.setattr(saga_backend, "SERVICE_IDLE_SECONDS", 1.5)
    saga_backend.drop_service(URL)
    # other tests' services (other URLs) may still run monitors of their own: watch only this one's
    before = {t for t in threading.enumerate() if type(t).__name__ == "_job_state_monitor"}
    q = queue_dict(URL)
    ws = worker(str(tmp_path / "w"), "sleep 4", worker_id=30)
    assert plugin(q, "submitter").submit_workers([ws]) == [(True, "")]
    assert saga_backend.open_services() == [URL]
    monitors = [t for t in threading.enumerate() if type(t).__name__ == "_job_state_monitor" and t not in before]
    assert monitors
    # held in use past the idle time: not closed under its user's feet
    _, lock = saga_backend.get_service(URL)
    with lock:
        time.sleep(2.0)
        assert saga_backend.open_services() == [URL]
    deadline = time.monotonic() + 10
    while saga_backend.open_services() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert saga_backend.open_services() == []
    for thread in monitors:  # it notices its stop flag at its next 1 s read timeout (later on a loaded box)
        thread.join(15)
    assert not any(t.is_alive() for t in monitors)
    # the next call opens a new service and still finds the job by its id
    seen = wait_status(q, ws, {"finished", "failed"}, timeout=20)
    assert seen[-1] == "finished", (seen, ws.last_diag)
