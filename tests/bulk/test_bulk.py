"""JobSource and StatusUpdater against the real dispatcher over loopback HTTP."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from compass_pilot.bulk import JobSource, StatusUpdater
from compass_pilot.config import load_site_config
from compass_pilot.job import JobReport
from compass_pilot.panda.client import PandaClient
from tests.tasks import serve_task


class CountingClient(PandaClient):
    """The real client, counting the HTTP requests it makes."""

    calls: list[str]

    def get_jobs(self, n, **extra):  # type: ignore[override]
        self.calls.append("get_jobs")
        return super().get_jobs(n, **extra)

    def update_jobs(self, reports):  # type: ignore[override]
        self.calls.append("update_jobs")
        return super().update_jobs(reports)

    def update_job(self, report):  # type: ignore[override]
        self.calls.append("update_job")
        return super().update_job(report)


def _summary(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/summary", timeout=10) as answer:
        return json.loads(answer.read())


@pytest.fixture
def served(tmp_path: Path):
    dispatcher = serve_task(tmp_path, 40, "bulk")
    site = load_site_config(None)
    site.panda.url = dispatcher.url
    client = CountingClient(site.panda, site.site)
    client.calls = []
    try:
        yield dispatcher, client
    finally:
        client.close()
        dispatcher.stop()


@pytest.mark.parametrize("dialect", ["legacy", "v1"])
def test_one_request_per_fetch_and_per_flush(served, dialect: str) -> None:
    dispatcher, client = served
    client.panda.dialect = dialect
    source = JobSource(client, backoff=60)
    jobs = source.fetch(32)
    assert len(jobs) == 32 and client.calls == ["get_jobs"]
    updater = StatusUpdater(client)
    for job in jobs:
        updater.queue(JobReport(int(job["PandaID"]), "starting", int(job["attemptNr"])))
        updater.queue(JobReport(int(job["PandaID"]), "running", int(job["attemptNr"])))  # coalesced
    updater.flush()
    assert client.calls == ["get_jobs", "update_jobs"]
    assert updater.pending() == 0
    for job in jobs:
        updater.queue(JobReport(int(job["PandaID"]), "finished", int(job["attemptNr"]), n_events=1))
    updater.flush()
    assert client.calls.count("update_jobs") == 2
    assert _summary(dispatcher.url)["jobs_by_status"].get("finished") == 32
    # an acknowledged final state is never sent again
    updater.queue(JobReport(int(jobs[0]["PandaID"]), "finished", int(jobs[0]["attemptNr"])))
    assert updater.pending() == 0
    assert updater.flush() == {}
    assert client.calls.count("update_jobs") == 2


def test_empty_server_backs_off(served) -> None:
    _, client = served
    source = JobSource(client, backoff=60)
    assert len(source.fetch(100)) == 40
    assert source.fetch(100) == []  # empty → backoff
    assert not source.ready()
    assert source.fetch(100) == []  # no request made inside the backoff
    assert client.calls == ["get_jobs", "get_jobs"]


def test_finals_survive_a_dead_server(served) -> None:
    dispatcher, client = served
    jobs = JobSource(client).fetch(3)
    updater = StatusUpdater(client)
    for job in jobs:
        updater.queue(JobReport(int(job["PandaID"]), "failed", int(job["attemptNr"]), pilot_error_code=1305))
    dispatcher.stop()
    client.panda.retries = 1
    client.panda.backoff = 0.01
    assert updater.flush() == {}
    assert updater.pending_finals() == 3 and updater.stats.failures == 1


def test_heartbeats_are_sent_but_not_journaled(served, tmp_path: Path) -> None:
    from compass_pilot.journal import Journal

    dispatcher, client = served
    jobs = JobSource(client).fetch(4)
    journal = Journal.claim(tmp_path / "journal.sqlite")
    updater = StatusUpdater(client, journal)
    keys = [(int(j["PandaID"]), int(j["attemptNr"])) for j in jobs]
    updater.queue(JobReport(keys[0][0], "running", keys[0][1]))  # a real update, pending
    updater.queue_heartbeats([JobReport(p, "running", a) for p, a in keys])
    assert updater.pending() == 4  # the pending update stands in for job 0's heartbeat
    assert [r.panda_id for r in journal.pending_reports()] == [keys[0][0]]  # heartbeats not on disk
    updater.flush()
    assert updater.pending() == 0 and client.calls.count("update_jobs") == 1
    assert _summary(dispatcher.url)["jobs_by_status"].get("running") == 4  # all four reached the server
    sent = journal._conn.execute("SELECT COUNT(*) FROM sent").fetchone()[0]
    assert sent == 1  # only the journaled update's acknowledgement is recorded
    # a final state queued after a heartbeat is journaled and replaces it
    updater.queue_heartbeats([JobReport(keys[1][0], "running", keys[1][1])])
    updater.queue(JobReport(keys[1][0], "failed", keys[1][1], pilot_error_code=1305))
    assert [r.state for r in journal.pending_reports()] == ["failed"]
    updater.flush()
    assert journal.final_acked(*keys[1]) and journal.pending_reports() == []
    journal.close()


def test_a_burst_of_finals_is_queued_and_acknowledged_in_batches(served, tmp_path: Path) -> None:
    """queue_many / the flush's acks: the same promises as one by one (nothing acked re-sent, no
    pending final downgraded, every ack journaled), with one statement per batch."""
    from compass_pilot.journal import Journal

    _dispatcher, client = served
    jobs = JobSource(client).fetch(6)
    journal = Journal.claim(tmp_path / "journal.sqlite")
    updater = StatusUpdater(client, journal)
    keys = [(int(j["PandaID"]), int(j["attemptNr"])) for j in jobs]
    updater.queue_many([JobReport(p, "failed", a, pilot_error_code=1305) for p, a in keys[:3]])
    updater.flush()
    assert all(journal.final_acked(*k) for k in keys[:3]) and journal.pending_reports() == []
    assert journal.finals_acked(keys) == set(keys[:3])
    # a second burst naming acked jobs again, a downgrade and two new finals
    fresh = StatusUpdater(client, journal)  # a restarted daemon: nothing in memory, the journal knows
    fresh.queue(JobReport(keys[3][0], "failed", keys[3][1], pilot_error_code=1305))
    fresh.queue_many(
        [JobReport(p, "failed", a, pilot_error_code=1305) for p, a in keys[:3]]
        + [JobReport(keys[3][0], "running", keys[3][1])]
        + [JobReport(p, "failed", a, pilot_error_code=1305) for p, a in keys[4:]]
    )
    assert sorted((r.panda_id, r.state) for r in journal.pending_reports()) == sorted(
        (p, "failed") for p, _ in keys[3:]
    )
    before = client.calls.count("update_jobs")
    fresh.flush()
    assert client.calls.count("update_jobs") == before + 1
    assert all(journal.final_sent_count(*k) == 1 for k in keys)  # exactly one acked final each
    assert fresh.pending() == 0 and journal.pending_reports() == []
    journal.close()
