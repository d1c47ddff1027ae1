"""A dispatcher in the state an operator must be able to read at a glance.

Two tasks: task A, five reco jobs of which two finished, one failed twice as a looping
job (1150) on two attempts, one running, one stuck "sent" (its pilot never said
"starting", the clock put back an hour); task B, three jobs waiting.  Real dispatcher,
real HTTP updates from our client: only the stuck job's clock is moved in the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from compass_pilot.config import load_site_config
from compass_pilot.errors import ErrorCode
from compass_pilot.job import JobReport
from compass_pilot.panda.client import PandaClient
from compass_pilot.panda.dispatcher import Dispatcher
from compass_pilot.panda.store import connect, submit_task
from tests.tasks import reco_task

STUCK_AGE = 3600.0


def _client(url: str, node: str) -> PandaClient:
    site = load_site_config(None)
    site.panda.url = url
    site.panda.retries = 1
    return PandaClient(site.panda, site.site, node=node, pilot_id=f"pilot-{node}")


def build(base: Path) -> tuple[Dispatcher, dict[str, Any]]:
    """Start the dispatcher and play the scenario; returns it and the ids the checks look for."""
    db = str(base / "panda.sqlite")
    raws = [f"2016/raw/W14/cdr{11001 + i}-275678.raw" for i in range(5)]
    task_a = submit_task(db, reco_task(raws, name="P09-reco-W14", max_attempts=2))
    submit_task(db, reco_task([f"2016/raw/W14/cdr{12001 + i}-275679.raw" for i in range(3)], name="P09-reco-W14-b"))
    dispatcher = Dispatcher(db, port=0, check_interval=3600, sent_timeout=1800, heartbeat_timeout=7200)
    dispatcher.store.retry_delay = 0  # the looping job's second attempt is handed out at once
    dispatcher.start()
    wn1, wn2 = _client(dispatcher.url, "wn001.cern.ch"), _client(dispatcher.url, "wn002.cern.ch")
    jobs = wn1.get_jobs(4)
    ids = [int(j["PandaID"]) for j in jobs]
    finished, looping, running, stuck = ids[0:2], ids[2], ids[3], None
    for pid in finished:
        wn1.update_job(JobReport(pid, "running", 1))
        wn1.update_job(JobReport(pid, "finished", 1, n_events=200))
    wn1.update_job(JobReport(running, "running", 1))
    for attempt, client in ((1, wn1), (2, wn2)):
        if attempt == 2:
            (again,) = client.get_jobs(1)
            assert int(again["PandaID"]) == looping
        client.update_job(JobReport(looping, "running", attempt))
        client.update_job(
            JobReport(looping, "failed", attempt, pilot_error_code=ErrorCode.LOOPING_JOB,
                      pilot_error_diag=f"Looping job killed by pilot: no output for 7200 s (attempt {attempt})")
        )  # fmt: skip
    (last,) = wn2.get_jobs(1)
    stuck = int(last["PandaID"])
    conn = connect(db)
    conn.execute("UPDATE jobs SET modified = modified - ?, heartbeat = heartbeat - ? WHERE panda_id = ?",
                 (STUCK_AGE, STUCK_AGE, stuck))  # fmt: skip
    conn.close()
    for node in ("wn001.cern.ch", "wn002.cern.ch"):  # the worker nodes describe themselves, as pilot3 does
        description = {"site": "CERN-PROD", "host_name": node, "panda_queue": "CERN-PROD_COMPASS", "cpu_model": "EPYC"}
        requests.post(f"{dispatcher.url}/api/v1/pilot/update_worker_node", json=description, timeout=10)
    for client in (wn1, wn2):
        client.close()
    return dispatcher, {"task": task_a, "stuck": stuck, "looping": looping, "running": running}
