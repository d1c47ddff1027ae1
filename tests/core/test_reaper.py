"""One reaper loop for many payloads (the node agent's way): real processes, pidfds and the fallback."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from compass_pilot.errors import ErrorCode
from compass_pilot.payload import PayloadProcess
from compass_pilot.reaper import PayloadReaper


def _env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"]}


def _run_all(reaper: PayloadReaper, limit: float = 30) -> None:
    """Drive the loop as the node agent does until every payload is reaped."""
    import time

    deadline = time.monotonic() + limit
    while reaper.pending:
        assert time.monotonic() < deadline, "payloads not reaped in time"
        reaper.wait(1.0)


@pytest.fixture(params=["pidfd", "thread"])
def reaper(request, monkeypatch) -> PayloadReaper:
    if request.param == "thread":  # a kernel without pidfd_open: the waitid(WNOWAIT) notifier
        monkeypatch.delattr(os, "pidfd_open")
    r = PayloadReaper()
    yield r
    r.close()


def test_one_loop_reaps_every_payload_with_its_own_status(reaper: PayloadReaper, tmp_path: Path) -> None:
    scripts = {"ok": "echo hi", "rc7": "exit 7", "segv": "kill -SEGV $$", "slow": "sleep 0.5"}
    procs = {
        name: PayloadProcess(["bash", "-c", s], tmp_path / name, _env(), wrap=False).start(reaper)
        for name, s in scripts.items()
    }
    _run_all(reaper)
    results = {name: proc.wait(0) for name, proc in procs.items()}
    assert results["ok"].exit_code == 0 and results["ok"].error() is None
    assert results["rc7"].exit_code == 7 and results["rc7"].error()[0] == ErrorCode.PAYLOAD_FAILED
    assert results["segv"].signal == signal.SIGSEGV and results["segv"].exit_code is None
    assert results["slow"].ok and results["slow"].wall_seconds >= 0.5
    assert (tmp_path / "ok" / "payload.stdout").read_text() == "hi\n"
    assert not (tmp_path / "rc7" / "payload.exitcode").exists()  # no wrapper: one process per payload


def test_walltime_and_kill_grace_run_in_the_loop(reaper: PayloadReaper, tmp_path: Path) -> None:
    stubborn = "trap '' TERM; sleep 30"  # only the SIGKILL after the grace period ends it
    timed = PayloadProcess(["bash", "-c", stubborn], tmp_path / "a", _env(), walltime=1, grace=1, wrap=False)
    killed = PayloadProcess(["sleep", "30"], tmp_path / "b", _env(), grace=1, wrap=False)
    timed.start(reaper)
    killed.start(reaper)
    killed.kill("server")
    _run_all(reaper)
    assert timed.wait(0).killed_by == "walltime" and timed.wait(0).error()[0] == ErrorCode.BATCH_TIME_LIMIT
    assert killed.wait(0).error()[0] == ErrorCode.KILLED_BY_SERVER


def test_watched_fd_wakes_the_loop(reaper: PayloadReaper, tmp_path: Path) -> None:
    rfd, wfd = os.pipe()
    try:
        reaper.watch(rfd, "wake")
        proc = PayloadProcess(["sleep", "30"], tmp_path, _env(), grace=1, wrap=False).start(reaper)
        os.write(wfd, b"x")
        ended, ready = reaper.wait(20)
        assert ended == [] and ready == ["wake"]
        os.read(rfd, 1)
        proc.kill("pilot", grace=0)
        _run_all(reaper)
        assert proc.wait(0).killed_by == "pilot"
    finally:
        os.close(rfd)
        os.close(wfd)


def test_spawned_payload_is_a_clean_session_leader_in_its_workdir(tmp_path: Path) -> None:
    """The node agent's launch (posix_spawn): what Popen gave — workdir, own session, stdin from
    /dev/null, logs appended, SIGPIPE not ignored, the payload's PATH — without the agent's cwd changing."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "only-in-payload-path"
    tool.write_text("#!/bin/sh\necho found\n")
    tool.chmod(0o755)
    script = (
        'pwd; ps -o sid= -p $$; read x && echo got-input; grep -E "^SigIgn" /proc/self/status; only-in-payload-path'
    )
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "payload.stdout").write_text("earlier\n")
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    here = os.getcwd()
    r = PayloadReaper()
    try:
        proc = PayloadProcess(["bash", "-c", script], workdir, env, wrap=False).start(r)
        assert os.getcwd() == here
        _run_all(r)
    finally:
        r.close()
    assert proc.wait(0).exit_code == 0
    lines = (workdir / "payload.stdout").read_text().splitlines()
    assert lines[0] == "earlier" and lines[1] == str(workdir)
    assert int(lines[2]) == proc.pid  # leads its own session (so killpg reaches its whole tree)
    assert "got-input" not in lines  # stdin is /dev/null
    sigign = int(lines[3].split()[1], 16)
    assert not sigign & (1 << (signal.SIGPIPE - 1))  # Python ignores SIGPIPE; the payload must not
    assert lines[4] == "found"  # looked up in the payload's PATH, not the agent's


def test_spawn_of_a_missing_command_raises_oserror(tmp_path: Path) -> None:
    r = PayloadReaper()
    try:
        with pytest.raises(OSError):
            PayloadProcess(["no-such-command-here"], tmp_path, _env(), wrap=False).start(r)
        assert r.pending == 0
    finally:
        r.close()
