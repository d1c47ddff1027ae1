"""SagaSubmitter: submit Harvester workers to PBS/Torque, Slurm, Condor or fork via radical.saga.

Queue-config keys (all optional except the URL): ``batchURL`` (or Harvester's own
``adaptor`` key) — the radical.saga job service URL; ``launcher`` — aprun, srun or
mpiexec; ``projectname`` / ``project`` — account; ``localqueue`` — queue when the
worker names none; ``nCorePerNode``; ``fakeNodes`` — one host plays several nodes;
``python`` — interpreter on the compute nodes.

What a worker must carry (``WorkSpec.workParams``, set by our MultiJobWorkerMaker or
the daemon): ``queue``, ``nodes``, ``slotsPerNode``, ``walltime`` (s) and optionally
``jobset`` (default ``<accessPoint>/jobset.json``), ``jobName`` and ``jobsetWait`` (s: the
job set may be written after the batch job starts — the daemon stages in meanwhile —
and the agents wait that long for it).  The batch script
body then starts one ``hpc.node_agent`` per node via ``hpc.batch.render_script``.  A
workParams with an ``executable`` string (or a plain string, Harvester's SAGA
convention, with ``{work_dir}`` filled in) is run as the body instead.

Return: one ``(True | False | None, diag)`` per worker, in order — False is permanent
(the batch system refused), None temporary (the service could not be reached).  No
exception leaves ``submit_workers``.
"""

from __future__ import annotations

import datetime
import math
import socket
from typing import Any

from harvester_plugins import saga_backend
from harvester_plugins.compat import PluginBase
from harvester_plugins.logs import plugin_logger

log = plugin_logger(__name__)


def plugin_batch_url(plugin: Any) -> str:
    """The job service URL of a plugin built from a queue config (``batchURL`` or ``adaptor``)."""
    url = getattr(plugin, "batchURL", None) or getattr(plugin, "adaptor", None)
    if not url:
        raise ValueError("queue config: the plugin section needs 'batchURL' (a radical.saga job service URL)")
    saga_backend.batch_kind(url)
    return str(url)


def _positive_int(params: dict[str, Any], key: str, default: int | None = None) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"workParams[{key!r}]: expected a positive integer, got {value!r}")
    return value


class SagaSubmitter(PluginBase):
    """Harvester submitter plugin on radical.saga (no state: everything lives on the WorkSpec)."""

    def __init__(self, **kwarg: Any) -> None:
        self.launcher = "mpiexec"
        self.projectname = ""
        self.localqueue = ""
        self.nCorePerNode = 1
        self.fakeNodes = False
        self.python = ""
        PluginBase.__init__(self, **kwarg)

    def submit_workers(self, workspec_list: list[Any]) -> list[tuple[bool | None, str]]:
        results: list[tuple[bool | None, str]] = []
        for workspec in workspec_list:
            try:
                results.append(self._submit_one(workspec))
            except saga_backend.BatchError as exc:
                log.error("worker %s: %s", getattr(workspec, "workerID", "?"), exc)
                results.append((None if exc.temporary else False, str(exc)))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("worker %s: bad worker: %s", getattr(workspec, "workerID", "?"), exc)
                results.append((False, f"bad worker: {exc}"))
            except Exception as exc:  # the contract: a batch problem is a worker failure, never an exception
                log.exception("worker %s: submission failed", getattr(workspec, "workerID", "?"))
                results.append((False, f"submission failed: {type(exc).__name__}: {exc}"))
        return results

    def _body(self, workspec: Any, url: str, params: dict[str, Any], access_point: str) -> str:
        from hpc.batch import render_script
        from hpc.launch import agent_command
        from hpc.packing import Submission

        sub = Submission(
            queue=str(params.get("queue") or self.localqueue or "batch"),
            nodes=_positive_int(params, "nodes"),
            slots_per_node=_positive_int(params, "slotsPerNode"),
            walltime=_positive_int(params, "walltime"),
            jobs=(),
            placements=(),
        )
        fake = bool(params.get("fakeNodes", self.fakeNodes))
        jobset = str(params.get("jobset") or f"{access_point}/jobset.json")
        wait = params.get("jobsetWait")  # the daemon's: its job set comes when stage-in ends
        wait = float(wait) if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0 else 0.0
        agent_cmd = agent_command(jobset, fake_nodes=fake, python=self.python, jobset_wait=wait)
        return render_script(
            sub,
            launcher=str(params.get("launcher") or self.launcher),
            kind=saga_backend.batch_kind(url),
            workdir=access_point,
            agent_cmd=agent_cmd,
            project=str(getattr(self, "project", "") or self.projectname or ""),
            job_name=str(params.get("jobName") or f"compass-{workspec.workerID}"),
            body_only=True,
            fake_nodes=fake,
        )

    def _submit_one(self, workspec: Any) -> tuple[bool | None, str]:
        url = plugin_batch_url(self)
        access_point = workspec.get_access_point()
        if not access_point:
            raise ValueError("worker has no accessPoint")
        saga_backend.check_workdir(access_point)
        raw = workspec.workParams
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if isinstance(raw, str):
            body = raw.format(work_dir=access_point)
        elif isinstance(params.get("executable"), str):
            body = params["executable"]
        else:
            body = self._body(workspec, url, params, access_point)
        n_core = int(workspec.nCore or 0)
        per_node = int(params.get("slotsPerNode") or self.nCorePerNode or 1)
        nodes = int(params.get("nodes") or max(1, math.ceil(n_core / per_node)))
        walltime = int(params.get("walltime") or workspec.maxWalltime or 3600)
        request = saga_backend.BatchRequest(
            workdir=access_point,
            body=body,
            queue=str(params.get("queue") or self.localqueue or "batch"),
            nodes=nodes,
            slots_per_node=per_node,
            walltime=walltime,
            project=str(getattr(self, "project", "") or self.projectname or ""),
            job_name=str(params.get("jobName") or f"compass-{workspec.workerID}"),
        )
        saga_id, batch_id = saga_backend.submit(url, request)
        workspec.batchID = batch_id
        workspec.submissionHost = socket.gethostname()
        workspec.submitTime = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        workspec.set_work_attributes({"sagaJobID": saga_id, "batchURL": url})
        try:
            workspec.set_log_file("stdout", f"{access_point}/batch.out")
            workspec.set_log_file("stderr", f"{access_point}/batch.err")
        except Exception as exc:  # Harvester's set_log_file needs its panda cache config
            log.debug("cannot register log files: %s", exc)
        log.info(
            "worker %s: batch id %s on %s (queue %s, %d nodes × %d, %d s)",
            workspec.workerID,
            batch_id,
            url,
            request.queue,
            nodes,
            per_node,
            walltime,
        )
        return True, ""
