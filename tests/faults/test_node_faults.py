"""Multi-job faults inside a submission: one node agent killed, a server kill command."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil

from compass_pilot import faults
from compass_pilot.config import load_site_config
from compass_pilot.errors import ErrorCode
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from compass_pilot.panda.client import PandaClient
from tests.faults.conftest import Site, record, submit_reco, wait_for


def _start(site: Site, monkeypatch, n: int, **task) -> tuple[MultiJobDaemon, threading.Thread]:
    monkeypatch.setenv("HOME", str(site.base))
    monkeypatch.setenv("RADICAL_BASE", str(site.base / "radical"))
    submit_reco(site.db, n, **task)
    config = load_site_config(site.write())
    daemon = MultiJobDaemon(config, PandaClient(config.panda, config.site), make_backend(config))
    thread = threading.Thread(target=daemon.run, kwargs={"once": True}, daemon=True)
    thread.start()
    return daemon, thread


def _agents(shared: str) -> dict[str, psutil.Process]:
    """The node agents by rank: the processes running hpc.node_agent whose parent runs it too
    (the parent is the agent's keeper, see hpc/keeper.py, with the same argv and env)."""
    matching = {}
    for proc in psutil.process_iter(["cmdline", "environ", "ppid"]):
        cmd = proc.info["cmdline"] or []
        if "hpc.node_agent" in " ".join(cmd) and shared in " ".join(cmd) and proc.info["environ"]:
            matching[proc.pid] = proc
    return {
        proc.info["environ"].get("PMI_RANK", "?"): proc for proc in matching.values() if proc.info["ppid"] in matching
    }


def test_one_node_agent_killed(site: Site, monkeypatch) -> None:
    """kill -9 of a node agent while its payloads run: its keeper adopts them, so they end
    truthfully (here: finished) instead of failing with the node (1213 / 1317 before)."""
    _, thread = _start(site, monkeypatch, 8, extra_pars="--event-time 0.1")
    shared = site.data["hpc"]["shared_dir"]
    wait_for(lambda: "1" in _agents(shared), 60, "the node agent of node 1")
    agent = _agents(shared)["1"]
    wait_for(lambda: len(agent.children()) == 4, 60, "the 4 payloads of node 1")
    agent.kill()
    thread.join(120)
    assert not thread.is_alive()
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 8}
    assert record("one node agent kill -9 (of 2)", site.dispatcher)[1:] == (0, 0)


def test_node_agent_bug_leaves_its_payloads_to_the_keeper(site: Site, monkeypatch) -> None:
    """An unhandled exception in the agent (exit 1, not a signal) while its payloads run:
    the keeper sees its payloads still there, adopts them and writes their real outcomes
    (before: it exited with the agent, the payloads ran on unwatched, the jobs failed)."""
    monkeypatch.setenv(faults.ENV, "agent-after-start")  # inherited by the batch job's agents
    _, thread = _start(site, monkeypatch, 8, extra_pars="--event-time 0.1")
    thread.join(180)
    assert not thread.is_alive()
    assert site.dispatcher.summary()["jobs_by_status"] == {"finished": 8}
    logs = "".join(p.read_text(errors="replace") for p in Path(site.data["hpc"]["shared_dir"]).rglob("batch.err"))
    assert "InjectedBug" in logs and "the node agent died (exit 1)" in logs
    assert record("node agent unhandled exception (both nodes)", site.dispatcher)[1:] == (0, 0)


def test_server_kill_command_reaches_the_node(site: Site, monkeypatch) -> None:
    _, thread = _start(site, monkeypatch, 4, inject={"cdr11001-275678.raw": "hang"})
    wait_for(lambda: site.dispatcher.summary()["jobs_by_status"].get("running", 0) >= 1, 60, "running jobs")
    time.sleep(1)
    hanging = min(r["panda_id"] for r in site.dispatcher.store.query("SELECT panda_id FROM jobs"))
    site.dispatcher.kill_job(hanging)
    thread.join(120)
    assert not thread.is_alive()
    assert site.dispatcher.job(hanging)["error_code"] == ErrorCode.KILLED_BY_SERVER
    assert site.dispatcher.summary()["jobs_by_status"] == {"failed": 1, "finished": 3}
    assert record("tobekilled for one job of a submission", site.dispatcher)[1:] == (0, 0)


def test_dead_node_agent_fails_its_jobs_with_the_lost_node_code(site: Site, monkeypatch) -> None:
    import signal

    site.data["hpc"]["agent_timeout"] = 4  # minutes at a site; seconds here
    _, thread = _start(site, monkeypatch, 8, extra_pars="--event-time 0.3")  # ~12 s payloads
    shared = site.data["hpc"]["shared_dir"]
    wait_for(lambda: "1" in _agents(shared), 60, "the node agent of node 1")
    wait_for(lambda: site.dispatcher.summary()["jobs_by_status"].get("running", 0) >= 8, 60, "running jobs")
    frozen = _agents(shared)["1"]
    frozen.send_signal(signal.SIGSTOP)  # a hung node: no beat, no result, the batch job stays up
    try:
        thread.join(120)
        assert not thread.is_alive()
    finally:
        try:
            frozen.send_signal(signal.SIGCONT)
            frozen.kill()
        except psutil.Error:
            pass
    rows = site.dispatcher.store.query("SELECT status, error_code FROM jobs")
    assert (
        sorted((r["status"], r["error_code"]) for r in rows)
        == [("failed", ErrorCode.NODE_LOST)] * 4 + [("finished", None)] * 4
    )
    assert record("dead node agent (SIGSTOP, batch job stays up)", site.dispatcher)[1:] == (0, 0)
