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

Worker status versus job status, as Harvester uses them: each job's own outcome file
(``harvester_plugins.jobfiles``) decides the job's status whatever the worker's
(``core_utils.update_job_attributes_with_workers`` l. 387-388 →
``WorkSpec.convert_to_job_status(jobStatus)``), so a worker whose body ran to its end
is ``finished`` even when every payload failed.  But a job *without* an outcome takes
the worker's status — a ``finished`` worker would report it finished.  So when a
worker ends, every job of its job set still without an outcome gets one here, failed
(1213 if its payload had started — the batch system ended it — else 1317), and the
worker is ``failed`` with the reason: Harvester's monitor agent then reads those files
in the same cycle (monitor.py l. 700, after ``check_workers`` l. 637) and sets 1008 only on
jobs without a code (l. 405-407; job_spec.py l. 173-178).  Exit codes of the node
agent in the diagnostics: see ``hpc.node_agent``.  (HSF/harvester at d561b72.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compass_pilot.errors import ErrorCode
from harvester_plugins import jobfiles, saga_backend
from harvester_plugins.compat import PluginBase, WorkSpec
from harvester_plugins.logs import plugin_logger
from harvester_plugins.messenger import JOBSET_FILE
from harvester_plugins.submitter import plugin_batch_url

log = plugin_logger(__name__)

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


_AGENT_EXITS = {
    1: "a node agent left jobs without an outcome, or nodes had no MPI rank",
    2: "the node agents could not read the job set",
    143: "the batch system ended the node agents (time limit): running jobs failed 1213",
    137: "a node agent was killed (SIGKILL)",
}


def _from_marker(code: int, batch_id: str) -> tuple[str, str]:
    if code == 0:
        return WorkSpec.ST_finished, ""
    why = _AGENT_EXITS.get(code, "")
    return WorkSpec.ST_failed, f"batch job {batch_id} ended with exit code {code}" + (f": {why}" if why else "")


def settle_jobs(access_point: str | None, batch_id: str, status: str, diag: str) -> tuple[str, str]:
    """Give every job of an ended worker an outcome; a job without one fails the worker.

    Reads the worker's job set (``jobset.json`` under the access point, written by our
    messenger or daemon); without one there is nothing to check.
    """
    if not access_point or status not in (WorkSpec.ST_finished, WorkSpec.ST_failed):
        return status, diag
    from hpc.jobset import read_jobset

    path = Path(access_point) / JOBSET_FILE
    if not path.exists():
        return status, diag
    try:
        jobset = read_jobset(path)
    except ValueError as exc:
        log.error("worker at %s: %s", access_point, exc)
        return status, diag
    names = jobfiles.names_from(jobset.report_files)
    lost = []
    for node in range(jobset.nodes):
        for nj in jobset.jobs_of(node):
            if jobfiles.has_outcome(nj.workdir, names):
                continue
            started = (Path(jobset.reports_dir) / f"{nj.panda_id}.started").exists()
            code = ErrorCode.BATCH_TIME_LIMIT if started else ErrorCode.LOST_CONTACT
            why = f"batch job {batch_id} ended ({status}) without a result for this job"
            outcome = jobfiles.JobOutcome(nj.panda_id, nj.job.attempt_nr, "failed", int(code), why)
            try:
                jobfiles.write_outcome(nj.workdir, outcome, names)
            except OSError as exc:
                log.error("job %d: cannot write its outcome: %s", nj.panda_id, exc)
            lost.append(nj.panda_id)
    if not lost:
        return status, diag
    log.warning("batch job %s: %d job(s) without a result: %s", batch_id, len(lost), lost[:10])
    note = f"{len(lost)} job(s) ended without a result (node agent died or was killed)"
    return WorkSpec.ST_failed, f"{diag}; {note}" if diag else f"batch job {batch_id}: {note}"


class SagaMonitor(PluginBase):
    """Harvester monitor plugin on radical.saga (no state)."""

    def check_workers(self, workspec_list: list[Any]) -> tuple[bool, list[tuple[str, str]]]:
        results: list[tuple[str, str]] = []
        for workspec in workspec_list:
            try:
                status, diag = self._check_one(workspec)
                if status in (WorkSpec.ST_finished, WorkSpec.ST_failed):
                    access_point = workspec.get_access_point() if workspec.accessPoint else None
                    status, diag = settle_jobs(access_point, str(workspec.batchID), status, diag)
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
