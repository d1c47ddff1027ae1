"""What a compromised dispatcher (or anyone who could submit) sends a pilot: nothing of it runs.

A real grid pilot, authenticated with a token against the secured dispatcher, takes
hostile jobs: shell in the transformation, shell in jobPars, path traversal in every file
name a job carries, a download from an unlisted URL.  Each job fails with its own code
before anything executes; a marker file the attack would create never appears and
nothing is written outside the pilot's work root.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import requests

import calibdb
from compass_pilot.config import JobScriptSection, PayloadSection, SiteConfig, load_site_config
from compass_pilot.errors import CalibDBError, ErrorCode
from compass_pilot.modes.grid import GridPilot
from compass_pilot.panda.client import PandaClient
from compass_pilot.panda.dispatcher import connect, insert_jobs
from tests.security.conftest import Secured, record


def _site(s: Secured, base: Path, token_file: Path) -> SiteConfig:
    site = load_site_config(None)
    site.site.workdir = str(base / "work")
    site.panda.url = s.url
    site.panda.ca_dir = str(s.pki.ca)
    site.panda.token_file = str(token_file)
    site.panda.retries = 1
    site.storage.input_root = str(base / "castor")
    site.storage.output_root = str(base / "eos")
    site.calibdb.snapshot = str(calibdb.demo_snapshot("sqlite", base / "calib"))
    site.calibdb.scratch_dir = str(base / "scratch")
    site.grid.heartbeat_interval = 1
    site.grid.sample_interval = 1
    site.grid.payload_grace = 1
    site.grid.max_jobs = 0  # until the server has none
    release = base / "sw" / "slt2-phast7" / "bin"
    release.mkdir(parents=True)
    script = release / "reco.sh"
    # the trusted script prints its arguments one per line and what it sees of the pilot's secrets
    script.write_text(
        '#!/bin/sh\nfor a in "$@"; do printf "arg:%s\\n" "$a"; done\n'
        'printf "token:%s proxy:%s\\n" "$PANDA_AUTH_TOKEN" "$X509_USER_PROXY"\n'
    )
    script.chmod(0o755)
    site.payload = PayloadSection(release_root=str(base / "sw"), scripts=[JobScriptSection("reco", "bin/reco.sh")])
    return site


def _insert(db: str, jobs: list[dict[str, Any]]) -> list[int]:
    conn = connect(db)
    conn.execute("BEGIN IMMEDIATE")
    ids = insert_jobs(conn, [{"processingType": "reco", "swRelease": "slt2-phast7", **j} for j in jobs], 1)
    conn.execute("COMMIT")
    conn.close()
    return ids


def _files_outside(base: Path, marker: Path) -> set[str]:
    """Everything under base except the pilot's own work root, scratch, journals and the dispatcher DB."""
    skip = ("work", "scratch", "calib", "panda.sqlite", "dispatcher.key")
    found = set()
    for path in base.rglob("*"):
        rel = path.relative_to(base).as_posix()
        if not rel.split("/")[0].startswith(skip):
            found.add(rel)
    if marker.exists():
        found.add(str(marker))
    return found


HOSTILE: list[tuple[str, dict[str, Any], int]] = [
    ("transformation 'touch MARKER; echo'", {"transformation": "touch {m}; echo"}, ErrorCode.TRANSFORM_NOT_ALLOWED),
    ("transformation /bin/sh -c", {"transformation": "/bin/sh", "jobPars": "-c 'touch {m}'"}, 1346),
    ("transformation from an unlisted URL", {"transformation": "http://127.0.0.1:9/x.sh?{m}"}, 1346),
    ("swRelease '../../..' for the release script", {"transformation": "reco.sh", "swRelease": "../../.."}, 1346),
    (
        "demo jobPars with '; touch MARKER'",
        {"transformation": "compass-demo-reco", "jobPars": "--run 1; touch {m}"},
        ErrorCode.BAD_JOB_SPEC,
    ),
    ("inFiles '../../MARKER'", {"transformation": "reco.sh", "inFiles": "../../{n}"}, 1008),
    ("outFiles '../MARKER'", {"transformation": "reco.sh", "outFiles": "../{n}"}, 1008),
    ("logFile '/abs/MARKER'", {"transformation": "reco.sh", "outFiles": "{m}", "logFile": "{m}"}, 1008),
    (
        "realDatasetsIn '../..'",
        {"transformation": "reco.sh", "inFiles": "a.raw", "realDatasetsIn": "../..", "GUID": "g"},
        1008,
    ),
    (
        "destinationDblock '../../..'",
        {"transformation": "reco.sh", "outFiles": "a.root", "destinationDblock": "../../.."},
        1008,
    ),
]


def test_hostile_jobs_fail_before_anything_runs(
    secured: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = tmp_path / "PWNED"
    site = _site(secured, tmp_path, secured.token_file("pilot-a", tmp_path))
    before = _files_outside(tmp_path, marker)
    jobs = [{k: v.format(m=marker, n=marker.name) for k, v in spec.items()} for _, spec, _ in HOSTILE]
    for i, job in enumerate(jobs):
        job["currentPriority"] = 100 - i  # handed out in table order
    ids = _insert(secured.db, jobs)
    # metacharacters given to a trusted script are its literal arguments, never a shell's
    shell = f"'; touch {marker}' '$(touch {marker})' '`touch {marker}`' && touch {marker}"
    (literal,) = _insert(secured.db, [{"transformation": "reco.sh", "jobPars": shell, "currentPriority": 1}])
    monkeypatch.setenv("PANDA_AUTH_TOKEN", secured.tokens["pilot-a"])
    monkeypatch.setenv("X509_USER_PROXY", str(secured.pki.proxy))
    pilot = GridPilot(site, PandaClient(site.panda, site.site))
    summary = pilot.run()
    assert len(summary.jobs) == len(HOSTILE) + 1
    after = _files_outside(tmp_path, marker)
    for (attack, _, code), panda_id in zip(HOSTILE, ids, strict=True):
        job = secured.dispatcher.job(panda_id)
        refused = job["status"] == "failed" and job["error_code"] == code
        assert refused, (attack, job["status"], job["error_code"], job["error_diag"])
        assert not (tmp_path / "work" / f"PandaJob_{panda_id}_1" / "payload.stdout").exists()  # never started
        record(attack, refused=refused, executed=marker.exists(), changed=after != before)
    assert not marker.exists() and after == before
    out = (tmp_path / "work" / f"PandaJob_{literal}_1" / "payload.stdout").read_text()
    assert out.splitlines()[:4] == [
        f"arg:; touch {marker}",
        f"arg:$(touch {marker})",
        f"arg:`touch {marker}`",
        "arg:&&",
    ]
    # the pilot's credentials never reached the payload, nor the logs
    assert "token: proxy:" in out and secured.tokens["pilot-a"] not in out
    assert secured.tokens["pilot-a"] not in caplog.text
    record("jobPars shell metacharacters to a trusted script", refused=True, executed=marker.exists(), changed=False)
    record("pilot token / proxy path leaking into the payload env", refused=True, executed=False, changed=False)


def test_secrets_not_on_the_page_and_files_are_private(secured: Secured, tmp_path: Path) -> None:
    site = _site(secured, tmp_path, secured.token_file("pilot-a", tmp_path))
    client = PandaClient(site.panda, site.site)
    client.get_jobs(1)
    client.close()
    admin = {"Authorization": f"Bearer {secured.tokens['admin']}"}
    page = requests.get(f"{secured.url}/", headers=admin, verify=str(secured.pki.ca), timeout=10).text
    summary = requests.get(f"{secured.url}/api/summary", headers=admin, verify=str(secured.pki.ca), timeout=10).text
    for secret in (secured.tokens["pilot-a"], secured.tokens["admin"], secured.key_file.read_text().strip()):
        assert secret not in page and secret not in summary
    modes = {p.name: p.stat().st_mode & 0o777 for p in (Path(secured.db), secured.key_file)}
    assert modes == {"panda.sqlite": 0o600, "dispatcher.key": 0o600}
    record("secrets on the operator page / world-readable DB or key", refused=True, executed=False, changed=False)


def test_planted_calibdb_state_is_refused(tmp_path: Path) -> None:
    """Another user (or a job) plants the node's DB dir with a state whose env preloads a library."""
    marker = tmp_path / "PWNED"
    cfg = load_site_config(None).calibdb
    cfg.scratch_dir = str(tmp_path / "scratch")
    cfg.snapshot = str(calibdb.demo_snapshot("sqlite", tmp_path / "calib"))
    db = calibdb.open_calibdb(cfg)
    db.dir.mkdir(parents=True, mode=0o700)
    endpoint = {"backend": "sqlite", "dsn": str(db.dir / "calib.sqlite")}
    endpoint["env"] = {"COMPASS_CALIB_BACKEND": "sqlite", "LD_PRELOAD": str(marker)}
    state = json.dumps({"pid": None, "users": [], "endpoint": endpoint})
    (db.dir / "state.json").write_text(state)
    os.chown(db.dir / "state.json", 65534, 65534)
    planted = (db.dir / "state.json").read_text()
    with pytest.raises(CalibDBError, match="possibly planted") as err:
        db.start()
    assert err.value.code == ErrorCode.CALIBDB_UNAVAILABLE and db.endpoint is None
    os.chown(db.dir / "state.json", os.geteuid(), os.getegid())
    with pytest.raises(CalibDBError, match="non-connection keys LD_PRELOAD"):
        calibdb.open_calibdb(cfg).start()
    changed = (db.dir / "state.json").read_text() != planted
    assert not changed and not marker.exists()
    record("planted calibdb state.json (LD_PRELOAD in env)", refused=True, executed=marker.exists(), changed=changed)


def test_planted_job_set_is_refused(tmp_path: Path) -> None:
    """A job set on the shared file system that someone else wrote (or could rewrite) is not run."""
    from hpc.jobset import read_jobset

    marker = tmp_path / "PWNED"
    path = tmp_path / "jobset.json"
    path.write_text(json.dumps({"version": 1, "payload": {"commands": ["sh"]}, "node_jobs": []}))
    results = []
    for owner, mode in ((65534, 0o600), (os.geteuid(), 0o666)):
        os.chown(path, owner, os.getegid())
        path.chmod(mode)
        with pytest.raises(ValueError, match="refusing a job set") as err:
            read_jobset(path)
        results.append("refusing" in str(err.value))
    assert results == [True, True] and not marker.exists()
    record("planted / world-writable job set on the shared dir", refused=True, executed=False, changed=False)


def test_daemon_refuses_a_shared_dir_others_can_write(tmp_path: Path) -> None:
    """Job sets and node reports live in hpc.shared_dir: a dir others can write is refused at start."""
    from compass_pilot.errors import ConfigError
    from compass_pilot.filemodes import check_own_dir

    shared = tmp_path / "hpc"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match=r"hpc\.shared_dir"):
        check_own_dir(shared, "hpc.shared_dir")
    shared.chmod(0o700)
    os.chown(shared, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        check_own_dir(shared, "hpc.shared_dir")
    record("shared dir writable by others / not ours (daemon)", refused=True, executed=False, changed=False)
