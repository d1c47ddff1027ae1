"""The job-update field names of both PanDA dialects, in one table.

The client encodes a JobReport with it and the embedded dispatcher decodes updates with
it, so the two can never disagree on a name.  Legacy names follow pilot3's updateJob
form; v1 names follow panda-server ``api/v1/pilot_api.py`` ``update_job``.
"""

from __future__ import annotations

#: (JobReport attribute, legacy form name, v1 parameter name)
UPDATE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("panda_id", "jobId", "job_id"),
    ("state", "state", "job_status"),
    ("attempt_nr", "attemptNr", "attempt_nr"),
    ("site_name", "siteName", "site_name"),
    ("node", "node", "node"),
    ("scheduler_id", "schedulerID", "scheduler_id"),
    ("pilot_id", "pilotID", "pilot_id"),
    ("batch_id", "batchID", "batch_id"),
    ("core_count", "coreCount", "core_count"),
    ("start_time", "startTime", "start_time"),
    ("end_time", "endTime", "end_time"),
    ("n_events", "nEvents", "n_events"),
    ("cpu_consumption_time", "cpuConsumptionTime", "cpu_consumption_time"),
    ("max_rss", "maxRSS", "max_rss"),
    ("job_metrics", "jobMetrics", "job_metrics"),
    ("pilot_error_code", "pilotErrorCode", "pilot_error_code"),
    ("pilot_error_diag", "pilotErrorDiag", "pilot_error_diag"),
    ("trans_exit_code", "transExitCode", "trans_exit_code"),
    ("exe_error_code", "exeErrorCode", "exe_error_code"),
    ("exe_error_diag", "exeErrorDiag", "exe_error_diag"),
    ("pilot_timing", "pilotTiming", "pilot_timing"),
)
#: the JSON file report {lfn: {guid, fsize, adler32, surl}}: "xml" in legacy despite its name
FILE_REPORT = ("output_report", "xml", "job_output_report")
CPU_UNIT = ("cpu_consumption_unit", "cpuConsumptionUnit", "cpu_consumption_unit")
#: the job report (JSON) the server's Adder reads per-file event counts from:
#: ``files.output[].subFiles[].{name, nentries}`` (panda-server ``dataservice/adder_gen.py``)
META_DATA = ("meta_data", "metaData", "meta_data")

DIALECT_COLUMN = {"legacy": 1, "v1": 2}


def wire_to_attr(dialect: str) -> dict[str, str]:
    """Wire name → attribute name, for decoding an update (the dispatcher)."""
    column = DIALECT_COLUMN[dialect]
    return {row[column]: row[0] for row in (*UPDATE_FIELDS, FILE_REPORT, CPU_UNIT, META_DATA)}
