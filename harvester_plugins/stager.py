"""CopytoolStager: Harvester's stage-out of what each job reported, with our copytools.

The files come from the job's ``event_status.dump.json`` (written by the node agent,
read by the messenger; Harvester turns each entry into an out FileSpec with ``path``,
``fsize``, ``chksum`` and ``fileAttributes["guid"]``, core_utils.py l. 349-377 at
d561b72).  Each goes to ``<output_root>/<destinationDblock>/<lfn>`` — the same place
the grid pilot and the daemon put it (``experiment.compass.output_dest_path``).  Before
the transfer the file must still be what the node reported (size and adler32: a
truncated copy on the shared file system is caught here, not at merging time); the
copytool then verifies size and adler32 at the destination.  A transferred file is
``finished`` and gets the destination's checksum, so Harvester's output report
(``core_utils.get_output_file_report``) sends PanDA the verified values.

Synchronous: ``trigger_stage_out`` transfers, ``check_stage_out_status`` reports the
result from the files' statuses.  Errors keep our codes (1137 stage-out failed, 1176
permission, 1165 an output the job did not list); a timeout (1152) is retried next
cycle.  COMPASS outputs are not zipped: ``zip_output`` has nothing to do.

Queue-config keys: ``siteConfig`` or ``storage`` (see ``harvester_plugins.transfer``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compass_pilot.errors import ErrorCode, PilotError, StageOutError
from harvester_plugins import jobfiles, transfer
from harvester_plugins.compat import PluginBase
from harvester_plugins.logs import plugin_logger

log = plugin_logger(__name__)


class CopytoolStager(PluginBase):
    """Harvester stager plugin on our copytools (no state)."""

    def trigger_stage_out(self, jobspec: Any) -> tuple[bool | None, str]:
        logger = self.make_logger(log, f"PandaID={jobspec.PandaID}", method_name="trigger_stage_out")
        todo = list(jobspec.get_output_file_specs(skip_done=True))
        try:
            from compass_pilot.experiment import compass

            job = transfer.our_job(jobspec, self)
            declared = {spec.lfn: spec for spec in job.output_files}
            if job.log_file is not None:
                declared[job.log_file.lfn] = job.log_file
            copytool = transfer.copytool_of(self) if todo else None
            for file_spec in todo:
                spec = declared.get(file_spec.lfn)
                if spec is None:
                    file_spec.status = "failed"
                    raise StageOutError(f"{file_spec.lfn} is not an output of this job", ErrorCode.MISSING_OUTPUT)
                local = Path(file_spec.path)
                attrs = file_spec.fileAttributes or {}
                guid = attrs.get("guid") or spec.guid
                try:
                    _check_unchanged(local, file_spec)
                    report = copytool.stage_out(local, compass.output_dest_path(job, spec), guid=guid)  # type: ignore[union-attr]
                except PilotError:
                    file_spec.status = "failed"
                    raise
                file_spec.fsize, file_spec.chksum, file_spec.status = report.fsize, report.adler32, "finished"
                file_spec.fileAttributes = {**attrs, "guid": report.guid, "surl": report.surl}
                logger.info(f"{file_spec.lfn} → {report.surl} ({report.fsize} bytes, adler32 {report.adler32})")
        except PilotError as exc:
            status, diag = transfer.fail(jobspec, exc, overwrite=True)
            logger.error(f"stage-out {'failed' if status is False else 'to retry'}: {diag}")
            return status, diag
        except OSError as exc:
            logger.warning(f"stage-out to retry: {exc}")
            return None, f"stage-out: {exc}"
        return True, ""

    def check_stage_out_status(self, jobspec: Any) -> tuple[bool | None, str]:
        """Stage-out is synchronous: True once every file is finished, False if one failed."""
        files = list(jobspec.get_output_file_specs(skip_done=False))
        failed = [f.lfn for f in files if f.status == "failed"]
        if failed:
            return False, f"stage-out failed for {', '.join(failed[:5])}"
        pending = [f.lfn for f in files if f.status != "finished"]
        if pending:
            return None, f"{len(pending)} file(s) not transferred yet"
        return True, ""

    def zip_output(self, jobspec: Any) -> tuple[bool, str]:
        return True, ""  # COMPASS outputs are shipped as they are

    def async_zip_output(self, jobspec: Any) -> tuple[bool, str]:
        return True, ""

    def post_zip_output(self, jobspec: Any) -> tuple[bool, str]:
        return True, ""


def _check_unchanged(local: Path, file_spec: Any) -> None:
    """The file must still be what the node agent listed (size, adler32)."""
    try:
        size = local.stat().st_size
    except OSError as exc:
        raise StageOutError(f"output {local.name} is gone: {exc.strerror}", ErrorCode.MISSING_OUTPUT) from None
    if file_spec.fsize is not None and size != int(file_spec.fsize):
        raise StageOutError(f"output {local.name}: {size} bytes, the node listed {file_spec.fsize}")
    listed = str(file_spec.chksum or "").split(":")[-1]
    if listed and jobfiles.adler32_of(local) != listed:
        raise StageOutError(f"output {local.name}: adler32 differs from what the node listed ({listed})")
