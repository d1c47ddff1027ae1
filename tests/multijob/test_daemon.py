"""The MOM-node daemon end to end: real dispatcher, real fork:// batch through radical.saga,
real mpiexec with fake nodes, real node agents and payloads."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from compass_pilot.config import load_site_config
from compass_pilot.demo.rawdata import make_production_input
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from compass_pilot.status import format_status
from tests.tasks import reco_task


def _summary(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/summary", timeout=10) as answer:
        return json.loads(answer.read())


@pytest.fixture
def mom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import calibdb
    from compass_pilot.panda.client import PandaClient
    from compass_pilot.panda.dispatcher import Dispatcher, submit_task

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RADICAL_BASE", str(tmp_path / "radical"))
    (tmp_path / "home").mkdir()
    db = str(tmp_path / "panda.sqlite")
    dispatcher = Dispatcher(db, port=0, check_interval=60)
    dispatcher.start()
    site = load_site_config(None)
    site.panda.url = dispatcher.url
    site.panda.backoff = 0.1
    site.storage.input_root = str(tmp_path / "castor")
    site.storage.output_root = str(tmp_path / "eos")
    site.calibdb.backend = "sqlite"
    site.calibdb.snapshot = str(calibdb.demo_snapshot("sqlite", tmp_path / "calib"))
    site.calibdb.scratch_dir = str(tmp_path / "scratch")
    site.hpc.shared_dir = str(tmp_path / "hpc")
    site.hpc.fake_nodes = True
    site.hpc.slots_per_node = 8
    site.hpc.max_nodes = 4
    site.hpc.max_jobs = 32
    site.hpc.poll_interval = 1
    site.hpc.heartbeat_interval = 2
    site.hpc.batch_url = "fork://localhost"
    client = PandaClient(site.panda, site.site)

    def submit(n: int, event_time: float = 0.0) -> None:
        chunks = make_production_input(tmp_path / "castor", 2016, "W14", {275678: n}, n_events=20)
        extra = {"extra_pars": f"--event-time {event_time}"} if event_time else {}
        submit_task(db, reco_task([c.raw_path for c in chunks], name=f"t{n}", **extra))

    try:
        yield site, client, dispatcher, submit
    finally:
        client.close()
        dispatcher.stop()


def _run(daemon: MultiJobDaemon, timeout: float = 120) -> None:
    thread = threading.Thread(target=daemon.run, kwargs={"once": True}, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        daemon.terminate()
        thread.join(30)
        pytest.fail("daemon did not finish in time")


def test_32_jobs_on_4_fake_nodes(mom) -> None:
    site, client, dispatcher, submit = mom
    submit(32)
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon)
    summary = _summary(dispatcher.url)
    assert summary["jobs_by_status"] == {"finished": 32}
    assert daemon.source.stats.requests == 1  # one getJob for the whole job set
    (sub,) = daemon.submissions.values()
    assert sub.nodes == 4 and len(sub.jobs) == 32
    # every final state reached the server exactly once
    assert dispatcher.duplicate_finals() == []
    status = format_status(json.loads((Path(site.hpc.shared_dir) / "daemon_state.json").read_text()))
    assert "finished 32" in status


def test_five_jobs_make_a_one_node_submission(mom) -> None:
    site, client, dispatcher, submit = mom
    submit(5)
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon)
    (sub,) = daemon.submissions.values()
    assert sub.nodes == 1 and len(sub.jobs) == 5
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 5}


def test_killed_node_agent_loses_no_job(mom, mocker) -> None:
    """kill -9 of node 1's agent: its keeper (hpc/keeper.py) adopts the running payloads
    and writes their outcomes, so all 16 jobs end truthfully (finished), none twice."""
    site, client, dispatcher, submit = mom
    # the batch system is never asked on a timer here: every job's outcome file (the
    # keeper writes the dead agent's) and the worker's exit marker must say it all
    site.hpc.batch_check_interval = 3600
    submit(16, event_time=0.15)  # 2 nodes × 8 slots, ~3 s per payload
    backend = make_backend(site)
    status = mocker.spy(backend, "status")
    daemon = MultiJobDaemon(site, client, backend)
    thread = threading.Thread(target=daemon.run, kwargs={"once": True}, daemon=True)
    thread.start()
    victim = None
    deadline = time.time() + 60
    while victim is None and time.time() < deadline:
        matching = {}
        for proc in psutil.process_iter(["cmdline", "environ", "ppid"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
            if "hpc.node_agent" in cmd and env.get("PMI_RANK") == "1" and site.hpc.shared_dir in cmd:
                matching[proc.pid] = proc
        # the agent, not its keeper: the keeper is the agent's parent with the same argv
        victim = next((p for p in matching.values() if p.info["ppid"] in matching), None)
        time.sleep(0.2)
    assert victim is not None, "node agent of node 1 not found"
    time.sleep(1)
    victim.kill()
    thread.join(120)
    assert not thread.is_alive()
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 16}
    assert dispatcher.duplicate_finals() == []
    assert status.call_count <= 1  # at most once, when the marker appeared; not every round


def test_a_clean_run_never_asks_the_batch_system(mom, mocker) -> None:
    site, client, dispatcher, submit = mom
    site.hpc.batch_check_interval = 3600
    submit(8, event_time=0.15)  # ~3 s per payload: several 1 s rounds while they run
    backend = make_backend(site)
    status = mocker.spy(backend, "status")
    daemon = MultiJobDaemon(site, client, backend)
    _run(daemon)
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 8}
    assert daemon.rounds >= 4  # a daemon asking every round would have asked ≥ 3 times
    assert status.call_count <= 1  # the node agents' files said it all


class _CountingCopytool:
    """The real local copytool, counting how many transfers run at once."""

    def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
        self.real = real
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.threads: set[str] = set()

    def _counted(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(0.05)  # a transfer takes time; make overlap observable
            return fn(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1

    def stage_in(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self._counted(self.real.stage_in, *args, **kwargs)

    def stage_out(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self._counted(self.real.stage_out, *args, **kwargs)


def test_transfers_run_in_parallel_and_one_bad_input_fails_only_its_job(mom, tmp_path: Path) -> None:
    from compass_pilot.copytools import make_copytool
    from compass_pilot.errors import ErrorCode

    site, client, dispatcher, submit = mom
    site.hpc.transfer_threads = 4
    submit(12)
    (tmp_path / "castor" / "2016" / "raw" / "W14" / "cdr11007-275678.raw").unlink()  # lost on tape
    copytool = _CountingCopytool(make_copytool(site.storage))
    daemon = MultiJobDaemon(site, client, make_backend(site), copytool=copytool)
    _run(daemon)
    assert 2 <= copytool.peak <= 4  # overlapping, never more than transfer_threads
    # on the pool's threads (a round with a single result stages it out inline)
    assert any(name.startswith("transfer") for name in copytool.threads)
    jobs = dispatcher.store.query("SELECT chunk, status, error_code FROM jobs")
    failed = [j for j in jobs if j["status"] != "finished"]
    assert len(jobs) == 12 and len(failed) == 1
    assert failed[0]["chunk"] == 11007 and failed[0]["error_code"] == ErrorCode.MISSING_INPUT
    assert dispatcher.duplicate_finals() == []
    # finished jobs' work dirs are removed (after the round's commit); their outputs are at the destination
    assert not list(Path(site.hpc.shared_dir).glob("sub-*/jobs/PandaJob_*/payload.stdout"))
    assert len(list((tmp_path / "eos").rglob("mDST-275678-*.root"))) == 11


def test_updates_name_the_compute_node_not_the_mom_node(mom) -> None:
    """PanDA's `node` is where the job ran: the node agent's host, from its started marker.

    The daemon's client is named for a MOM node that is not this host, so an update that
    fell back to the client's name would show "mom-node" here.
    """
    import socket

    from compass_pilot.panda.client import PandaClient

    site, _, dispatcher, submit = mom
    submit(4, event_time=0.5)  # payloads long enough to be seen running
    client = PandaClient(site.panda, site.site, node="mom-node")
    try:
        _run(MultiJobDaemon(site, client, make_backend(site)))
    finally:
        client.close()
    updates = [u for u in dispatcher.updates() if u["accepted"]]
    running = [u for u in updates if u["state"] == "running"]
    finals = [u for u in updates if u["state"] in ("finished", "failed")]
    assert running and len(finals) == 4
    assert {u["node"] for u in running + finals} == {socket.gethostname()}
