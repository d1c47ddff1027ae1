"""Multi-job faults: the daemon killed and restarted, the PanDA server down for a while."""

from __future__ import annotations

import os
import signal
import time

from compass_pilot.panda.dispatcher import Dispatcher
from tests.faults.conftest import Site, record, start_daemon, submit_reco, wait_for


def _running(site: Site) -> int:
    return site.dispatcher.summary()["jobs_by_status"].get("running", 0)


def test_daemon_killed_with_a_submission_running_is_restarted(site: Site) -> None:
    submit_reco(site.db, 8, extra_pars="--event-time 0.1")  # 2 nodes × 4 slots, ~4 s payloads
    daemon = start_daemon(site, "--once")
    wait_for(lambda: _running(site) == 8, 60, "8 running jobs")
    os.kill(daemon.pid, signal.SIGKILL)  # the batch job and its node agents live on
    daemon.wait(10)
    restarted = start_daemon(site, "--once")
    assert restarted.wait(120) == 0
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 8}
    assert record("daemon kill -9 with a submission running", site.dispatcher)[1:] == (0, 0)


def test_server_outage_during_a_multijob_run(site: Site) -> None:
    submit_reco(site.db, 8, extra_pars="--event-time 0.12")
    daemon = start_daemon(site, "--once")
    wait_for(lambda: _running(site) == 8, 60, "8 running jobs")
    port = int(site.dispatcher.url.rsplit(":", 1)[1])
    site.dispatcher.stop()  # PanDA goes away while the payloads run and finish
    time.sleep(8)
    site.dispatcher = Dispatcher(site.db, port=port, check_interval=1).start()  # same DB, same address
    assert daemon.wait(120) == 0  # the queued final reports drained once the server was back
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 8}
    assert record("PanDA server down 8 s during a multi-job run", site.dispatcher)[1:] == (0, 0)


def test_sigterm_mid_round_leaves_every_job_one_final(site: Site) -> None:
    submit_reco(site.db, 8, extra_pars="--event-time 0.3")  # ~12 s payloads: SIGTERM lands while they run
    daemon = start_daemon(site, "--once")
    wait_for(lambda: _running(site) == 8, 60, "8 running jobs")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(90) == 128 + signal.SIGTERM
    by_status = site.dispatcher.summary()["jobs_by_status"]
    assert sum(by_status.values()) == 8 and set(by_status) <= {"finished", "failed"}
    assert record("SIGTERM mid-round (batch job cancelled)", site.dispatcher)[1:] == (0, 0)
