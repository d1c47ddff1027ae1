"""The daemon acts on the node agents' wake-ups: finals reach PanDA without waiting for the poll.

Real dispatcher, real fork:// batch job, real mpiexec, node agents and payloads (the
``mom`` fixture).  The poll interval is 600 s and each test's bound is far below it, so
a run that completes did so on wake-ups.  A relay thread plays the agents' side of the
wake-up (a signed ``E`` for every job whose outcome file exists, read from the job
set's notify target) so these tests hold whatever the agents send themselves; what the
daemon trusts is still only the files.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from harvester_plugins import jobfiles
from hpc import notify
from hpc.jobset import read_jobset
from hpc.notify import NotifySender, NotifyTarget
from tests.multijob.test_daemon import _run, _summary, mom  # noqa: F401  (the fixture)

POLL = 600.0  # a daemon that waited for its poll would fail every bound below


class Relay(threading.Thread):
    """Sends ``E`` for each job whose outcome is written, as a node agent does (test-side stand-in)."""

    def __init__(self, shared: Path, *, key: str | None = None) -> None:
        super().__init__(daemon=True)
        self.shared = shared
        self.key = key  # a different key: forged wake-ups
        self.halt = threading.Event()
        self.sent: set[int] = set()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            for path in self.shared.glob("sub-*/jobset.json"):
                jobset = read_jobset(path)
                target = jobset.notify
                if target is None:
                    continue
                if self.key is not None:
                    target = NotifyTarget(target.host, target.port, target.sub_id, self.key)
                ended = [
                    nj.panda_id
                    for jobs in jobset.node_jobs.values()
                    for nj in jobs
                    if nj.panda_id not in self.sent and jobfiles.has_outcome(nj.workdir)
                ]
                if ended:
                    sender = NotifySender(target)
                    sender.send(notify.ENDED, ended)
                    sender.close()
                    self.sent.update(ended)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def _slow_poll(site) -> None:  # type: ignore[no-untyped-def]
    site.hpc.poll_interval = POLL
    site.hpc.heartbeat_interval = POLL
    site.hpc.batch_check_interval = POLL


def test_finals_reach_panda_on_wakeups_while_the_poll_sleeps(mom) -> None:  # noqa: F811
    site, client, dispatcher, submit = mom
    _slow_poll(site)
    submit(16, event_time=0.05)  # 2 nodes × 8 slots, payloads of about a second
    relay = Relay(Path(site.hpc.shared_dir))
    relay.start()
    daemon = MultiJobDaemon(site, client, make_backend(site))
    try:
        _run(daemon, timeout=150)  # ≪ POLL: only wake-ups can have ended this run
    finally:
        relay.stop()
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 16}
    assert dispatcher.duplicate_finals() == []
    assert daemon.wakeups >= 1 and daemon.rounds <= 3  # start, (a fetch-free round,) the closing round


def test_forged_and_misleading_wakeups_change_nothing(mom) -> None:  # noqa: F811
    """A datagram signed with another key is dropped; a signed one for a job without an
    outcome file reports nothing: the files are the truth."""
    site, client, dispatcher, submit = mom
    _slow_poll(site)
    submit(4, event_time=0.5)  # payloads of several seconds: no outcome yet when the lies arrive
    shared = Path(site.hpc.shared_dir)
    daemon = MultiJobDaemon(site, client, make_backend(site))
    thread = threading.Thread(target=daemon.run, kwargs={"once": True}, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while daemon.listener is None or not daemon.submissions:
        assert time.time() < deadline, "the daemon never submitted"
        time.sleep(0.1)
    (state,) = daemon.submissions.values()
    written = read_jobset(Path(state.subdir) / "jobset.json")
    assert written.durable_outcomes is False  # this daemon reads only the attributes and syncs outputs itself
    target = written.notify
    assert target is not None and target.port == daemon.listener.port
    ids = [entry.panda_id for entry in state.jobs.values()]
    forged = NotifySender(NotifyTarget(target.host, target.port, target.sub_id, notify.new_key()))
    forged.send(notify.ENDED, ids)
    forged.close()
    honest = NotifySender(target)
    honest.send(notify.ENDED, [*ids, 999999])  # too early, and one job that is not of this submission
    honest.close()
    while daemon.wakeups < 1:
        assert time.time() < deadline, "the signed wake-up was never acted on"
        time.sleep(0.1)
    assert daemon.listener.rejected >= 1
    finals = [u for u in dispatcher.updates() if u["state"] in ("finished", "failed")]
    assert finals == []  # no outcome files yet: nothing to report
    relay = Relay(shared)
    relay.start()
    try:
        thread.join(150)
    finally:
        relay.stop()
    assert not thread.is_alive()
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 4}


def test_wakeups_off_still_completes_by_polling(mom) -> None:  # noqa: F811
    site, client, dispatcher, submit = mom
    site.hpc.notify_bind = "off"
    submit(4)
    daemon = MultiJobDaemon(site, client, make_backend(site))
    _run(daemon)
    assert daemon.listener is None and daemon.wakeups == 0
    (state,) = daemon.submissions.values()
    assert read_jobset(Path(state.subdir) / "jobset.json").notify is None
    assert state.notify_key == ""
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 4}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_restarted_daemon_hears_the_agents_of_recovered_submissions(mom) -> None:  # noqa: F811
    """Same port, key re-read from the submission's state: the old agents still wake the new daemon."""
    site, client, dispatcher, submit = mom
    _slow_poll(site)
    site.hpc.notify_port = _free_port()
    submit(8, event_time=0.1)
    first = MultiJobDaemon(site, client, make_backend(site))
    first.round()  # fetch, stage in, submit; then the daemon "dies"
    (state,) = first.submissions.values()
    assert state.batch_id and state.notify_key
    first.journal.close()
    assert first.listener is not None
    first.listener.close()
    relay = Relay(Path(site.hpc.shared_dir))
    relay.start()
    second = MultiJobDaemon(site, client, make_backend(site))
    try:
        _run(second, timeout=150)  # ≪ POLL
    finally:
        relay.stop()
    assert second.wakeups >= 1
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 8}
    assert dispatcher.duplicate_finals() == []


def test_listener_settings_and_a_burst_gathered_per_submission(tmp_path: Path) -> None:
    """Where the listener binds, a taken fixed port, and a burst of notices folded per submission."""
    from compass_pilot.config import load_site_config
    from compass_pilot.modes import wakeups

    hpc = load_site_config(None).hpc
    hpc.batch_url, hpc.fake_nodes = "fork://localhost", False
    assert wakeups.bind_address(hpc) == "127.0.0.1"  # every agent on this host: loopback only
    hpc.batch_url = "pbspro://localhost"
    assert wakeups.bind_address(hpc) == "0.0.0.0"
    hpc.notify_bind = "off"
    assert wakeups.bind_address(hpc) is None and wakeups.open_listener(hpc) == (None, "")
    hpc.notify_bind = "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        hpc.notify_port = taken.getsockname()[1]
        reader, host = wakeups.open_listener(hpc)  # that port is busy: any free one instead
    assert reader is not None and host == "127.0.0.1" and reader.port != hpc.notify_port
    try:
        keys = {"sub-a": notify.new_key(), "sub-b": notify.new_key()}
        for sub_id, key in keys.items():
            reader.add(sub_id, key)
        for sub_id, key in keys.items():
            sender = NotifySender(NotifyTarget(host, reader.port, sub_id, key))
            for panda_id in range(1, 41):
                sender.send(notify.ENDED if panda_id % 2 else notify.STARTED, [panda_id])
            sender.close()
        started: dict[str, set[int]] = {}
        ended: dict[str, set[int]] = {}
        deadline = time.time() + 30
        while sum(map(len, [*started.values(), *ended.values()])) < 80:
            assert time.time() < deadline, "notices lost on the loopback"
            burst = reader.gather()
            for into, part in ((started, burst.started), (ended, burst.ended)):
                for sub_id, ids in part.items():
                    into.setdefault(sub_id, set()).update(ids)
        assert sorted(started) == sorted(ended) == ["sub-a", "sub-b"]
        assert ended["sub-a"] == set(range(1, 41, 2)) and started["sub-b"] == set(range(2, 41, 2))
    finally:
        reader.close()


class _HeldCopytool:
    """The real local copytool, except that the first job to stage out waits until released."""

    def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
        self.real = real
        self.lock = threading.Lock()
        self.held_dir = ""
        self.release = threading.Event()

    def stage_in(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.real.stage_in(*args, **kwargs)

    def stage_out(self, local, *args, **kwargs):  # type: ignore[no-untyped-def]
        with self.lock:
            self.held_dir = self.held_dir or str(Path(local).parent)
            held = self.held_dir == str(Path(local).parent)
        if held:
            self.release.wait(120)
        return self.real.stage_out(local, *args, **kwargs)


def test_each_job_is_reported_when_its_own_outputs_are_out(mom) -> None:  # noqa: F811
    """One job's stage-out hangs: the others' finals reach PanDA meanwhile, not after it."""
    from compass_pilot.copytools import make_copytool

    site, client, dispatcher, submit = mom
    _slow_poll(site)
    submit(8)
    copytool = _HeldCopytool(make_copytool(site.storage))
    relay = Relay(Path(site.hpc.shared_dir))
    relay.start()
    daemon = MultiJobDaemon(site, client, make_backend(site), copytool=copytool)
    thread = threading.Thread(target=daemon.run, kwargs={"once": True}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 120
        while _summary(dispatcher.url)["jobs_by_status"].get("finished", 0) < 7:
            assert time.time() < deadline, "the other jobs' finals waited for the held stage-out"
            time.sleep(0.2)
        assert copytool.held_dir and not copytool.release.is_set()
        assert _summary(dispatcher.url)["jobs_by_status"].get("finished") == 7  # all but the held one
    finally:
        copytool.release.set()
        thread.join(120)
        relay.stop()
    assert not thread.is_alive()
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 8}
    assert dispatcher.duplicate_finals() == []
