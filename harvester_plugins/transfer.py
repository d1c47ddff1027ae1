"""What the preparator and the stager share: our copytool, our job, Harvester's tri-state.

Both plugins move files with the project's copytools (``local`` or ``xrootd``: size and
adler32 checked at the far end) and name paths with the COMPASS plug-in
(``experiment.compass.input_src_path`` / ``output_dest_path``), exactly as the grid
pilot and the daemon do, so a job staged by Harvester lands where ProdSys expects it.

Queue-config keys of both sections: ``siteConfig`` (a site YAML whose ``storage``
section is used) or ``storage`` (a mapping of ``StorageSection`` fields).

Harvester's agents read a plugin's ``(status, diag)`` as: True done, False fatal (the
job fails), None try again later (preparator.py l. 85-136, stager.py l. 70-90 and
136-156 at d561b72).  A failure also sets the job's own pilot error, with our code,
*before* the agent sets its generic one (1099 / 1137), which ``set_pilot_error`` then
keeps (job_spec.py l. 544-548); for a job whose payload already reported code 0 the
code is overwritten (``set_one_attribute``), since only a transfer failure can fail it
now — a payload's own non-zero code is never replaced by a failed log transfer.
"""

from __future__ import annotations

from typing import Any

from compass_pilot.errors import ErrorCode, PilotError
from harvester_plugins.sections import section_of

#: Our codes for a transfer that timed out: worth another cycle (None), not a failed job.
TEMPORARY_CODES = frozenset({ErrorCode.STAGE_IN_TIMEOUT, ErrorCode.STAGE_OUT_TIMEOUT})


def copytool_of(plugin: Any) -> Any:
    from compass_pilot.copytools import make_copytool

    return make_copytool(section_of(plugin, "storage"))


def our_job(jobspec: Any, plugin: Any = None) -> Any:
    """Our validated JobSpec from a Harvester JobSpec's job dict (raises BadJobSpec).

    Harvester's stager agent hands over *slim* jobs: ``jobParams`` is not loaded
    (``JobSpec.skipAttrsToSlim``, job_spec.py l. 78; db_proxy ``get_jobs_for_stage_out``).
    The full job is then read through the ``dbInterface`` PluginFactory gives the plugin.
    """
    from compass_pilot.job import JobSpec

    params = jobspec.jobParams
    if params is None:
        db = getattr(getattr(plugin, "dbInterface", None), "dbProxy", None)
        full = db.get_job(jobspec.PandaID) if db is not None else None
        params = getattr(full, "jobParams", None)
    return JobSpec.from_panda(params)


def fail(jobspec: Any, exc: PilotError, *, overwrite: bool = False) -> tuple[bool | None, str]:
    """The job's pilot error from ``exc``; None for a timeout (retry next cycle), else False."""
    diag = exc.pilot_error_diag()
    if exc.code in TEMPORARY_CODES:
        return None, diag
    if overwrite and not jobspec.get_one_attribute("pilotErrorCode"):  # a payload's own error stays first
        jobspec.set_one_attribute("pilotErrorCode", int(exc.code))
        jobspec.set_one_attribute("pilotErrorDiag", diag)
    else:
        jobspec.set_pilot_error(int(exc.code), diag)
    return False, diag
