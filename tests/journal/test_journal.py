"""The journal: what a restarted pilot finds, and that a kill -9 at any moment leaves it consistent."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from compass_pilot.job import JobReport, JobSpec
from compass_pilot.journal import Journal
from tests.core.jobdicts import reco_job_dict

WRITER = """
import sys, time
from compass_pilot.journal import Journal
from compass_pilot.job import JobReport
j = Journal(sys.argv[1])
i = 0
while True:
    i += 1
    with j.transaction():
        j.report_queued(JobReport(i, "running", 1))
        j.report_queued(JobReport(i, "finished", 1, n_events=i))
    j.report_acked(JobReport(i, "finished", 1, n_events=i), None)
    print(i, flush=True)
"""


def test_pending_reports_and_acks(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job = JobSpec.from_panda(reco_job_dict(panda_id=7))
    journal.job_started(job, "/w/7", mode="grid")
    journal.payload_started(7, 1, 1234, 99.5)
    journal.report_queued(JobReport(7, "running", 1))
    journal.report_queued(JobReport(7, "failed", 1, pilot_error_code=1305))
    journal.report_queued(JobReport(7, "running", 1))  # never replaces a pending final
    (pending,) = journal.pending_reports()
    assert pending.state == "failed" and pending.pilot_error_code == 1305
    assert journal.unfinished_jobs() == []  # its final report is owed, not its payload
    journal.close()
    again = Journal(tmp_path / "j.sqlite")  # a restarted pilot
    (pending,) = again.pending_reports()
    again.report_acked(pending, None)
    assert again.final_acked(7, 1) and again.pending_reports() == [] and again.final_sent_count(7, 1) == 1


def test_unfinished_job_keeps_what_recovery_needs(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.job_started(JobSpec.from_panda(reco_job_dict(panda_id=8)), "/w/8", mode="grid")
    journal.payload_started(8, 1, 4321, 123.25)
    (entry,) = journal.unfinished_jobs()
    assert (entry.panda_id, entry.pid, entry.create_time, entry.workdir) == (8, 4321, 123.25, "/w/8")
    assert JobSpec.from_panda(entry.spec).panda_id == 8


def test_a_job_set_is_journaled_and_marked_submitted_in_one_commit_each(tmp_path: Path) -> None:
    """512 jobs started, then marked submitted with their batch id: one COMMIT each, not one per
    job (each statement outside a transaction is an fsync, and its GIL hand-off a wait while
    stage-in threads run); only the keys named change, and only the fields a job may carry."""
    journal = Journal(tmp_path / "j.sqlite")
    jobs = [(JobSpec.from_panda(reco_job_dict(panda_id=i)), f"/w/{i}") for i in range(1, 513)]
    statements: list[str] = []
    journal._conn.set_trace_callback(statements.append)
    journal.jobs_started(jobs, mode="multijob", sub_id="sub-1")
    journal.set_states([(i, 1) for i in range(1, 512)], "submitted", batch_id="42.pbs", spec="x", final_acked=1)
    assert statements.count("COMMIT") == 2
    rows = {
        r[0]: r[1:]
        for r in journal._conn.execute("SELECT panda_id, state, batch_id, sub_id, workdir, final_acked FROM jobs")
    }
    assert len(rows) == 512 and rows[7] == ("submitted", "42.pbs", "sub-1", "/w/7", 0)
    assert rows[512] == ("starting", "", "sub-1", "/w/512", 0)  # not named: unchanged
    assert JobSpec.from_panda(journal.job_spec(7, 1) or {}).panda_id == 7  # the spec is not overwritten


def test_claim_gives_live_pilots_separate_journals(tmp_path: Path) -> None:
    first = Journal.claim(tmp_path / "journal.sqlite")
    second = Journal.claim(tmp_path / "journal.sqlite")
    assert first.path.name == "journal.sqlite" and second.path.name == "journal-1.sqlite"
    first.close()  # the first pilot is gone: its journal may be inherited
    assert Journal.claim(tmp_path / "journal.sqlite").path.name == "journal.sqlite"


def test_kill_9_at_random_moments_leaves_a_consistent_journal(tmp_path: Path) -> None:
    rng = random.Random(5)
    path = tmp_path / "crash.sqlite"
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline()  # writing: its schema exists (a loaded box
        # can take longer than the sleep below just to start Python and create the 0600 file)
        time.sleep(0.3 + rng.random() * 0.4)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # an acknowledged final never coexists with a pending report of the same job
        both = conn.execute(
            "SELECT COUNT(*) FROM jobs j JOIN reports r ON j.panda_id = r.panda_id AND j.attempt_nr = r.attempt_nr"
            " WHERE j.final_acked = 1"
        ).fetchone()[0]
        # a pending report is always the final one (the transaction replaced 'running' atomically)
        running = conn.execute("SELECT COUNT(*) FROM reports WHERE is_final = 0").fetchone()[0]
        conn.close()
        assert both == 0 and running == 0
        journal = Journal(path)
        assert all(r.state == "finished" for r in journal.pending_reports())
        journal.close()


def _synchronous(journal: Journal) -> int:
    return int(journal._conn.execute("PRAGMA synchronous").fetchone()[0])


def test_acks_commit_without_fsync_and_every_other_commit_stays_durable(tmp_path: Path) -> None:
    """An acknowledgement is committed with synchronous=NORMAL (no fsync of the daemon's thread per
    bulk answer); the queueing of a report — what a restart needs — stays FULL, before and after."""
    journal = Journal(tmp_path / "j.sqlite")
    statements: list[str] = []
    journal._conn.set_trace_callback(statements.append)
    journal.report_queued(JobReport(7, "finished", 1))
    queued = list(statements)
    statements.clear()
    journal.report_acked(JobReport(7, "finished", 1), None)
    assert not any("synchronous" in s for s in queued)  # FULL, as the connection was opened
    lazy = statements.index("PRAGMA synchronous=NORMAL")
    commit = statements.index("COMMIT")
    assert lazy < statements.index("BEGIN IMMEDIATE") < commit < statements.index("PRAGMA synchronous=FULL")
    assert _synchronous(journal) == 2 and journal.final_acked(7, 1)  # 2 = FULL
    journal.close()
    assert Journal(tmp_path / "j.sqlite").final_acked(7, 1)


def test_a_failed_lazy_transaction_leaves_the_journal_durable(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    try:
        with journal.transaction(durable=False):
            journal.report_queued(JobReport(8, "running", 1))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert _synchronous(journal) == 2 and journal.pending_reports() == []  # rolled back, FULL again
    # an outer durable transaction decides for a nested lazy one
    with journal.transaction(), journal.transaction(durable=False):
        assert _synchronous(journal) == 2
