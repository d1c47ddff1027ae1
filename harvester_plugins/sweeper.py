"""SagaSweeper: kill workers in the batch system and clean their access points.

Harvester prefers ``kill_workers(list)`` (one ``(bool, diag)`` per worker, in order)
over ``kill_worker``; ``sweep_worker`` is required and removes the worker's directory
once Harvester is done with it.  A job the batch system no longer knows is already
gone, which is what a kill wants: success.

With ``localBasePath`` (the preparator's, best given in the queue's ``common`` section)
the sweep also removes each job's staged-in inputs, ``<localBasePath>/<PandaID>/``: the
access point only held links to them.  The worker's PandaIDs come from the WorkSpec or,
as Harvester's sweeper hands over bare workers, from ``worker_pandaids.json``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from harvester_plugins import saga_backend
from harvester_plugins.compat import PluginBase
from harvester_plugins.logs import plugin_logger
from harvester_plugins.submitter import plugin_batch_url

log = plugin_logger(__name__)


class SagaSweeper(PluginBase):
    """Harvester sweeper plugin on radical.saga (no state)."""

    def _remove_inputs(self, workspec: Any, access_point: Path) -> None:
        base = getattr(self, "localBasePath", None)
        if not base:
            return
        ids = list(getattr(workspec, "pandaid_list", None) or [])
        if not ids:
            from harvester_plugins.jobfiles import read_json
            from harvester_plugins.messenger import DEFAULT_FILES

            found = read_json(access_point / DEFAULT_FILES["pandaIDsFile"])
            ids = found if isinstance(found, list) else []
        for panda_id in ids:
            target = Path(str(base)) / str(int(panda_id))
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)

    def kill_workers(self, workspec_list: list[Any]) -> list[tuple[bool, str]]:
        return [self.kill_worker(workspec) for workspec in workspec_list]

    def kill_worker(self, workspec: Any) -> tuple[bool, str]:
        try:
            batch_id = workspec.batchID
            if not batch_id:
                return True, "worker has no batch id: nothing to kill"
            attrs = workspec.workAttributes if isinstance(workspec.workAttributes, dict) else {}
            url = str(attrs.get("batchURL") or plugin_batch_url(self))
            saga_id = str(attrs.get("sagaJobID") or saga_backend.make_job_id(url, str(batch_id)))
            saga_backend.cancel(url, saga_id)
            log.info("worker %s: batch job %s cancelled", workspec.workerID, batch_id)
            return True, ""
        except saga_backend.UnknownJob as exc:
            return True, f"already gone: {exc}"
        except Exception as exc:  # never an exception out of the plugin
            log.error("worker %s: kill failed: %s", getattr(workspec, "workerID", "?"), exc)
            return False, str(exc)

    def sweep_worker(self, workspec: Any) -> tuple[bool, str]:
        """Remove the worker's access point (Harvester calls this after the worker is done)."""
        try:
            access_point = workspec.get_access_point() if workspec.accessPoint else ""
            if not access_point:
                return True, "worker has no access point"
            saga_backend.check_workdir(access_point)
            path = Path(access_point)
            if path.resolve() == Path("/") or len(path.resolve().parts) < 3:
                return False, f"refusing to remove {access_point}: too close to the root"
            if not path.exists():
                return True, "access point already removed"
            self._remove_inputs(workspec, path)
            shutil.rmtree(path)
            log.info("worker %s: removed %s", workspec.workerID, access_point)
            return True, ""
        except Exception as exc:
            return False, f"cannot sweep worker: {exc}"
