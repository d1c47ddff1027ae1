"""The MOM-node daemon's batch backend, made of the Harvester plugins.

``compass_pilot.modes.multijob`` asks for ``submit`` / ``status`` / ``kill`` with a
submission, its directory and a batch id; each call here builds fresh plugins
(:func:`harvester_plugins.plugins_for_site`) and a WorkSpec, and calls them the way
Harvester does — so what runs on the MOM node is exactly what Harvester would run.
The submission's directory is the worker's access point.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from harvester_plugins import plugins_for_site, saga_backend
from harvester_plugins.compat import WorkSpec
from harvester_plugins.workermaker import params_from_submission

log = logging.getLogger(__name__)


class PluginBatchBackend:
    """``BatchBackend`` of the daemon on SagaSubmitter / SagaMonitor / SagaSweeper."""

    def __init__(self, site: Any) -> None:
        saga_backend.batch_kind(site.hpc.batch_url)  # a bad URL fails at start, naming it
        self.site = site

    def preflight(self) -> None:
        """Adaptor, submit command and job service checked before the daemon takes a job.

        Opening the job service here (bounded by ``hpc.batch_timeout``) also warms it up
        for the first submission.  Raises :class:`compass_pilot.preflight.PreflightError`.
        """
        from compass_pilot.preflight import check_batch

        check_batch(self.site)

    def open_service(self) -> None:
        """Open (and cache) the job service now, so the first submission finds it open.

        Bounded by ``hpc.batch_timeout``; a failure is a temporary BatchError (the next
        call opens it again).  Unlike :meth:`_bounded`, a timed-out open is not dropped:
        its stuck thread holds the service cache's lock, and the next call's own bound
        (then the broker's answer deadline in the daemon) handles what follows.
        """
        url = self.site.hpc.batch_url
        outcome: dict[str, BaseException] = {}

        def run() -> None:
            try:
                saga_backend.get_service(url)
            except BaseException as exc:  # handed back to the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="batch-open", daemon=True)
        thread.start()
        thread.join(self.site.hpc.batch_timeout)
        if thread.is_alive():
            raise saga_backend.BatchError(f"opening job service {url}: no answer in time", temporary=True)
        if "error" in outcome:
            raise outcome["error"]

    def _workspec(self, subdir: Path, batch_id: str = "") -> Any:
        workspec = WorkSpec()
        workspec.workerID = subdir.name
        workspec.mapType = WorkSpec.MT_MultiJobs
        workspec.accessPoint = str(subdir)
        workspec.computingSite = self.site.site.name
        workspec.batchID = batch_id or None
        return workspec

    def _bounded(self, what: str, call: Any, *args: Any) -> Any:
        """``call(*args)`` given up after ``hpc.batch_timeout`` s: a hung qsub / qstat must not stall the daemon.

        The call runs on its own thread; when it does not answer in time the job service
        is dropped (its shell may be wedged, and its lock held by the stuck thread), so
        the next call opens a fresh one, and a temporary BatchError is raised.
        """
        timeout = self.site.hpc.batch_timeout
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = call(*args)
            except BaseException as exc:  # handed back to the daemon's thread
                outcome["error"] = exc

        thread = threading.Thread(target=run, name=f"batch-{what}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            saga_backend.drop_service(self.site.hpc.batch_url)
            raise saga_backend.BatchError(f"batch {what}: no answer within {timeout:.0f} s", temporary=True)
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def submit(self, submission: Any, subdir: Path, jobset: Path) -> str:
        """Submit one submission; returns the batch id. Raises BatchError (``temporary`` says whether to retry)."""
        return str(self._bounded("submit", self._submit, submission, subdir, jobset))

    def _submit(self, submission: Any, subdir: Path, jobset: Path) -> str:
        plugins = plugins_for_site(self.site, access_point=str(subdir))
        workspec = self._workspec(Path(subdir))
        workspec.nCore = submission.nodes * submission.slots_per_node
        workspec.maxWalltime = submission.walltime
        workspec.nJobs = len(submission.jobs)
        workspec.workParams = params_from_submission(
            submission,
            jobset=str(jobset),
            jobName=Path(subdir).name,
            fakeNodes=self.site.hpc.fake_nodes or None,
            jobsetWait=self.site.hpc.jobset_wait or None,  # submitted while its inputs are staged in
        )
        ((ok, diag),) = plugins.submitter.submit_workers([workspec])
        if not ok:  # Harvester's contract: None = temporary, False = permanent
            raise saga_backend.BatchError(str(diag), temporary=ok is None)
        return str(workspec.batchID)

    def find(self, job_name: str, subdir: Path) -> str | None:
        """The batch id of this submission's batch job, looked up by its unique name (recovery)."""
        url = self.site.hpc.batch_url
        timeout = self.site.hpc.batch_timeout
        return saga_backend.find_job(url, job_name, str(subdir), timeout=timeout)  # type: ignore[no-any-return]

    def status(self, batch_id: str, subdir: Path) -> str:
        """A WorkSpec status (submitted, running, finished, failed, cancelled, idle, missed)."""
        return str(self._bounded("status", self._status, batch_id, subdir))

    def _status(self, batch_id: str, subdir: Path) -> str:
        workspec = self._workspec(Path(subdir), batch_id)
        _, ((status, diag),) = plugins_for_site(self.site, access_point=str(subdir)).monitor.check_workers([workspec])
        if diag:
            log.info("batch job %s: %s (%s)", batch_id, status, diag)
        return str(status)

    def ended(self, subdir: Path) -> bool:
        """The worker wrapper has left its exit code: the batch job is over (no batch system call)."""
        return saga_backend.read_exit_marker(str(subdir)) is not None

    def kill(self, batch_id: str, subdir: Path) -> None:
        self._bounded("kill", self._kill, batch_id, subdir)

    def _kill(self, batch_id: str, subdir: Path) -> None:
        workspec = self._workspec(Path(subdir), batch_id)
        ((ok, diag),) = plugins_for_site(self.site, access_point=str(subdir)).sweeper.kill_workers([workspec])
        if not ok:
            raise RuntimeError(diag)
