"""Harvester plugins on radical.saga, shared by a real Harvester and our MOM-node daemon.

Harvester loads ``harvester_plugins.submitter.SagaSubmitter`` & co. by module and class
name from its queue configuration (see ``docs/panda_queueconfig.json``); the daemon
gets the very same classes through :func:`plugins_for_site`, built from a queue-config
dict derived from the site file, and calls them the way Harvester does.  As in
Harvester, the facade builds new instances on every call — the plugins keep no state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

PLUGIN_MODULES = {
    "submitter": ("harvester_plugins.submitter", "SagaSubmitter"),
    "monitor": ("harvester_plugins.monitor", "SagaMonitor"),
    "sweeper": ("harvester_plugins.sweeper", "SagaSweeper"),
    "workerMaker": ("harvester_plugins.workermaker", "MultiJobWorkerMaker"),
    "messenger": ("harvester_plugins.messenger", "SharedFileMessenger"),
    # stage-in / stage-out on our copytools (local, xrootd): size + adler32 checked
    "preparator": ("harvester_plugins.preparator", "CopytoolPreparator"),
    "stager": ("harvester_plugins.stager", "CopytoolStager"),
}


@dataclass
class BatchPlugins:
    """The five plugins the daemon drives, plus the queue config they were built from."""

    maker: Any
    submitter: Any
    monitor: Any
    sweeper: Any
    messenger: Any
    queue_config: Any


def queue_config_for_site(site: Any, *, access_point: str | None = None) -> dict[str, Any]:
    """A Harvester queue-config entry (all seven sections, mapType ManyToOne) for a site config."""
    from compass_pilot.config import expand

    hpc = site.hpc
    section = {k: {"module": m, "name": n} for k, (m, n) in PLUGIN_MODULES.items()}
    section["submitter"].update(
        launcher=hpc.launcher,
        projectname=hpc.project,
        nCorePerNode=hpc.slots_per_node,
        fakeNodes=hpc.fake_nodes,
        python=hpc.python,
    )
    section["workerMaker"]["hpc"] = dataclasses.asdict(hpc)
    section["messenger"]["accessPoint"] = access_point or expand(hpc.shared_dir) + "/${workerID}"
    if site.source not in ("", "<defaults>"):
        for role in ("messenger", "preparator", "stager"):
            section[role]["siteConfig"] = site.source
    else:
        for role in ("preparator", "stager"):
            section[role]["storage"] = dataclasses.asdict(site.storage)
    return {
        "prodSourceLabel": site.site.job_label,
        "mapType": "ManyToOne",
        "maxWorkers": hpc.max_submissions,
        "nQueueLimitWorker": hpc.max_submissions,
        "walltimeLimit": max((q.max_walltime for q in hpc.queues), default=0),
        # localBasePath: where the preparator stages inputs and the sweeper removes them
        "common": {"batchURL": hpc.batch_url, "localBasePath": expand(hpc.shared_dir) + "/inputs"},
        **section,
    }


def plugins_for_site(site: Any, *, access_point: str | None = None) -> BatchPlugins:
    """New plugin instances for a site, built exactly as Harvester's PluginFactory builds them."""
    from harvester_plugins import compat  # here: node agents import this package for jobfiles only (~7 ms)

    queue_name = site.site.name
    queue_dict = queue_config_for_site(site, access_point=access_point)
    sections = compat.plugin_sections(queue_name, queue_dict)
    return BatchPlugins(
        maker=compat.get_plugin(sections["workerMaker"]),
        submitter=compat.get_plugin(sections["submitter"]),
        monitor=compat.get_plugin(sections["monitor"]),
        sweeper=compat.get_plugin(sections["sweeper"]),
        messenger=compat.get_plugin(sections["messenger"]),
        queue_config=compat.queue_config_from_dict(queue_name, queue_dict),
    )


__all__ = ["PLUGIN_MODULES", "BatchPlugins", "plugins_for_site", "queue_config_for_site"]
