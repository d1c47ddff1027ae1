"""A job whose outputs could not be made durable (the burst's sync failed for one) is not reported finished."""

from __future__ import annotations

from compass_pilot.errors import ErrorCode, StageOutError
from compass_pilot.job import JobReport, OutputFileReport
from compass_pilot.modes.multijob import _unless_lost


def _report(state: str, *surls: str) -> JobReport:
    report = JobReport(7, state, 1)
    report.output_files = [OutputFileReport(s.rsplit("/", 1)[-1], "g", 1, "00000001", s) for s in surls]
    return report


def test_a_finished_job_with_an_unsynced_output_fails_with_the_sync_error() -> None:
    lost = {"/eos/a.root": StageOutError("stage-out of a.root: sync: Input/output error", ErrorCode.STAGE_OUT_FAILED)}
    report, error = _unless_lost((_report("finished", "/eos/a.root", "/eos/log.tgz"), None), lost)
    assert report is None and error is not None and error.code == ErrorCode.STAGE_OUT_FAILED


def test_a_failed_job_keeps_its_report_without_the_unsynced_log() -> None:
    lost = {"/eos/log.tgz": StageOutError("sync failed")}
    report, error = _unless_lost((_report("failed", "/eos/log.tgz"), None), lost)
    assert error is None and report is not None and report.state == "failed" and report.output_files == []


def test_jobs_whose_files_all_synced_are_untouched() -> None:
    lost = {"/eos/other.root": StageOutError("sync failed")}
    outcome = (_report("finished", "/eos/a.root"), None)
    assert _unless_lost(outcome, lost) is outcome
    assert _unless_lost(outcome, {}) is outcome
