"""The dispatcher's hot paths never scan or sort the job tables, whatever they are asked.

Every statement the store runs while handing out jobs and applying updates (single and
bulk, plain and chained tasks) is captured from SQLite itself and its query plan read
back: a full scan or a temporary sort would make the cost grow with the queue — the
figure ``benchmarks/dispatcher.py`` measures.  No timing is asserted here.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from compass_pilot.panda.client import PandaClient
from compass_pilot.panda.dispatcher import Dispatcher, JobStore, submit_task
from compass_pilot.panda.store import connect
from compass_pilot.panda.workflow import install
from tests.tasks import chunk_paths, reco_task

BAD_PLAN = re.compile(r"^SCAN (jobs|updates|tasks)\b|TEMP B-TREE")


@pytest.fixture
def store(tmp_path: Path):
    db = str(tmp_path / "panda.sqlite")
    submit_task(db, reco_task(chunk_paths(60, first=10000), name="plain", max_attempts=2))
    submit_task(db, reco_task(chunk_paths(3, run=275679), name="chained", chain=True))
    job_store = JobStore(db, sent_timeout=1800, heartbeat_timeout=7200)
    install(job_store)
    try:
        yield job_store
    finally:
        job_store.close()


def _traced(store: JobStore) -> list[str]:
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    store.reader.set_trace_callback(statements.append)
    return statements


def _plans(store: JobStore, statements: list[str]) -> dict[str, list[str]]:
    """statement → its plan lines, for every query or write the store ran."""
    plans = {}
    check = connect(store.db_path)
    try:
        for sql in statements:
            if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "INSERT", "DELETE")):
                plans[sql] = [row[3] for row in check.execute("EXPLAIN QUERY PLAN " + sql)]
    finally:
        check.close()
    return plans


def _report(store: JobStore, job: dict, state: str, **extra: object) -> tuple[int, str | None, str]:
    fields = {"panda_id": job["PandaID"], "attempt_nr": job["attemptNr"], "state": state, **extra}
    return store.update(fields, "legacy", "none")


def test_hand_out_and_updates_use_indexes_only(store: JobStore) -> None:
    statements = _traced(store)
    jobs = store.get_jobs(1) + store.get_jobs(30)
    for state in ("starting", "running", "transferring"):
        assert _report(store, jobs[0], state)[0] == 0
    assert _report(store, jobs[0], "finished", n_events=5)[0] == 0
    assert _report(store, jobs[1], "failed", pilot_error_code=1305)[0] == 0  # a retry is activated
    bulk = [{"panda_id": j["PandaID"], "attempt_nr": j["attemptNr"], "state": "finished"} for j in jobs[2:]]
    assert [a[0] for a in store.update_many(bulk, "legacy", "none")] == [0] * len(bulk)
    chained = [j for j in store.get_jobs(100) if j["taskID"] == 2]
    assert len(chained) == 3
    for job in chained:  # the last one completes the run: the chain defines its merge jobs
        assert _report(store, job, "finished", output_report='{"mDST-1.root": {"fsize": 10}}')[0] == 0
    assert store.status_counts()["activated"] >= 1  # merge jobs of the chained run
    store.job_status([jobs[0]["PandaID"], 424242])
    store.check_timeouts()
    plans = _plans(store, statements)
    assert any("jobs" in sql and "ORDER BY" in sql for sql in plans), "hand-out query not captured"
    bad = {sql[:160]: plan for sql, plan in plans.items() if any(BAD_PLAN.search(line) for line in plan)}
    assert bad == {}


def test_final_updates_of_a_plain_task_read_its_spec_once(store: JobStore) -> None:
    jobs = store.get_jobs(3)
    statements = _traced(store)
    for job in jobs:
        _report(store, job, "finished")
    assert sum("FROM tasks" in sql for sql in statements) <= 1


def test_status_counters_follow_every_writer(store: JobStore) -> None:
    def truth() -> dict[str, int]:
        rows = store.query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    jobs = store.get_jobs(10)
    _report(store, jobs[0], "running")
    _report(store, jobs[1], "failed")  # attempt 2 activated
    _report(store, jobs[2], "finished")
    store.kill_job(jobs[3]["PandaID"])
    store.kill_job(store.get_jobs(1)[0]["PandaID"] + 1)  # an activated one: failed at once
    submit_task(store.db_path, reco_task(chunk_paths(4, run=275680), name="later"))  # another connection
    assert store.status_counts() == truth()
    assert store.summary()["jobs_by_status"] == truth()


def test_summary_reuses_a_recent_copy_only_when_asked(store: JobStore) -> None:
    first = store.summary(max_age=60)
    store.get_jobs(5)
    assert store.summary(max_age=60) is first
    assert store.summary()["jobs_by_status"]["sent"] == 5


def test_answers_leave_without_nagle_delay(tmp_path: Path) -> None:
    db = str(tmp_path / "panda.sqlite")
    submit_task(db, reco_task(chunk_paths(2), name="t"))
    dispatcher = Dispatcher(db, port=0).start()
    try:
        from compass_pilot.config import load_site_config

        site = load_site_config(None)
        site.panda.url = dispatcher.url
        client = PandaClient(site.panda, site.site)
        assert client.get_jobs(1)
        with dispatcher.server.sockets_lock:
            served = list(dispatcher.server.open_sockets)
        assert served and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in served)
        client.close()
    finally:
        dispatcher.stop()


@pytest.mark.parametrize("seed", range(5))
def test_form_bodies_decode_as_urllib_does(seed: int) -> None:
    import json
    import random
    from urllib.parse import parse_qs, urlencode

    from compass_pilot.panda.wire import form_fields

    rng = random.Random(seed)
    alphabet = 'abc%+=&;: "{}[],\\/é\u20ac\x00\n25AF'
    raw_values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(20)]
    bodies = [
        urlencode({"jobList": json.dumps([{"jobId": i, "diag": v} for i, v in enumerate(raw_values)])}).encode(),
        urlencode({f"k{i}": v for i, v in enumerate(raw_values)}).encode(),
        "&".join(raw_values).encode(),  # not encoded at all: stray %, +, = and &
        b"a=%zz&b=%4&c=%%41&d=%2541&e=%41%42&a=last&flag&=x",
    ]
    for body in bodies:
        expected = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        assert form_fields(body) == expected


def test_update_times_read_as_strptime_reads_them() -> None:
    import time

    from compass_pilot.panda.store import server_time

    def slow(value: object) -> str | None:
        try:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.strptime(value, "%Y-%m-%d %H:%M:%S"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

    values = [
        "2026-01-01 00:10:00",
        "2026-1-1 0:0:0",
        "2026-02-30 00:00:00",
        "2024-02-29 12:00:00",
        "2026-12-31 23:59:60",
    ]
    values += [
        "0000-01-01 00:00:00",
        "2026-01-01T00:00:00",
        "2026-01-01 00:00:00 ",
        "",
        "1700000000",
        "2026-13-01 00:00:00",
    ]
    assert [server_time(v) for v in values] == [slow(v) for v in values]


def test_client_connections_send_without_nagle_delay(tmp_path: Path) -> None:
    from compass_pilot.config import load_site_config

    db = str(tmp_path / "panda.sqlite")
    submit_task(db, reco_task(chunk_paths(1), name="t"))
    dispatcher = Dispatcher(db, port=0).start()
    try:
        site = load_site_config(None)
        site.panda.url = dispatcher.url
        client = PandaClient(site.panda, site.site)
        assert client.get_jobs(1)
        pools = client.session.get_adapter(dispatcher.url).poolmanager.pools
        keys = pools.keys()  # urllib3 refuses to iterate its container itself
        kept = [c for key in keys for c in pools[key].pool.queue if c is not None and c.sock is not None]
        assert kept and all(c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in kept)
        client.close()
    finally:
        dispatcher.stop()
