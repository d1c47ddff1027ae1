"""`compass-pilot demo` end to end, as a user runs it: a real process, real pilots, real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(tmp_path))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "compass_pilot.cli",
            "--log-level",
            "WARNING",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_default_demo_finishes_every_job(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--chunks", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "jobs by status: finished 20" in done.stdout and "DEMO OK" in done.stdout
    out = done.stdout
    # the page's URL while the dispatcher is up, progress as it goes, where the files are left
    assert (
        out.index("monitor page http://127.0.0.1:") < out.index("finished, 0 failed") < out.index("dispatcher stopped")
    )
    assert "20/20 finished, 0 failed, 0 running, 0 waiting" in out
    assert f"files left in {tmp_path / 'demo'}" in out and "http://" not in out[out.index("dispatcher stopped") :]
    assert len(list((tmp_path / "demo/eos/P09/mDST.chunks").iterdir())) == 20


@pytest.mark.parametrize("args", [("--calibdb", "mariadb", "--chunks", "6"), ("--chain", "--xrootd")])
def test_demo_variants(tmp_path: Path, args: tuple[str, ...]) -> None:
    done = _demo(tmp_path, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DEMO OK" in done.stdout
    if "--chain" in args:
        assert done.stdout.count("dump_cross_checked=passed") == 2
