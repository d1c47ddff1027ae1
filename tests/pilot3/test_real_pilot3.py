"""The real PanDA pilot 3.7.0.36 (PyPI sdist, unmodified) takes jobs from our dispatcher.

Success, a payload failure (1305) and a server kill (1144) each end in the right final
state with the right error code.  ``scripts/run_pilot3.py`` does the running (own PID
namespace, ``PILOT_NOKILL=1``, a local information system); this test only provides
the sdist — from the cache ``scripts/install_deps.sh`` fills, else pip — and checks the
outcome.  pilot3 waits ~2 min by itself after a failed job, so the three run side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = "3.7.0.36"
SDIST = f"panda-pilot-{VERSION}.tar.gz"


def cached_sdist(tmp_path: Path) -> Path:
    cache = Path(os.environ.get("COMPASS_PILOT_CACHE", Path.home() / ".cache" / "compass-pilot"))
    if not (cache / SDIST).exists():
        cache.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run([*pip, f"panda-pilot=={VERSION}", "-d", str(cache)], capture_output=True, timeout=300)
        if done.returncode != 0:
            pytest.skip(f"panda-pilot {VERSION} sdist neither cached in {cache} nor downloadable (install_deps.sh)")
    with tarfile.open(cache / SDIST) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / f"panda-pilot-{VERSION}"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux) for a PID namespace")
def test_pilot3_ok_fail_kill_against_our_dispatcher(tmp_path: Path) -> None:
    src = cached_sdist(tmp_path)
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_pilot3.py"), "--pilot-src", str(src), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    results = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    assert json.loads(out.read_text())["version"] == VERSION
    ok, fail, kill = results["ok"], results["fail"], results["kill"]
    assert (ok["state"], ok["error_code"], ok["pilot_rc"]) == ("finished", None, 0), done.stdout
    assert ok["states_sent"] == ["starting", "running", "finished"]
    assert (fail["state"], fail["error_code"]) == ("failed", 1305), done.stdout
    assert (kill["state"], kill["error_code"]) == ("failed", 1144), done.stdout
    assert kill["states_sent"][-1] == "failed" and kill["states_sent"].count("failed") == 1
    for r in results.values():  # the pilot names itself and its node in its updates
        assert r["node"] and r["requests"]["getJob"] == 1
    assert done.returncode == 0, done.stdout
