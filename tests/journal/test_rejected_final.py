"""A final the server keeps refusing is given up after MAX_FINAL_REJECTIONS answers, not retried forever;
a server that does not answer at all never makes the updater give a final up."""

from __future__ import annotations

from pathlib import Path

from compass_pilot.bulk import MAX_FINAL_REJECTIONS, StatusUpdater
from compass_pilot.errors import ServerError
from compass_pilot.job import JobReport
from compass_pilot.journal import Journal
from compass_pilot.panda.client import UpdateAnswer


class RefusingServer:
    """Answers every update with StatusCode 30 (failed), like a server that refuses a job's state."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable
        self.calls = 0

    def update_jobs(self, reports: list[JobReport]) -> list[UpdateAnswer]:
        self.calls += 1
        if not self.reachable:
            raise ServerError("connection refused")
        return [UpdateAnswer(ok=False, command=None, status_code=30, message="invalid state") for _ in reports]


def test_final_refused_for_good_is_given_up(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    server = RefusingServer()
    updater = StatusUpdater(server, journal)
    updater.queue(JobReport(7, "failed", 1, pilot_error_code=1008))
    for _ in range(MAX_FINAL_REJECTIONS + 5):
        updater.flush()
    assert server.calls == MAX_FINAL_REJECTIONS  # then nothing is left to send
    assert updater.pending_finals() == 0 and journal.pending_reports() == []


def test_unreachable_server_never_gives_a_final_up(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    updater = StatusUpdater(RefusingServer(reachable=False), journal)
    updater.queue(JobReport(7, "failed", 1, pilot_error_code=1008))
    for _ in range(MAX_FINAL_REJECTIONS * 2):
        updater.flush()
    assert updater.pending_finals() == 1 and len(journal.pending_reports()) == 1
