"""Months of operation: settled submission dirs and acknowledged journal rows are pruned;
a submission with a failed job is kept for debugging until hpc.failed_dir_keep_hours."""

from __future__ import annotations

from pathlib import Path

from compass_pilot.job import JobReport
from compass_pilot.journal import Journal
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from tests.multijob.test_daemon import _run, mom  # noqa: F401  (the fixture)


def _prune(site, client) -> None:  # type: ignore[no-untyped-def]
    daemon = MultiJobDaemon(site, client, make_backend(site))  # takes over the same journal
    try:
        daemon.prune()
    finally:
        daemon.journal.close()


def test_settled_dirs_pruned_failed_ones_kept_for_a_while(mom, tmp_path: Path) -> None:  # noqa: F811
    site, client, _, submit = mom
    submit(2)
    _run(MultiJobDaemon(site, client, make_backend(site)))
    submit(3)  # chunks 11001..11003 of a second task; one of its inputs is lost
    (tmp_path / "castor" / "2016" / "raw" / "W14" / "cdr11002-275678.raw").unlink()
    _run(MultiJobDaemon(site, client, make_backend(site)))
    subs = sorted(Path(site.hpc.shared_dir).glob("sub-*"))
    assert len(subs) == 2
    site.hpc.failed_dir_keep_hours = 1000
    _prune(site, client)
    kept = sorted(Path(site.hpc.shared_dir).glob("sub-*"))
    assert kept == subs[1:]  # the all-finished one went, the one with a failure stays
    site.hpc.failed_dir_keep_hours = 0
    _prune(site, client)
    assert list(Path(site.hpc.shared_dir).glob("sub-*")) == []


def test_journal_forgets_only_acknowledged_business(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    settled, owed = JobReport(1, "finished", 1), JobReport(2, "failed", 1, pilot_error_code=1008)
    journal.report_queued(settled)
    journal.report_acked(settled, None)
    journal.report_queued(owed)
    assert journal.prune(older_than=0) == 1
    assert not journal.final_acked(1, 1) and [r.panda_id for r in journal.pending_reports()] == [2]
