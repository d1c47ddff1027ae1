"""Preflight: each broken part named in one line with its exit code, before any getJob."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compass_pilot.config import load_site_config
from compass_pilot.exitcodes import ExitCode
from compass_pilot.preflight import PreflightError, check_batch, check_daemon, check_grid, check_workdir, probe_batch

FAKEPBS = Path(__file__).resolve().parents[1] / "harvester" / "fakepbs"


def _proxy(tmp_path: Path, hours: float) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=30)).not_valid_after(now + datetime.timedelta(hours=hours))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = tmp_path / f"x509up_{hours}"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RADICAL_BASE", str(tmp_path / "radical"))
    monkeypatch.delenv("X509_USER_PROXY", raising=False)
    config = load_site_config(None)
    config.site.workdir = str(tmp_path / "work")
    config.hpc.shared_dir = str(tmp_path / "hpc")
    config.hpc.batch_timeout = 30
    return config


def test_work_dir_that_cannot_exist(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError, match="not writable") as err:
        check_workdir(tmp_path / "file" / "work", 1)
    assert err.value.exit_code == ExitCode.PREFLIGHT_FAILED


def test_work_dir_without_room(tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match="MB free, need"):
        check_workdir(tmp_path, 1 << 40)


def test_missing_submit_command(site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site.hpc.batch_url = "pbspro://localhost"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PreflightError, match="'qsub' not found on PATH") as err:
        check_batch(site)
    assert "\n" not in str(err.value)


def test_adaptor_not_importable(site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "radical.saga", None)  # import raises ImportError
    with pytest.raises(PreflightError, match=r"radical\.saga") as err:
        check_batch(site)
    assert err.value.exit_code == ExitCode.MISSING_DEPENDENCY


def test_unreachable_batch_host(site) -> None:
    site.hpc.batch_url = "slurm+ssh://unreachable.invalid"
    with pytest.raises(PreflightError, match=r"job service slurm\+ssh://unreachable\.invalid") as err:
        check_batch(site)
    assert err.value.exit_code == ExitCode.PREFLIGHT_FAILED and "\n" not in str(err.value)


def test_job_service_that_opens_passes(site) -> None:
    site.hpc.batch_url = "fork://localhost"
    check_daemon(site)  # work dir, no proxy configured, fork service opens


def test_proxy_shorter_than_the_longest_queue(site, tmp_path: Path) -> None:
    site.panda.x509_proxy = str(_proxy(tmp_path, hours=5))  # the long queue runs 18 h
    with pytest.raises(PreflightError, match="h left, the jobs may need") as err:
        check_daemon(site)
    assert err.value.exit_code == ExitCode.NO_VALID_PROXY
    check_grid(site)  # a grid pilot needs only its minimum before getJob


def test_expired_proxy_from_the_environment(site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X509_USER_PROXY", str(_proxy(tmp_path, hours=-1)))
    with pytest.raises(PreflightError, match="expired") as err:
        check_grid(site)
    assert err.value.exit_code == ExitCode.NO_VALID_PROXY


def test_proxy_under_the_warning_time_warns(site, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site.panda.x509_proxy = str(_proxy(tmp_path, hours=30))
    site.panda.proxy_warn_hours = 48
    check_daemon(site)
    assert any("expires in" in r.message for r in caplog.records)


# -- the fast probe that gates a daemon's getJob ----------------------------------------------
def test_probe_of_fork_passes_without_opening_a_job_service(site) -> None:
    from harvester_plugins import saga_backend

    site.hpc.batch_url = "fork://localhost"
    saga_backend.drop_service(site.hpc.batch_url)  # an earlier test's
    assert probe_batch(site) is True
    assert site.hpc.batch_url not in saga_backend.open_services()  # the probe asks the system, not radical.saga


def test_probe_of_fork_without_its_shell(site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.hpc.batch_url = "fork://localhost"
    monkeypatch.setenv("COMPASS_SAGA_SHELL", "/nonexistent/bash")  # what the broker's radical.saga would start
    with pytest.raises(PreflightError, match="shell /nonexistent/bash") as err:
        probe_batch(site)
    assert err.value.exit_code == ExitCode.PREFLIGHT_FAILED


def test_probe_leaves_a_tunnel_to_the_full_check(site) -> None:
    site.hpc.batch_url = "slurm+ssh://unreachable.invalid"
    assert probe_batch(site) is False  # nothing local to ask: the caller opens the job service


def test_probe_names_a_missing_submit_command(site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site.hpc.batch_url = "slurm://localhost"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PreflightError, match="'sbatch' not found on PATH") as err:
        probe_batch(site)
    assert err.value.exit_code == ExitCode.PREFLIGHT_FAILED


def test_probe_without_the_adaptor(site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "radical.saga", None)
    with pytest.raises(PreflightError, match=r"radical\.saga") as err:
        probe_batch(site)
    assert err.value.exit_code == ExitCode.MISSING_DEPENDENCY


def test_probe_of_a_pbs_server_up_then_down(site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PBS cannot run here: the fake commands answer ``qstat -Q`` as a server does, then as a down one."""
    import os

    state = tmp_path / "fakepbs"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{FAKEPBS}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKEPBS_DIR", str(state))
    site.hpc.batch_url = "pbspro://localhost"
    assert probe_batch(site) is True
    (state / "server_down").touch()
    with pytest.raises(PreflightError, match=r"did not answer: qstat -Q exited 111: .*cannot connect") as err:
        probe_batch(site)
    assert err.value.exit_code == ExitCode.BATCH_UNREACHABLE and "\n" not in str(err.value)
