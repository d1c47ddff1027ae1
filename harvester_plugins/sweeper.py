"""SagaSweeper: kill workers in the batch system and clean their access points.

Harvester prefers ``kill_workers(list)`` (one ``(bool, diag)`` per worker, in order)
over ``kill_worker``; ``sweep_worker`` is required and removes the worker's directory
once Harvester is done with it.  A job the batch system no longer knows is already
gone, which is what a kill wants: success.
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
            shutil.rmtree(path)
            log.info("worker %s: removed %s", workspec.workerID, access_point)
            return True, ""
        except Exception as exc:
            return False, f"cannot sweep worker: {exc}"
