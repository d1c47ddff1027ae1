"""CopytoolPreparator: Harvester's stage-in of a job's inputs with our copytools.

A job is prepared before Harvester has a worker for it, so its per-job access point
does not exist yet: inputs go to ``<localBasePath>/<PandaID>/<lfn>`` (the layout of
Harvester's own xrdcp preparator, keyed by job), size and adler32 checked against the
job's ``fsize`` / ``checksum``.  ``resolve_input_paths`` records those paths on the
job (``set_input_file_paths``), and the messenger links each one into
``<accessPoint>/<PandaID>/<lfn>`` when it feeds the job to its worker — the job's work
dir, where the payload reads them (as Harvester's shared_file_messenger ``feed_jobs``
links ``fileSpec.path``, l. 401-412 at d561b72).

Synchronous: ``trigger_preparation`` copies (several jobs' stage-ins run in Harvester's
preparator threads), ``check_stage_in_status`` confirms the files are there.  Errors
keep our codes: 1331 missing input, 1229 size / checksum mismatch, 1099 stage-in
failed (unreadable source), 1175 permission; a timeout (1151) is retried next cycle.

Queue-config keys: ``siteConfig`` or ``storage`` (see ``harvester_plugins.transfer``),
``localBasePath`` (default ``<hpc.shared_dir>/inputs`` of the site config; best in the queue's
``common`` section, so the sweeper removes the inputs with the worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compass_pilot.errors import PilotError
from harvester_plugins import transfer
from harvester_plugins.compat import PluginBase
from harvester_plugins.logs import plugin_logger

log = plugin_logger(__name__)


def _base_path(plugin: Any) -> Path:
    base = getattr(plugin, "localBasePath", None)
    if base:
        return Path(str(base))
    from compass_pilot.config import SiteConfig, expand, load_site_config

    path = getattr(plugin, "siteConfig", None)
    site = load_site_config(path) if path else SiteConfig()
    return Path(expand(site.hpc.shared_dir)) / "inputs"


class CopytoolPreparator(PluginBase):
    """Harvester preparator plugin on our copytools (no state)."""

    def job_dir(self, jobspec: Any) -> Path:
        return _base_path(self) / str(jobspec.PandaID)

    def trigger_preparation(self, jobspec: Any) -> tuple[bool | None, str]:
        """Copy every input of the job, checked; (True, "") when all are in place."""
        logger = self.make_logger(log, f"PandaID={jobspec.PandaID}", method_name="trigger_preparation")
        try:
            from compass_pilot.experiment import compass

            job = transfer.our_job(jobspec, self)
            target = self.job_dir(jobspec)
            target.mkdir(parents=True, exist_ok=True)
            copytool = transfer.copytool_of(self)
            for spec in job.input_files:
                copytool.stage_in(spec, compass.input_src_path(job, spec), target)
        except PilotError as exc:
            status, diag = transfer.fail(jobspec, exc)
            logger.error(f"stage-in {'failed' if status is False else 'to retry'}: {diag}")
            return status, diag
        except OSError as exc:
            logger.warning(f"stage-in to retry: {exc}")
            return None, f"stage-in: {exc}"
        logger.info(f"{len(job.input_files)} input(s) staged in to {target}")
        return True, ""

    def check_stage_in_status(self, jobspec: Any) -> tuple[bool | None, str]:
        """Stage-in is synchronous: done when every input is in the job's directory."""
        target = self.job_dir(jobspec)
        missing = [lfn for lfn in jobspec.get_input_file_attributes() if not (target / lfn).is_file()]
        if missing:
            return None, f"input(s) not in place yet: {', '.join(missing[:5])}"
        return True, ""

    def resolve_input_paths(self, jobspec: Any) -> tuple[bool, str]:
        """Each input's path on the shared file system, for the messenger to link."""
        target = self.job_dir(jobspec)
        paths = {lfn: {"path": str(target / lfn)} for lfn in jobspec.get_input_file_attributes()}
        jobspec.set_input_file_paths(paths)
        return True, ""
