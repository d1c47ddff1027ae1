"""The batch system broken in the ordinary ways: no job may be taken and then failed for it."""

from __future__ import annotations

import json
from pathlib import Path

from compass_pilot.exitcodes import ExitCode
from tests.faults.conftest import Site, daemon_logs, record, start_daemon, submit_reco


def test_unreachable_batch_host_takes_no_job(site: Site) -> None:
    submit_reco(site.db, 4)
    site.data["hpc"]["batch_url"] = "slurm+ssh://unreachable.invalid"
    daemon = start_daemon(site, "--once", "--max-cycles", "3")
    assert daemon.wait(60) == ExitCode.PREFLIGHT_FAILED
    assert site.dispatcher.summary()["jobs_by_status"] == {"activated": 4}  # nothing taken
    assert "unreachable.invalid" in daemon_logs(site)
    state = json.loads((Path(site.data["hpc"]["shared_dir"]) / "daemon_state.json").read_text())
    assert state["healthy"] is False and state["fetch_requests"] == 0
    assert record("broken batch system: unreachable slurm+ssh host", site.dispatcher)[1:] == (0, 0)


def test_missing_qsub_takes_no_job(site: Site) -> None:
    submit_reco(site.db, 4)
    site.data["hpc"]["batch_url"] = "pbspro://localhost"
    empty = site.base / "no-pbs-bin"
    empty.mkdir()
    daemon = start_daemon(site, "--once", env={"PATH": str(empty)})
    assert daemon.wait(60) == ExitCode.PREFLIGHT_FAILED
    assert "'qsub' not found" in daemon_logs(site)
    assert site.dispatcher.summary()["jobs_by_status"] == {"activated": 4}
    assert record("broken batch system: pbspro:// without qsub", site.dispatcher)[1:] == (0, 0)


def test_grid_pilot_with_an_expired_proxy_takes_no_job(site: Site) -> None:
    from tests.multijob.test_preflight import _proxy

    submit_reco(site.db, 2)
    site.data["panda"]["x509_proxy"] = str(_proxy(site.base, hours=-2))
    pilot = site.pilot()
    assert pilot.wait(60) == ExitCode.NO_VALID_PROXY
    assert site.dispatcher.summary()["jobs_by_status"] == {"activated": 2}
    assert record("grid pilot with an expired proxy", site.dispatcher)[1:] == (0, 0)


def test_long_running_daemon_waits_for_its_batch_system(site: Site, monkeypatch) -> None:
    """Not --once: a failed preflight is re-checked on a backoff, and nothing is fetched meanwhile."""
    import threading

    from compass_pilot.config import load_site_config
    from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
    from compass_pilot.panda.client import PandaClient
    from tests.faults.conftest import wait_for

    monkeypatch.setenv("HOME", str(site.base))
    monkeypatch.setenv("RADICAL_BASE", str(site.base / "radical"))
    submit_reco(site.db, 4)
    site.data["hpc"].update({"batch_url": "slurm+ssh://unreachable.invalid", "no_jobs_backoff_max": 2})
    config = load_site_config(site.write())
    daemon = MultiJobDaemon(config, PandaClient(config.panda, config.site), make_backend(config))
    thread = threading.Thread(target=daemon.run, kwargs={"max_cycles": 1}, daemon=True)
    thread.start()
    state_file = Path(site.data["hpc"]["shared_dir"]) / "daemon_state.json"
    wait_for(lambda: state_file.exists() and not json.loads(state_file.read_text())["healthy"], 30, "unhealthy state")
    assert daemon.source.stats.requests == 0 and thread.is_alive()  # waiting, not exiting, not fetching
    config.hpc.batch_url = "fork://localhost"  # the admin fixes the batch system
    thread.join(120)
    assert not thread.is_alive()
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 4}
    assert record("batch system broken, then repaired (long-running)", site.dispatcher)[1:] == (0, 0)
