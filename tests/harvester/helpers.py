"""Shared helpers: drive plugins exactly as Harvester does — a NEW instance per call."""

from __future__ import annotations

import time
from typing import Any

from harvester_plugins import compat
from harvester_plugins.compat import WorkSpec


def queue_dict(url: str, **submitter: Any) -> dict[str, Any]:
    return {
        "mapType": "ManyToOne",
        "common": {"batchURL": url},
        "submitter": {"module": "harvester_plugins.submitter", "name": "SagaSubmitter", **submitter},
        "monitor": {"module": "harvester_plugins.monitor", "name": "SagaMonitor"},
        "sweeper": {"module": "harvester_plugins.sweeper", "name": "SagaSweeper"},
        "workerMaker": {"module": "harvester_plugins.workermaker", "name": "MultiJobWorkerMaker"},
        "messenger": {"module": "harvester_plugins.messenger", "name": "SharedFileMessenger"},
        "preparator": {"module": "harvester_plugins.preparator", "name": "CopytoolPreparator"},
        "stager": {"module": "harvester_plugins.stager", "name": "CopytoolStager"},
    }


def plugin(qdict: dict[str, Any], section: str) -> Any:
    """A fresh plugin instance, as PluginFactory.get_plugin builds it on every call."""
    return compat.get_plugin(compat.plugin_sections("TEST_QUEUE", qdict)[section])


def worker(
    access_point: str,
    body: str,
    *,
    queue: str = "long",
    nodes: int = 1,
    slots: int = 1,
    walltime: int = 600,
    worker_id: int = 1,
) -> Any:
    ws = WorkSpec()
    ws.workerID = worker_id
    ws.mapType = WorkSpec.MT_MultiJobs
    ws.accessPoint = access_point
    ws.workParams = {"executable": body, "queue": queue, "nodes": nodes, "slotsPerNode": slots, "walltime": walltime}
    return ws


def wait_status(qdict: dict[str, Any], ws: Any, wanted: set[str], timeout: float, step: float = 0.5) -> list[str]:
    """Poll through a NEW monitor each round until the status is in ``wanted``; returns the statuses seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok, ((status, diag),) = plugin(qdict, "monitor").check_workers([ws])
        assert ok is True
        if not seen or seen[-1] != status:
            seen.append(status)
        ws.set_status(status)
        if status in wanted:
            ws.last_diag = diag
            return seen
        time.sleep(step)
    raise AssertionError(f"status not in {wanted} within {timeout} s; seen {seen}, last diag {diag!r}")
