"""A bad job set fails only its bad jobs; a config that could not place any job is refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from compass_pilot.config import load_site_config
from compass_pilot.errors import ConfigError
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from tests.multijob.test_daemon import _run, _summary, mom  # noqa: F401  (the fixture)


def test_empty_queue_list_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("hpc:\n  queues: []\n")
    with pytest.raises(ConfigError, match=r"hpc\.queues: expected at least one queue"):
        load_site_config(path)


def test_a_job_handed_out_twice_runs_once(mom) -> None:  # noqa: F811
    site, client, dispatcher, submit = mom
    submit(3)
    real = client.get_jobs

    def twice(n: int, **extra):  # type: ignore[no-untyped-def]
        jobs = real(n, **extra)
        return jobs + jobs[:1]  # the server's answer lists the first job again

    client.get_jobs = twice
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon)
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 3}
    assert dispatcher.duplicate_finals() == []
    (sub,) = daemon.submissions.values()
    assert len(sub.jobs) == 3


def test_a_job_set_the_config_cannot_place_fails_its_jobs_not_the_daemon(mom) -> None:  # noqa: F811
    from compass_pilot.errors import ErrorCode

    site, client, dispatcher, submit = mom
    submit(2)
    site.hpc.queues = []  # as if validation had been bypassed: the plan raises after the jobs were taken
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon)
    rows = dispatcher.store.query("SELECT status, error_code FROM jobs")
    assert {(r["status"], r["error_code"]) for r in rows} == {("failed", ErrorCode.GENERAL)}
    assert daemon.journal.path.exists()
