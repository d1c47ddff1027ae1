"""The batch broker: the daemon's backend served by a child process that holds radical.saga (fork://, real)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest

from compass_pilot.config import load_site_config
from compass_pilot.exitcodes import ExitCode
from compass_pilot.job import JobSpec
from compass_pilot.preflight import PreflightError
from harvester_plugins import batch_broker
from harvester_plugins.batch_broker import BrokerBatchBackend
from harvester_plugins.saga_backend import BatchError
from hpc.packing import plan_submissions
from tests.core.jobdicts import reco_job_dict

ROOT = Path(__file__).resolve().parents[2]
ENDED = ("finished", "failed", "cancelled", "missed")


def _site(tmp_path: Path, url: str = "fork://localhost", **hpc: object):
    hpc.setdefault("jobset_wait", 1.0)  # the agents give up on the missing job set after 1 s: a failed worker
    site = load_site_config(ROOT / "site_configs" / "local.yaml")
    return dataclasses.replace(site, hpc=dataclasses.replace(site.hpc, batch_url=url, shared_dir=str(tmp_path), **hpc))


def _wait_ended(backend: BrokerBatchBackend, batch_id: str, subdir: Path) -> str:
    deadline = time.monotonic() + 30
    status = backend.status(batch_id, subdir)
    while status not in ENDED and time.monotonic() < deadline:
        time.sleep(0.5)
        status = backend.status(batch_id, subdir)
    return status


def test_fork_submission_through_the_broker(tmp_path: Path) -> None:
    site = _site(tmp_path)
    (sub,) = plan_submissions([JobSpec.from_panda(reco_job_dict(7))], site.hpc)
    subdir = tmp_path / "sub-1"
    backend = BrokerBatchBackend(site)
    try:
        backend.preflight()
        assert backend.broker_pid not in (None, os.getpid())
        batch_id = backend.submit(sub, subdir, subdir / "missing-jobset.json")
        body = (subdir / "worker.sh").read_text()  # written by the broker's SagaSubmitter
        assert "hpc.node_agent" in body and "--jobset" in body and "missing-jobset.json" in body
        assert "--jobset-wait 1" in body  # hpc.jobset_wait reaches the agents' command line
        assert _wait_ended(backend, batch_id, subdir) == "failed"  # no job set: a failed worker
        assert backend.ended(subdir)  # the wrapper's exit marker, read here without the broker
        backend.kill(batch_id, subdir)  # killing an ended job is fine
        assert backend.starts == 1  # one broker served every call
    finally:
        backend.close()
    assert backend.broker_pid is None


def test_a_killed_broker_is_replaced_and_the_call_in_flight_fails_temporarily(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(batch_broker, "ANSWER_GRACE", 1.0)
    site = _site(tmp_path, batch_timeout=8.0)  # the broker bounds its calls (job service ~1 s to open)
    (sub,) = plan_submissions([JobSpec.from_panda(reco_job_dict(8))], site.hpc)
    subdir = tmp_path / "sub-2"
    backend = BrokerBatchBackend(site)
    try:
        batch_id = backend.submit(sub, subdir, subdir / "missing-jobset.json")
        first = backend.broker_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        # the dead broker is noticed, a new one answers: the batch job submitted before is still known
        assert _wait_ended(backend, batch_id, subdir) == "failed"
        assert backend.starts == 2 and backend.broker_pid not in (None, first)

        os.kill(backend.broker_pid, signal.SIGSTOP)  # wedged: no answer within batch_timeout + grace
        with pytest.raises(BatchError) as caught:
            backend.status(batch_id, subdir)
        assert caught.value.temporary
        assert backend.broker_pid is None  # killed, not left stuck
        assert backend.status(batch_id, subdir) == "failed" and backend.starts == 3
    finally:
        backend.close()


def test_errors_keep_their_types_across_the_pipe(tmp_path: Path) -> None:
    site = _site(tmp_path, "pbspro://localhost")
    empty = tmp_path / "no-pbs-bin"
    empty.mkdir()
    backend = BrokerBatchBackend(site)
    path = os.environ["PATH"]
    os.environ["PATH"] = str(empty)  # the broker starts with the daemon's environment: no qsub
    try:
        with pytest.raises(PreflightError, match="'qsub' not found") as caught:
            backend.preflight()
        assert caught.value.exit_code == ExitCode.PREFLIGHT_FAILED
        (sub,) = plan_submissions([JobSpec.from_panda(reco_job_dict(9))], site.hpc)
        with pytest.raises(BatchError):  # the submitter's verdict, with its temporary flag
            backend.submit(sub, tmp_path / "sub-3", tmp_path / "sub-3" / "jobset.json")
    finally:
        os.environ["PATH"] = path
        backend.close()


def test_bad_batch_url_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nosuch"):
        BrokerBatchBackend(_site(tmp_path, "nosuch://host"))


def test_probe_opens_the_job_service_ahead_and_a_failed_open_is_a_temporary_submit_error(tmp_path: Path) -> None:
    """The probe passes (fork: /bin/sh) while radical.saga's shell cannot start: the submission
    that waits for the open fails *temporarily* (the daemon keeps its jobs), then succeeds."""
    broken = tmp_path / "flaky-shell"  # the broker's shell: broken while the flag exists
    flag = tmp_path / "shell-broken"
    broken.write_text(f'#!/bin/sh\n[ -e {flag} ] && exit 1\nexec /bin/sh "$@"\n')
    broken.chmod(0o755)
    flag.touch()
    site = _site(tmp_path)
    (sub,) = plan_submissions([JobSpec.from_panda(reco_job_dict(10))], site.hpc)
    subdir = tmp_path / "sub-4"
    backend = BrokerBatchBackend(site)
    shell = os.environ.get("COMPASS_SAGA_SHELL")
    os.environ["COMPASS_SAGA_SHELL"] = str(broken)  # the broker starts with the daemon's environment
    try:
        backend.probe()
        with pytest.raises(BatchError) as caught:
            backend.submit(sub, subdir, subdir / "missing-jobset.json")
        assert caught.value.temporary and "job service" in str(caught.value)
        flag.unlink()  # the shell works again: the retry opens the service
        batch_id = backend.submit(sub, subdir, subdir / "missing-jobset.json")
        assert _wait_ended(backend, batch_id, subdir) == "failed"  # no job set: a failed worker
        assert backend.starts == 1  # the probe's broker served the submissions
    finally:
        if shell is None:
            os.environ.pop("COMPASS_SAGA_SHELL", None)
        else:
            os.environ["COMPASS_SAGA_SHELL"] = shell
        backend.close()


def test_serve_ends_quietly_when_the_daemon_is_gone() -> None:
    """The daemon exited while a request was answered: no BrokenPipeError traceback on the
    batch log, the broker just ends (it served the daemon's stdin; nobody reads its answers)."""
    import json
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    read_end, write_end = os.pipe()
    os.close(read_end)  # the daemon is gone
    requests = [json.dumps({"op": "status", "id": n}).encode() + b"\n" for n in (1, 2, 3)]
    try:
        assert batch_broker.serve(iter(requests), write_end) == 0
    finally:
        os.close(write_end)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
