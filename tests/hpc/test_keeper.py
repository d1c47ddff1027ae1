"""The node agent's keeper: payload exit codes survive the agent's death (real processes).

The agent runs as ``python -m hpc.node_agent`` with the launcher's rank in its
environment (as under hydra's mpiexec); the test kills the AGENT — the keeper's child —
with SIGKILL while its payloads run, and checks that every job still gets the outcome
its payload earned, written by the keeper, and that the daemon is woken for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from compass_pilot.config import HPCSection, SiteConfig, config_to_dict
from compass_pilot.errors import ErrorCode
from compass_pilot.exitcodes import ExitCode
from harvester_plugins import jobfiles
from hpc import notify
from hpc.jobset import write_jobset
from hpc.packing import plan_submissions
from tests.hpc.conftest import shell_job

EVENTS = "echo 7 events had been written to miniDST; echo End of Job"


def _wait_for(predicate, timeout: float, what: str) -> None:
    """Test-side bounded wait (the product code never polls; tests may)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _jobset(tmp_path: Path, scripts: dict[int, str], target: notify.NotifyTarget | None = None) -> Path:
    hpc = HPCSection(max_jobs=len(scripts), max_nodes=1, slots_per_node=len(scripts))
    (sub,) = plan_submissions([shell_job(pid, s) for pid, s in scripts.items()], hpc)
    site = SiteConfig()
    site.payload.commands = ["sh"]
    site.calibdb.scratch_dir = str(tmp_path / "scratch")
    workdirs = {pid: str(tmp_path / f"PandaJob_{pid}_1") for pid in scripts}
    return write_jobset(tmp_path / "jobset.json", sub, config_to_dict(site), workdirs, str(tmp_path), notify=target)


def _start_agent(tmp_path: Path, jobset: Path, *extra: str, **env_extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PMI_RANK="0", PMI_SIZE="1", **env_extra)
    cmd = [sys.executable, "-m", "hpc.node_agent", "--jobset", str(jobset), "--fake-nodes", "--term-grace", "1", *extra]
    with open(tmp_path / "agent.log", "wb") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _the_agent(keeper: subprocess.Popen[bytes]) -> psutil.Process:
    """The agent is the keeper's child running python (the payloads are the agent's children)."""
    kids = [p for p in psutil.Process(keeper.pid).children() if "hpc.node_agent" in " ".join(p.cmdline())]
    assert len(kids) == 1, kids
    return kids[0]


def _outcome(tmp_path: Path, pid: int) -> jobfiles.JobOutcome | None:
    return jobfiles.read_outcome(tmp_path / f"PandaJob_{pid}_1", pid)


def _cleanup(proc: subprocess.Popen[bytes], tmp_path: Path) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    for marker in (tmp_path / "reports").glob("*.started"):
        try:
            os.killpg(int(marker.read_text().split()[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def test_agent_killed_its_payloads_still_get_truthful_outcomes(tmp_path: Path) -> None:
    listener = notify.NotifyListener("127.0.0.1", 0)
    key = notify.new_key()
    listener.add("s", key)
    go = tmp_path / "go"  # the payloads end only once the test has killed the agent
    wait_go = f"while [ ! -e {go} ]; do sleep 0.1; done"
    scripts = {1: f"{wait_go}; {EVENTS}", 2: f"{wait_go}; exit 3", 3: f"{wait_go}; kill -SEGV $$"}
    jobset = _jobset(tmp_path, scripts, notify.NotifyTarget("127.0.0.1", listener.port, "s", key))
    keeper = _start_agent(tmp_path, jobset)
    try:
        _wait_for(lambda: len(list((tmp_path / "reports").glob("*.started"))) == 3, 30, "3 started markers")
        agent = _the_agent(keeper)
        assert psutil.Process(keeper.pid).name() == "node-keeper"
        agent.kill()
        agent.wait(10)
        go.touch()
        assert keeper.wait(30) == ExitCode.OK, (tmp_path / "agent.log").read_text()
        outcomes = {pid: _outcome(tmp_path, pid) for pid in scripts}
        assert outcomes[1] is not None and outcomes[1].status == "finished" and outcomes[1].n_events == 7
        assert outcomes[2] is not None and outcomes[2].error_code == ErrorCode.PAYLOAD_FAILED
        assert outcomes[2].trans_exit_code == 3
        assert outcomes[3] is not None and outcomes[3].error_code == ErrorCode.SIGSEGV
        log = (tmp_path / "agent.log").read_text()
        assert "node_keeper[0] ERROR node 0: the node agent died (signal 9)" in log
        notices = listener.drain()
        assert [n.panda_ids for n in notices if n.kind == notify.STARTED] == [(1, 2, 3)]  # the agent's one S
        ended = sorted(i for n in notices if n.kind == notify.ENDED for i in n.panda_ids)
        assert ended == [1, 2, 3]  # the keeper wakes the daemon too
    finally:
        listener.close()
        _cleanup(keeper, tmp_path)


def test_sigterm_after_the_agent_died_ends_the_adopted_payloads(tmp_path: Path) -> None:
    scripts = {1: "sleep 60", 2: "trap '' TERM; sleep 60"}  # the second needs the SIGKILL after the grace
    keeper = _start_agent(tmp_path, _jobset(tmp_path, scripts))
    try:
        _wait_for(lambda: len(list((tmp_path / "reports").glob("*.started"))) == 2, 30, "2 started markers")
        agent = _the_agent(keeper)
        agent.kill()
        agent.wait(10)
        _wait_for(lambda: "waits for its 2 running payload" in (tmp_path / "agent.log").read_text(), 10, "takeover")
        keeper.send_signal(signal.SIGTERM)  # the batch system's end
        assert keeper.wait(20) == ExitCode.INTERRUPTED_SIGTERM, (tmp_path / "agent.log").read_text()
        assert {pid: _outcome(tmp_path, pid).error_code for pid in scripts} == {1: 1213, 2: 1213}  # type: ignore[union-attr]
    finally:
        _cleanup(keeper, tmp_path)


def test_agent_exit_code_passes_through_the_keeper(tmp_path: Path) -> None:
    keeper = _start_agent(tmp_path, _jobset(tmp_path, {1: EVENTS}))
    try:
        assert keeper.wait(30) == ExitCode.OK
        assert _outcome(tmp_path, 1).status == "finished"  # type: ignore[union-attr]
    finally:
        _cleanup(keeper, tmp_path)
    (tmp_path / "jobset.json").write_text("{}")
    bad = _start_agent(tmp_path, tmp_path / "jobset.json")
    assert bad.wait(30) == ExitCode.USAGE


def test_work_dirs_the_daemon_removed_are_neither_missing_nor_recreated(tmp_path: Path) -> None:
    """The daemon removes a job's work dir once it has reported its outcome: the agent's exit
    code must not count that job as lost, and a keeper must not write a second result for it."""
    import shutil

    go = tmp_path / "go"
    scripts = {1: EVENTS, 2: f"while [ ! -e {go} ]; do sleep 0.1; done; {EVENTS}", 3: EVENTS}
    keeper = _start_agent(tmp_path, _jobset(tmp_path, scripts))
    try:
        _wait_for(lambda: _outcome(tmp_path, 1) and _outcome(tmp_path, 3), 30, "jobs 1 and 3 done")
        shutil.rmtree(tmp_path / "PandaJob_1_1")  # reported and cleaned by the daemon
        shutil.rmtree(tmp_path / "PandaJob_3_1")
        agent = _the_agent(keeper)
        agent.kill()
        agent.wait(10)
        go.touch()
        assert keeper.wait(30) == ExitCode.OK, (tmp_path / "agent.log").read_text()
        assert not (tmp_path / "PandaJob_1_1").exists() and not (tmp_path / "PandaJob_3_1").exists()
        assert _outcome(tmp_path, 2).status == "finished"  # type: ignore[union-attr]
    finally:
        _cleanup(keeper, tmp_path)


def test_agent_alone_does_not_count_removed_dirs_as_lost(tmp_path: Path) -> None:
    import shutil

    go = tmp_path / "go"
    scripts = {1: EVENTS, 2: f"while [ ! -e {go} ]; do sleep 0.1; done; {EVENTS}"}
    keeper = _start_agent(tmp_path, _jobset(tmp_path, scripts))
    try:
        _wait_for(lambda: _outcome(tmp_path, 1) is not None, 30, "job 1 done")
        shutil.rmtree(tmp_path / "PandaJob_1_1")
        go.touch()
        assert keeper.wait(30) == ExitCode.OK, (tmp_path / "agent.log").read_text()
        assert "without an outcome" not in (tmp_path / "agent.log").read_text()
    finally:
        _cleanup(keeper, tmp_path)


def test_agent_killed_while_the_batch_system_ends_the_job(tmp_path: Path) -> None:
    """SIGTERM reached the keeper but the agent died before acting on it (here: stopped, then
    killed): the keeper ends the adopted payloads itself and every job gets 1213."""
    scripts = {1: "sleep 60", 2: "sleep 60"}
    keeper = _start_agent(tmp_path, _jobset(tmp_path, scripts))
    try:
        _wait_for(lambda: len(list((tmp_path / "reports").glob("*.started"))) == 2, 30, "2 started markers")
        agent = _the_agent(keeper)
        agent.send_signal(signal.SIGSTOP)
        keeper.send_signal(signal.SIGTERM)  # forwarded, but the stopped agent cannot act on it
        agent.kill()
        assert keeper.wait(20) == ExitCode.INTERRUPTED_SIGTERM, (tmp_path / "agent.log").read_text()
        assert {pid: _outcome(tmp_path, pid).error_code for pid in scripts} == {1: 1213, 2: 1213}  # type: ignore[union-attr]
    finally:
        _cleanup(keeper, tmp_path)


def test_the_keeper_can_be_turned_off_for_a_site(tmp_path: Path) -> None:
    proc = _start_agent(tmp_path, _jobset(tmp_path, {1: f"sleep 1; {EVENTS}"}), COMPASS_AGENT_KEEPER="off")
    try:
        _wait_for(lambda: (tmp_path / "reports" / "1.started").exists(), 30, "the started marker")
        kids = psutil.Process(proc.pid).children()
        assert kids and not any("hpc.node_agent" in " ".join(k.cmdline()) for k in kids)  # only the payload
        assert proc.wait(30) == ExitCode.OK
        assert _outcome(tmp_path, 1).status == "finished"  # type: ignore[union-attr]
    finally:
        _cleanup(proc, tmp_path)
