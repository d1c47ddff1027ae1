"""The batch system broken in the ordinary ways: no job may be taken and then failed for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from compass_pilot.exitcodes import ExitCode
from tests.faults.conftest import Site, record, submit_reco


def _daemon(site: Site, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    base = dict(os.environ, HOME=str(site.base), RADICAL_BASE=str(site.base / "radical"))
    log = open(site.base / f"daemon-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "compass_pilot.cli", "daemon", "--site", str(site.write()), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**base, **(env or {})},
    )


def _log_text(site: Site) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(site.base.glob("daemon-*.log")))


def test_unreachable_batch_host_takes_no_job(site: Site) -> None:
    submit_reco(site.db, 4)
    site.data["hpc"]["batch_url"] = "slurm+ssh://unreachable.invalid"
    daemon = _daemon(site, "--once", "--max-cycles", "3")
    assert daemon.wait(60) == ExitCode.PREFLIGHT_FAILED
    assert site.dispatcher.summary()["jobs_by_status"] == {"activated": 4}  # nothing taken
    assert "unreachable.invalid" in _log_text(site)
    state = json.loads((Path(site.data["hpc"]["shared_dir"]) / "daemon_state.json").read_text())
    assert state["healthy"] is False and state["fetch_requests"] == 0
    assert record("broken batch system: unreachable slurm+ssh host", site.dispatcher)[1:] == (0, 0)


def test_missing_qsub_takes_no_job(site: Site) -> None:
    submit_reco(site.db, 4)
    site.data["hpc"]["batch_url"] = "pbspro://localhost"
    empty = site.base / "no-pbs-bin"
    empty.mkdir()
    daemon = _daemon(site, "--once", env={"PATH": str(empty)})
    assert daemon.wait(60) == ExitCode.PREFLIGHT_FAILED
    assert "'qsub' not found" in _log_text(site)
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
