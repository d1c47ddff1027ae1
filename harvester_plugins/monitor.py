"""SagaMonitor: worker statuses from the batch system via radical.saga.

Contract (Harvester's monitor agent): ``check_workers(workspec_list)`` returns
``(True, [(status, diag), …])`` with exactly one entry per worker, in order — also for
a worker without a batch id, one the batch system forgot, or one whose query failed —
and statuses only from WorkSpec's list.  Harvester's own SAGA monitor skipped workers
without a batch id (shifting every later answer onto the wrong worker) and parsed
``created`` as a date string; both are fixed here.

Mapping: New/Pending → submitted · Running → running · Suspended → idle · Failed →
failed · Canceled → cancelled · Done → finished only when the wrapper's exit marker
says 0 (PBS reports a vanished job as "done, exit 0" by guesswork; a body killed by the
walltime leaves no marker) · Unknown / query error → the worker's current status
(a slow controller must not fail 512 jobs) · a job the batch system does not know →
the marker's verdict, or ``missed``.
"""

from __future__ import annotations

import logging
from typing import Any

from harvester_plugins import saga_backend
from harvester_plugins.compat import PluginBase, WorkSpec
from harvester_plugins.submitter import plugin_batch_url

log = logging.getLogger(__name__)

_SAGA_TO_WORKER = {
    "New": WorkSpec.ST_submitted,
    "Pending": WorkSpec.ST_submitted,
    "Running": WorkSpec.ST_running,
    "Suspended": WorkSpec.ST_idle,
    "Failed": WorkSpec.ST_failed,
    "Canceled": WorkSpec.ST_cancelled,
}


def _current(workspec: Any) -> str:
    status = getattr(workspec, "status", None)
    return status if status in WorkSpec.ST_LIST else WorkSpec.ST_submitted


def _from_marker(code: int, batch_id: str) -> tuple[str, str]:
    if code == 0:
        return WorkSpec.ST_finished, ""
    return WorkSpec.ST_failed, f"batch job {batch_id} ended with exit code {code}"


class SagaMonitor(PluginBase):
    """Harvester monitor plugin on radical.saga (no state)."""

    def check_workers(self, workspec_list: list[Any]) -> tuple[bool, list[tuple[str, str]]]:
        results: list[tuple[str, str]] = []
        for workspec in workspec_list:
            try:
                status, diag = self._check_one(workspec)
            except Exception as exc:  # one entry per worker whatever happens
                log.exception("worker %s: check failed", getattr(workspec, "workerID", "?"))
                status, diag = _current(workspec), f"cannot check worker: {type(exc).__name__}: {exc}"
            if status not in WorkSpec.ST_LIST:  # never hand Harvester a status it does not know
                status, diag = _current(workspec), f"unexpected status {status!r}; {diag}"
            results.append((status, diag))
        return True, results

    def _check_one(self, workspec: Any) -> tuple[str, str]:
        batch_id = workspec.batchID
        if not batch_id:
            if workspec.status in (WorkSpec.ST_finished, WorkSpec.ST_failed, WorkSpec.ST_cancelled):
                return workspec.status, ""
            return WorkSpec.ST_missed, "worker has no batch id (never submitted)"
        attrs = workspec.workAttributes if isinstance(workspec.workAttributes, dict) else {}
        url = str(attrs.get("batchURL") or plugin_batch_url(self))
        saga_id = str(attrs.get("sagaJobID") or saga_backend.make_job_id(url, str(batch_id)))
        access_point = workspec.get_access_point() if workspec.accessPoint else None
        try:
            state = saga_backend.query(url, saga_id)
        except saga_backend.UnknownJob as exc:
            marker = saga_backend.read_exit_marker(access_point)
            if marker is not None:
                return _from_marker(marker, str(batch_id))
            return WorkSpec.ST_missed, f"batch system does not know job {batch_id}: {exc}"
        except saga_backend.BatchError as exc:
            log.warning("worker %s: %s", workspec.workerID, exc)
            return _current(workspec), str(exc)
        # read the marker only after the batch system answered: the body writes it just before the job ends
        marker = saga_backend.read_exit_marker(access_point)
        workspec.nativeStatus = state.state
        if state.exit_code is not None:
            workspec.nativeExitCode = state.exit_code
        if state.created and not workspec.submitTime:
            workspec.submitTime = state.created
        if state.started and not workspec.startTime:
            workspec.startTime = state.started
        if state.finished and state.state in ("Done", "Failed", "Canceled"):
            workspec.endTime = state.finished
        if state.state == "Done":
            if marker is None:
                return WorkSpec.ST_failed, f"batch job {batch_id} ended without recording an exit code (killed?)"
            return _from_marker(marker, str(batch_id))
        if state.state == "Failed":
            code = marker if marker is not None else state.exit_code
            return WorkSpec.ST_failed, f"batch job {batch_id} failed (exit code {code})"
        if state.state == "Canceled":
            return WorkSpec.ST_cancelled, f"batch job {batch_id} was cancelled"
        if state.state in _SAGA_TO_WORKER:
            return _SAGA_TO_WORKER[state.state], ""
        if marker is not None:  # Unknown, but the body has ended
            return _from_marker(marker, str(batch_id))
        return _current(workspec), f"batch system reports state {state.state!r} for job {batch_id}"
