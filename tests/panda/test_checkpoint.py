"""WAL checkpoints run in the checkpointer's thread, never inside a request's COMMIT."""

from __future__ import annotations

import time
from pathlib import Path

from compass_pilot.panda import checkpoint
from compass_pilot.panda.dispatcher import JobStore, submit_task
from tests.tasks import chunk_paths, reco_task


def test_the_writer_never_checkpoints_and_the_thread_does(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint, "ROWS", 50)
    db = str(tmp_path / "panda.sqlite")
    submit_task(db, reco_task(chunk_paths(40), max_attempts=1))
    store = JobStore(db, sent_timeout=1800, heartbeat_timeout=7200)
    try:
        assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for job in store.get_jobs(40):
            for state in ("running", "finished"):
                fields = {"panda_id": job["PandaID"], "attempt_nr": job["attemptNr"], "state": state}
                assert store.update(fields, "v1", "none")[0] == 0
        deadline = time.monotonic() + 30  # the thread runs beside the requests: wait for it
        while store.checkpointer.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.checkpointer.checkpoints >= 1
        assert store.status_counts() == {"finished": 40}
    finally:
        store.close()
    assert not Path(db + "-wal").exists() or Path(db + "-wal").stat().st_size == 0  # closed cleanly
