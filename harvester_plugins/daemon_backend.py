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

    def prepare(self) -> None:
        """Open the job service in the background while the daemon fetches and stages in.

        radical.saga takes a second or two to start its shell and probe the batch tools;
        done here, that time overlaps the first getJob and the stage-ins instead of
        delaying the first submission.  A failure is only logged: ``submit`` meets it
        again and turns it into a worker failure with the batch system's message.
        """

        def open_service() -> None:
            try:
                saga_backend.get_service(self.site.hpc.batch_url)
            except Exception as exc:
                log.warning("job service %s not ready yet: %s", self.site.hpc.batch_url, exc)

        threading.Thread(target=open_service, name="open-job-service", daemon=True).start()

    def _workspec(self, subdir: Path, batch_id: str = "") -> Any:
        workspec = WorkSpec()
        workspec.workerID = subdir.name
        workspec.mapType = WorkSpec.MT_MultiJobs
        workspec.accessPoint = str(subdir)
        workspec.computingSite = self.site.site.name
        workspec.batchID = batch_id or None
        return workspec

    def submit(self, submission: Any, subdir: Path, jobset: Path) -> str:
        """Submit one submission; returns the batch id. Raises RuntimeError with the batch system's message."""
        plugins = plugins_for_site(self.site, access_point=str(subdir))
        workspec = self._workspec(Path(subdir))
        workspec.nCore = submission.nodes * submission.slots_per_node
        workspec.maxWalltime = submission.walltime
        workspec.nJobs = len(submission.jobs)
        workspec.workParams = params_from_submission(
            submission, jobset=str(jobset), jobName=Path(subdir).name, fakeNodes=self.site.hpc.fake_nodes or None
        )
        ((ok, diag),) = plugins.submitter.submit_workers([workspec])
        if not ok:
            kind = "temporary" if ok is None else "permanent"
            raise RuntimeError(f"{diag} ({kind})")
        return str(workspec.batchID)

    def status(self, batch_id: str, subdir: Path) -> str:
        """A WorkSpec status (submitted, running, finished, failed, cancelled, idle, missed)."""
        workspec = self._workspec(Path(subdir), batch_id)
        _, ((status, diag),) = plugins_for_site(self.site, access_point=str(subdir)).monitor.check_workers([workspec])
        if diag:
            log.info("batch job %s: %s (%s)", batch_id, status, diag)
        return str(status)

    def ended(self, subdir: Path) -> bool:
        """The worker wrapper has left its exit code: the batch job is over (no batch system call)."""
        return saga_backend.read_exit_marker(str(subdir)) is not None

    def kill(self, batch_id: str, subdir: Path) -> None:
        workspec = self._workspec(Path(subdir), batch_id)
        ((ok, diag),) = plugins_for_site(self.site, access_point=str(subdir)).sweeper.kill_workers([workspec])
        if not ok:
            raise RuntimeError(diag)
