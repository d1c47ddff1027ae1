"""The batch broker (radical.saga's child process) killed under a running daemon: no job lost or run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from tests.faults.conftest import Site, daemon_logs, record, start_daemon, submit_reco, wait_for

#: The daemon, run as the CLI runs it, then the radical modules it holds at its end (on stdout).
DAEMON_THEN_MODULES = (
    "import sys\n"
    "from compass_pilot.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('radical modules in the daemon:', sorted(m for m in sys.modules if m.startswith('radical')))\n"
    "print('charset guessers in the daemon:', [m for m in ('charset_normalizer', 'chardet') if sys.modules.get(m)])\n"
    "sys.exit(rc)\n"
)


def _running(site: Site) -> int:
    return site.dispatcher.summary()["jobs_by_status"].get("running", 0)


def _broker_of(daemon_pid: int) -> psutil.Process | None:
    for child in psutil.Process(daemon_pid).children():
        try:
            if "harvester_plugins.batch_broker" in " ".join(child.cmdline()):
                return child
        except psutil.Error:  # a killed broker not reaped yet
            continue
    return None


def test_broker_killed_mid_run_is_replaced_and_the_daemon_never_loads_radical_saga(site: Site) -> None:
    submit_reco(site.db, 8, extra_pars="--event-time 0.2")  # ~8 s payloads
    site.data["hpc"]["batch_check_interval"] = 1  # the batch system is asked every round: the broker is needed
    env = {k: v for k, v in os.environ.items() if k != "COMPASS_FAULT_POINT"}
    env.update(HOME=str(site.base), RADICAL_BASE=str(site.base / "radical"))
    out = open(site.base / f"daemon-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON_THEN_MODULES, "daemon", "--site", str(site.write()), "--once"],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    wait_for(lambda: _running(site) == 8, 60, "8 running jobs")
    broker = _broker_of(daemon.pid)
    assert broker is not None, "the daemon has no batch broker child"
    broker.kill()  # the batch job and its node agents live on; the next batch call starts a new broker
    wait_for(lambda: (b := _broker_of(daemon.pid)) is not None and b.pid != broker.pid, 30, "a new broker")
    assert daemon.wait(120) == 0
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 8}
    assert record("batch broker kill -9 with a submission running", site.dispatcher)[1:] == (0, 0)
    logs = daemon_logs(site)
    assert "radical modules in the daemon: []" in logs
    assert "charset guessers in the daemon: []" in logs  # compass_pilot.leanimports
    assert logs.count("batch broker started") >= 2


def test_broker_killed_between_qsub_and_its_answer_does_not_submit_twice(site: Site) -> None:
    submit_reco(site.db, 8, extra_pars="--event-time 0.1")
    site.data["hpc"].update({"submit_backoff": 1, "batch_check_interval": 1})
    # the broker dies right after the batch system took the job, before the daemon hears the id
    daemon = start_daemon(site, "--once", env={"COMPASS_FAULT_POINT": "broker-after-submit"})
    assert daemon.wait(120) == 0
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 8}
    assert record("batch broker killed between qsub and its answer", site.dispatcher)[1:] == (0, 0)
    logs = daemon_logs(site)
    assert logs.count(": batch id ") == 1  # the submitter ran once; the retry found that batch job by name
    assert "answer was lost exists" in logs


def test_sigterm_reaches_the_daemon_not_the_broker(site: Site) -> None:
    submit_reco(site.db, 8, extra_pars="--event-time 0.3")  # ~12 s payloads: SIGTERM lands while they run
    daemon = start_daemon(site, "--once")
    wait_for(lambda: _running(site) == 8, 60, "8 running jobs")
    broker = _broker_of(daemon.pid)
    assert broker is not None
    broker.send_signal(signal.SIGTERM)  # as systemd / a batch system signals the whole group: ignored,
    time.sleep(0.5)  # the daemon still needs its broker to cancel the batch job
    assert broker.is_running() and broker.status() != psutil.STATUS_ZOMBIE
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(90) == 128 + signal.SIGTERM
    by_status = site.dispatcher.summary()["jobs_by_status"]
    assert sum(by_status.values()) == 8 and set(by_status) <= {"finished", "failed"}
    assert "[broker] worker sub-" in daemon_logs(site) and "cancelled" in daemon_logs(site)
    assert record("SIGTERM to daemon and broker mid-round", site.dispatcher)[1:] == (0, 0)
    psutil.wait_procs([broker], timeout=10)  # gone with the daemon (its pipe closed)
    assert not broker.is_running()
