"""``compass-pilot grid``'s exit code says what happened to the jobs it took."""

from __future__ import annotations

import pytest
import yaml

from compass_pilot.config import config_to_dict
from compass_pilot.exitcodes import ExitCode
from compass_pilot.panda.store import submit_task
from tests.cli.conftest import run_cli
from tests.grid.conftest import GridWorld, reco_task, world  # noqa: F401 - the fixture


@pytest.mark.parametrize(
    ("failing", "code", "line"),
    [(2, ExitCode.ALL_JOBS_FAILED, "2 of 2 jobs failed"), (1, ExitCode.SOME_JOBS_FAILED, "1 of 2 jobs failed")],
)
def test_failed_jobs_are_not_success(world: GridWorld, failing: int, code: int, line: str) -> None:  # noqa: F811
    chunks = world.chunks[:2]
    submit_task(world.db, reco_task(chunks, max_attempts=1, inject={c.raw_name: "fatal" for c in chunks[:failing]}))
    site = world.site(max_jobs=0)
    path = world.base / "site.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(site)))
    out = run_cli("grid", "--site-config", str(path), cwd=world.base)
    assert out.rc == code, out.stderr
    assert out.last_line == line and out.stdout.count("pilotErrorCode") == 2


def test_sigterm_mid_payload_is_143_and_the_job_is_reported(world: GridWorld) -> None:  # noqa: F811
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.cli.conftest import REPO

    chunk = world.chunks[0]
    submit_task(world.db, reco_task([chunk], max_attempts=1, inject={chunk.raw_name: "hang"}, max_walltime=3600))
    path = world.base / "site.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(world.site(max_jobs=1))))
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(world.base))
    pilot = subprocess.Popen([sys.executable, "-m", "compass_pilot.cli", "grid", "--site-config", str(path)], env=env,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while world.dispatcher.summary()["jobs_by_status"].get("running") != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        pilot.send_signal(signal.SIGTERM)
        assert pilot.wait(60) == ExitCode.INTERRUPTED_SIGTERM
    finally:
        pilot.kill()
    assert world.dispatcher.summary()["jobs_by_status"] == {"failed": 1}  # told PanDA before exiting
    assert "SIGTERM received: stopped" in pilot.stderr.read()
