"""The fault suite: real processes killed, real servers stopped; every job must end with
exactly one final state at the dispatcher.  Each test records its row; the suite prints
the table faults × jobs × lost × duplicated at the end (all zeros is the promise)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import calibdb
from compass_pilot.demo.rawdata import make_production_input
from compass_pilot.panda.dispatcher import Dispatcher
from tests.tasks import chunk_paths, reco_task

ROWS: list[tuple[str, int, int, int, int]] = []


def record(fault: str, dispatcher: Dispatcher) -> tuple[int, int, int]:
    """Count jobs, jobs taken without a final state, and duplicated final reports; remember the row.

    A job PanDA never handed out (still ``activated``) is not lost: it waits for a pilot
    that can run it — which is what a failed preflight must leave behind.
    """
    jobs = dispatcher.store.query("SELECT panda_id, status FROM jobs")
    taken = [j for j in jobs if j["status"] != "activated"]
    lost = sum(1 for j in taken if j["status"] not in ("finished", "failed"))
    finals = dispatcher.final_updates()
    duplicated = sum(n - 1 for n in finals.values() if n > 1) + len(dispatcher.duplicate_finals())
    ROWS.append((fault, len(jobs), len(taken), lost, duplicated))
    return len(jobs), lost, duplicated


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not ROWS:
        return
    terminalreporter.section("fault suite: faults × jobs × lost × duplicated")
    terminalreporter.write_line(f"{'fault':<52} {'jobs':>5} {'taken':>6} {'lost':>5} {'duplicated':>11}")
    for fault, jobs, taken, lost, dup in ROWS:
        terminalreporter.write_line(f"{fault:<52} {jobs:>5} {taken:>6} {lost:>5} {dup:>11}")


def submit_reco(db: str, n: int, **extra: object) -> None:
    """A reco task over the first n chunks of run 275678, one attempt per job (no retries hide faults)."""
    from compass_pilot.panda.dispatcher import submit_task

    submit_task(db, reco_task(chunk_paths(n), **{"name": "faults", **extra}))


@dataclass
class Site:
    base: Path
    dispatcher: Dispatcher
    db: str
    file: Path
    data: dict

    def write(self) -> Path:
        self.file.write_text(yaml.safe_dump(self.data))
        return self.file

    def pilot(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.base / f"pilot-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "compass_pilot.cli", "grid", "--site-config", str(self.write()), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HOME=str(self.base)),
        )


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    make_production_input(tmp_path / "castor", 2016, "W14", {275678: 8}, n_events=40)
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=1).start()
    data = {
        "site": {"name": "FAULTS", "workdir": str(tmp_path / "work")},
        "panda": {"url": dispatcher.url, "retries": 2, "backoff": 0.2, "backoff_max": 2.0, "timeout": 10},
        "grid": {"heartbeat_interval": 1, "sample_interval": 1, "payload_grace": 2, "max_jobs": 0},
        "storage": {"input_root": str(tmp_path / "castor"), "output_root": str(tmp_path / "eos")},
        "calibdb": {
            "backend": "sqlite",
            "snapshot": str(calibdb.demo_snapshot("sqlite", tmp_path / "calib")),
            "scratch_dir": str(tmp_path / "scratch"),
        },
        "hpc": {
            "shared_dir": str(tmp_path / "hpc"),
            "fake_nodes": True,
            "slots_per_node": 4,
            "max_nodes": 2,
            "max_jobs": 8,
            "poll_interval": 1,
            "heartbeat_interval": 2,
            "no_jobs_backoff": 1,
            "batch_url": "fork://localhost",
        },
    }
    s = Site(tmp_path, dispatcher, db, tmp_path / "site.yaml", data)
    try:
        yield s
    finally:
        dispatcher.stop()


def start_daemon(site: Site, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``compass-pilot daemon`` for this site as its own process, output to a daemon-*.log in the site dir.

    A fault point armed in the test process's own environment is never inherited: only
    ``env`` (e.g. ``{"COMPASS_FAULT_POINT": …}``) arms one for this daemon.
    """
    inherited = {k: v for k, v in os.environ.items() if k != "COMPASS_FAULT_POINT"}
    full = {**inherited, "HOME": str(site.base), "RADICAL_BASE": str(site.base / "radical"), **(env or {})}
    log = open(site.base / f"daemon-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "compass_pilot.cli", "daemon", "--site", str(site.write()), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full,
    )


def daemon_logs(site: Site) -> str:
    """Everything the daemons of this site wrote, in start order."""
    return "".join(p.read_text(errors="replace") for p in sorted(site.base.glob("daemon-*.log")))
