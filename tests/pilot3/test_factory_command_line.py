"""A pilot factory launches ``compass-pilot grid`` exactly as it launches pilot3.

The arguments are the ones PanDAWMS/pilot-wrapper's ``runpilot2-wrapper.sh`` builds
(``pilot.py -q <queue> -i <tag> -j <label> <the factory's pilot arguments>``), with
``pilot.py`` replaced by us; our own settings come from ``COMPASS_SITE_CONFIG``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from compass_pilot.exitcodes import ExitCode
from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from tests.tasks import chunk_paths, reco_task

ROOT = Path(__file__).resolve().parents[2]


def wrapper_command(port: int) -> list[str]:
    """``pilot_cmd`` of runpilot2-wrapper.sh for ``-q COMPASS_Q -r COMPASS_R -s CERN …`` (it keeps -r/-s)."""
    factory_args = (
        f"-w generic --pilot-user generic --url http://127.0.0.1 -p {port} -d --harvester-submit-mode PULL"
        " --allow-same-user=False --job-type managed --resource-type SCORE -t --es-executor-type generic"
        " -l 86400 --no-pilot-log"
    )
    return ["grid", "-q", "COMPASS_Q", "-i", "PR", "-j", "managed", *factory_args.split()]


def run(
    args: list[str], site_file: Path | None, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GTAG": "http://f/1.out", **(extra_env or {})}
    env.pop("COMPASS_SITE_CONFIG", None)
    if site_file is not None:
        env["COMPASS_SITE_CONFIG"] = str(site_file)
    return subprocess.run(
        [sys.executable, "-m", "compass_pilot.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_the_wrapper_command_line_runs_unchanged(tmp_path: Path) -> None:
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60).start()
    try:
        port = int(dispatcher.url.rsplit(":", 1)[1])
        site = {
            "panda": {"retries": 1, "backoff": 0.1},
            "site": {"workdir": str(tmp_path / "work"), "min_free_mb": 1},
            "storage": {"copytool": "local", "input_root": str(tmp_path / "nowhere"), "output_root": str(tmp_path)},
        }
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site))
        # nothing to do: pilot3's "no jobs" exit code
        empty = run(wrapper_command(port), site_file, tmp_path)
        assert empty.returncode == ExitCode.NO_JOBS, empty.stderr[-1500:]
        assert "ignored" in empty.stderr and "--pilot-user" in empty.stderr  # the meaningless ones are logged
        # one job whose input is missing: taken, failed, reported with our pilot ID and the queue's names
        submit_task(db, reco_task(chunk_paths(1)))
        taken = run(wrapper_command(port), site_file, tmp_path)
        assert taken.returncode == ExitCode.ALL_JOBS_FAILED, taken.stderr[-1500:]
        (job,) = dispatcher.store.query("SELECT * FROM jobs")
        assert job["status"] == "failed" and job["pilot_id"].startswith("http://f/1.out|PR|compass-pilot")
        assert job["node"]
    finally:
        dispatcher.stop()


def test_dash_t_skips_the_proxy_check_as_in_pilot3(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"panda": {"url": "http://127.0.0.1:9", "retries": 1, "backoff": 0.1}}))
    missing = {"X509_USER_PROXY": str(tmp_path / "no-such-proxy")}
    checked = run(["grid", "-q", "Q"], site_file, tmp_path, extra_env=missing)
    assert checked.returncode == ExitCode.NO_VALID_PROXY, checked.stderr[-800:]
    skipped = run(["grid", "-q", "Q", "-t"], site_file, tmp_path, extra_env=missing)
    assert skipped.returncode == ExitCode.SERVER_UNREACHABLE, skipped.stderr[-800:]  # went on to the server


def test_old_site_yaml_option_still_loads_but_site_is_pilot3s(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"panda": {"url": "http://127.0.0.1:9", "retries": 1, "backoff": 0.1}}))
    out = run(["grid", "--site", str(site_file), "-q", "Q"], None, tmp_path)
    assert "use --site-config" in out.stderr
    assert out.returncode == ExitCode.SERVER_UNREACHABLE, out.stderr[-800:]
