"""Per-job state of the daemon: no parsed PanDA spec is held while a job runs (the journal has it)."""

from __future__ import annotations

import gc
import threading
import time

from compass_pilot.job import JobSpec
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend
from tests.multijob.test_daemon import _summary, mom  # noqa: F401  (the fixture)


def test_running_jobs_hold_no_spec_and_finish_from_the_journals(mom) -> None:  # noqa: F811
    site, client, dispatcher, submit = mom
    submit(8, event_time=0.4)  # ~8 s payloads
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, JobSpec)}  # earlier tests' specs (same ids)
    daemon = MultiJobDaemon(site, client, make_backend(site))
    thread = threading.Thread(target=daemon.run, kwargs={"once": True}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    running = lambda: any(e.state != "starting" for s in list(daemon.submissions.values()) for e in s.jobs.values())  # noqa: E731
    while time.monotonic() < deadline and not running():  # a later round than the one that fetched
        time.sleep(0.1)
    held = set(daemon.held)
    assert held  # jobs in flight, past the round that fetched them
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, JobSpec) and o.panda_id in held and id(o) not in before]
    assert alive == []  # neither in the daemon's maps nor in the submitted plan
    thread.join(120)
    assert not thread.is_alive()
    # each final was built from the spec read back from the journal: outputs staged out, all finished
    assert _summary(dispatcher.url)["jobs_by_status"] == {"finished": 8}
    assert daemon.held == set() and dispatcher.duplicate_finals() == []


def test_state_file_holds_every_field_of_the_submission_and_its_jobs() -> None:
    from dataclasses import asdict

    from compass_pilot.modes.multijob import JobEntry, SubmissionState

    state = SubmissionState("sub-1", "long", 2, 3600, "/shared/sub-1", batch_id="42.pbs", notify_key="k")
    for i in range(3):
        state.jobs[str(10 + i)] = JobEntry(10 + i, 1, f"/shared/sub-1/jobs/{i}", state="running", node=i, host="n1")
    data = state.to_dict()
    assert data == asdict(state)  # what a restarted daemon and `status` read back
    jobs = {k: JobEntry(**v) for k, v in data.pop("jobs").items()}
    assert SubmissionState(**data, jobs=jobs) == state
