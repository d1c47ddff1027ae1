"""Trusted transformations and the payload's environment (compass_pilot.trusted)."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from compass_pilot import trusted
from compass_pilot.config import JobScriptSection, PayloadSection, SiteConfig, validate
from compass_pilot.errors import ConfigError, ErrorCode
from compass_pilot.experiment import compass
from compass_pilot.job import JobSpec
from compass_pilot.payload import run_payload
from tests.core.jobdicts import reco_job_dict


def _job(**overrides: object) -> JobSpec:
    return JobSpec.from_panda(reco_job_dict(**overrides))


def _release(tmp_path: Path) -> PayloadSection:
    script = tmp_path / "sw" / "slt2-phast7" / "bin" / "reco.sh"
    script.parent.mkdir(parents=True)
    script.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\necho End of Job\n')
    script.chmod(0o755)
    return PayloadSection(release_root=str(tmp_path / "sw"), scripts=[JobScriptSection("reco", "bin/reco.sh")])


def test_shell_metacharacters_in_job_pars_stay_literal_arguments(tmp_path: Path) -> None:
    policy = _release(tmp_path)
    marker = tmp_path / "PWNED"
    job = _job(transformation="reco.sh", jobPars=f"'; touch {marker}' '$(touch {marker})' '`touch {marker}`'")
    cmd, env = compass.payload_command(job, tmp_path, {}, policy)
    result = run_payload(cmd, tmp_path / "work", env)
    assert result.exit_code == 0
    assert not marker.exists()
    lines = (tmp_path / "work" / "payload.stdout").read_text().splitlines()
    assert lines[:3] == [f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"transformation": "touch /tmp/PWNED; echo"}, "transformation"),
        ({"transformation": "/bin/sh"}, "transformation"),
        ({"transformation": "reco.sh", "processingType": "merge_mdst"}, "transformation"),  # other job type
        ({"transformation": "reco.sh", "swRelease": ".."}, "swRelease"),
        ({"transformation": "reco.sh", "swRelease": "../../etc"}, "swRelease"),
        ({"transformation": "https://evil.example/trf.sh"}, "transformation"),
    ],
)
def test_anything_unlisted_fails_with_1346(tmp_path: Path, overrides: dict, field: str) -> None:
    policy = _release(tmp_path)
    with pytest.raises(trusted.TransformationNotAllowed) as err:
        compass.payload_command(_job(**overrides), tmp_path, {}, policy)
    assert err.value.code == ErrorCode.TRANSFORM_NOT_ALLOWED == 1346 and err.value.field == field


def test_demo_can_be_switched_off(tmp_path: Path) -> None:
    with pytest.raises(trusted.TransformationNotAllowed):
        compass.payload_command(_job(), tmp_path, {}, PayloadSection(allow_demo=False))


def test_script_link_leaving_the_release_is_refused(tmp_path: Path) -> None:
    policy = _release(tmp_path)
    (tmp_path / "sw" / "slt2-phast7" / "bin" / "reco.sh").unlink()
    (tmp_path / "sw" / "slt2-phast7" / "bin" / "reco.sh").symlink_to("/bin/sh")
    with pytest.raises(trusted.TransformationNotAllowed, match="leaves release"):
        compass.payload_command(_job(transformation="reco.sh"), tmp_path, {}, policy)


@pytest.fixture
def trf_server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "served"
    (root / "trf").mkdir(parents=True)
    (root / "trf" / "run.sh").write_text("#!/bin/sh\necho downloaded $1\n")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(root), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_url_transformation_only_under_an_allowed_prefix(tmp_path: Path, trf_server: str) -> None:
    policy = PayloadSection(url_prefixes=[trf_server + "trf/"])
    work = tmp_path / "work"
    work.mkdir()
    cmd, env = compass.payload_command(_job(transformation=trf_server + "trf/run.sh", jobPars="x"), work, {}, policy)
    assert cmd[0] == str(work / "trf.run.sh") and os.stat(cmd[0]).st_mode & 0o777 == 0o700
    assert run_payload(cmd, work, env).exit_code == 0
    assert (work / "payload.stdout").read_text() == "downloaded x\n"
    for url in (trf_server + "other/run.sh", trf_server + "trf/../other.sh", trf_server + "trf/run.sh?x=1"):
        with pytest.raises(trusted.TransformationNotAllowed):
            compass.payload_command(_job(transformation=url), work, {}, policy)


def test_bad_url_prefix_in_site_config_is_an_error() -> None:
    config = SiteConfig()
    config.payload.url_prefixes = ["https://example.org"]  # would also allow https://example.org.evil/
    with pytest.raises(ConfigError, match=r"payload\.url_prefixes"):
        validate(config)


def test_payload_env_is_an_allow_list_without_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANDA_AUTH_TOKEN", "secret-token")
    monkeypatch.setenv("OIDC_AUTH_TOKEN", "/tmp/token-file")
    monkeypatch.setenv("X509_USER_PROXY", "/tmp/x509up")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    monkeypatch.setenv("SOME_PILOT_SETTING", "x")
    calib = {"COMPASS_CALIB_DSN": "/db", "LD_PRELOAD": "/tmp/evil.so", "BASH_ENV": "/tmp/evil.sh"}
    env = compass.payload_env(_job(), tmp_path, calib, PayloadSection(env_allow=["LD_PRELOAD", "PANDA_AUTH_TOKEN"]))
    for name in (
        "PANDA_AUTH_TOKEN",
        "OIDC_AUTH_TOKEN",
        "X509_USER_PROXY",
        "LD_PRELOAD",
        "BASH_ENV",
        "SOME_PILOT_SETTING",
    ):
        assert name not in env
    assert env["COMPASS_CALIB_DSN"] == "/db" and env["PATH"] == os.environ["PATH"]
    allowed = compass.payload_env(_job(), tmp_path, {}, PayloadSection(pass_credentials=True))
    assert allowed["X509_USER_PROXY"] == "/tmp/x509up" and allowed["PANDA_AUTH_TOKEN"] == "secret-token"
