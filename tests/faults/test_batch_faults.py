"""The batch system broken in the ordinary ways: no job may be taken and then failed for it."""

from __future__ import annotations

import json
from pathlib import Path

from compass_pilot.exitcodes import ExitCode
from tests.faults.conftest import Site, daemon_logs, record, start_daemon, submit_reco, wait_for


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


def test_slurm_controller_down_takes_no_job(site: Site, monkeypatch) -> None:
    """The real Slurm, its slurmctld stopped: the daemon's probe (squeue) gets no answer, so no
    getJob; the exit code says "batch system unreachable", apart from a broken installation."""
    from compass_pilot.config import load_site_config
    from compass_pilot.preflight import probe_batch
    from tests.slurm_cluster import SlurmCluster

    submit_reco(site.db, 4)
    site.data["hpc"]["batch_url"] = "slurm://localhost"
    with SlurmCluster(nodes=1, cpus=32, partitions=("long",)) as cluster:
        for key, value in cluster.env.items():
            monkeypatch.setenv(key, value)
        assert probe_batch(load_site_config(site.write())) is True  # the controller answers
        cluster.stop_controller()
        daemon = start_daemon(site, "--once", env=cluster.env)
        assert daemon.wait(90) == ExitCode.BATCH_UNREACHABLE
    logs = daemon_logs(site)
    assert "did not answer: squeue" in logs and "Unable to contact slurm controller" in logs
    assert site.dispatcher.summary()["jobs_by_status"] == {"activated": 4}  # nothing taken
    state = json.loads((Path(site.data["hpc"]["shared_dir"]) / "daemon_state.json").read_text())
    assert state["healthy"] is False and state["fetch_requests"] == 0
    assert record("broken batch system: slurmctld down (probe)", site.dispatcher)[1:] == (0, 0)


def test_job_service_failing_to_open_after_the_probe_keeps_the_jobs(site: Site) -> None:
    """The probe passed (fork: /bin/sh answers) and the jobs were fetched, but radical.saga's job
    service cannot open (its shell, $COMPASS_SAGA_SHELL, fails): a temporary submission error.  The jobs are
    kept (not failed at once), the submission is retried, and once the shell works they run —
    each with exactly one final."""
    submit_reco(site.db, 4)
    broken, flag = site.base / "flaky-shell", site.base / "shell-broken"
    broken.write_text(f'#!/bin/sh\n[ -e {flag} ] && exit 1\nexec /bin/sh "$@"\n')
    broken.chmod(0o755)
    flag.touch()
    site.data["hpc"].update({"submit_backoff": 1, "submit_backoff_max": 2, "breaker_threshold": 50})
    daemon = start_daemon(site, "--once", env={"COMPASS_SAGA_SHELL": str(broken)})

    def oldest_beat() -> float:
        return min(r["heartbeat"] or 0.0 for r in site.dispatcher.store.query("SELECT heartbeat FROM jobs"))

    wait_for(lambda: "submission failed (temporary" in daemon_logs(site), 90, "a failed submission")
    first = oldest_beat()
    wait_for(lambda: oldest_beat() > first, 60, "every job's heartbeat renewed while the submission is retried")
    wait_for(lambda: daemon_logs(site).count("submission failed (temporary") >= 2, 90, "two failed submissions")
    by_status = site.dispatcher.summary()["jobs_by_status"]
    assert sum(by_status.values()) == 4 and not {"failed", "finished", "activated"} & set(by_status), by_status
    assert flag.exists()
    flag.unlink()  # the shell works again
    assert daemon.wait(120) == ExitCode.OK
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 4}
    assert record("job service fails to open after the probe passed", site.dispatcher)[1:] == (0, 0)


def test_first_getjob_does_not_wait_for_the_job_service(site: Site) -> None:
    """The job service's shell hangs at start (its $COMPASS_SAGA_SHELL waits on a flag file): the probe gate
    lets the daemon fetch and stage in meanwhile; the submission waits in the broker for the
    open, and goes through once the shell starts.  (Before the split, no job was
    fetched until the job service had opened.)"""
    submit_reco(site.db, 4)
    slow, flag = site.base / "slow-shell", site.base / "shell-held"
    slow.write_text(f'#!/bin/sh\nwhile [ -e {flag} ]; do sleep 1; done\nexec /bin/sh "$@"\n')
    slow.chmod(0o755)
    flag.touch()
    site.data["hpc"].update({"submit_backoff": 1, "submit_backoff_max": 2, "breaker_threshold": 50})
    daemon = start_daemon(site, "--once", env={"COMPASS_SAGA_SHELL": str(slow)})
    shared = Path(site.data["hpc"]["shared_dir"])
    wait_for(
        lambda: len(list(shared.glob("sub-*/jobs/PandaJob_*/*.raw"))) == 4,
        90,
        "the jobs fetched and staged in while the shell is held",
    )
    assert flag.exists() and "activated" not in site.dispatcher.summary()["jobs_by_status"]
    assert not any(shared.glob("sub-*/worker.sh"))  # not submitted: the broker is still opening the service
    flag.unlink()
    assert daemon.wait(120) == ExitCode.OK
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 4}
    assert record("job service slow to open: fetched meanwhile", site.dispatcher)[1:] == (0, 0)
