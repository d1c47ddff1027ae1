"""Pilot error codes and exceptions: one table, PanDA's numbers where PanDA has one.

PanDA pilot3 keeps every error code in a single table with one message per code
(pilot/common/errorcodes.py); the server, the monitor and ProdSys all key on those
numbers, so we reuse them rather than inventing our own. COMPASS-specific payload
failures use the numbers the old COMPASS pilot plug-in reported (1235-1255).
"""

from __future__ import annotations

import signal


class ErrorCode:
    """Numeric pilot error codes (pilotErrorCode in the job report)."""

    GENERAL = 1008
    BAD_JOB_SPEC = 1008
    NO_LOCAL_SPACE = 1098
    STAGE_IN_FAILED = 1099
    STAGE_OUT_FAILED = 1137
    KILLED_BY_SERVER = 1144
    TRF_DOWNLOAD_FAILED = 1149
    LOOPING_JOB = 1150
    STAGE_IN_TIMEOUT = 1151
    STAGE_OUT_TIMEOUT = 1152
    NO_VALID_PROXY = 1163
    MISSING_OUTPUT = 1165
    KILL_SIGNAL_BASE = 1200
    SIGTERM = 1201
    SIGQUIT = 1202
    SIGSEGV = 1203
    SIGXCPU = 1204
    SIGUSR1 = 1205
    SIGBUS = 1206
    SIGKILL = 1207
    OUT_OF_MEMORY = 1212
    BATCH_TIME_LIMIT = 1213
    CHECKSUM_MISMATCH = 1229
    UNKNOWN_FAILURE = 1220
    PAYLOAD_FAILED = 1305
    LOST_CONTACT = 1317
    # the batch system refused or never took a submission (permanent error, or its jobs' submit
    # deadline passed while it kept failing): pilot3's SERVICENOTAVAILABLE, the closest it has
    BATCH_SYSTEM_FAILED = 1324
    # a node agent stopped beating (node died, agent killed): ours, outside pilot3's table (≤ 1386)
    NODE_LOST = 1390
    MISSING_INPUT = 1331
    TRANSFORM_NOT_ALLOWED = 1346
    STAGE_OUT_PERMISSION = 1176
    STAGE_IN_PERMISSION = 1175
    WALLTIME_EXCEEDED = 1213
    # COMPASS payload failures (old COMPASS pilot plug-in numbers)
    COMPASS_FATAL_ERROR = 1235
    COMPASS_CORE_DUMP = 1236
    COMPASS_NO_EVENT = 1237
    COMPASS_EXCEPTION_2 = 1238
    COMPASS_ABORTED = 1239
    COMPASS_NO_END_MARKER = 1240
    COMPASS_CANNOT_ALLOCATE = 1241
    COMPASS_LED_IN_SPILLS = 1243
    CALIBDB_UNAVAILABLE = 1244
    COMPASS_BAD_CALIB_LINE = 1245
    COMPASS_KILLED = 1246
    COMPASS_RETURN_CODE_3 = 1247
    COMPASS_TAPE_NOT_ACCESSIBLE = 1255


#: One message per code, as pilot3 does; the diagnostic sent to PanDA starts with it.
ERROR_MESSAGES: dict[int, str] = {
    1008: "General pilot error",
    1098: "No space left on local disk",
    1099: "Failed to stage-in file",
    1137: "Failed to stage-out file",
    1144: "Job killed by panda server",
    1149: "Transform could not be downloaded",
    1150: "Looping job killed by pilot",
    1151: "File transfer timed out during stage-in",
    1152: "File transfer timed out during stage-out",
    1163: "Voms proxy not valid",
    1165: "Missing output file",
    1175: "Permission denied during stage-in",
    1176: "Permission denied during stage-out",
    1200: "Job terminated by unknown kill signal",
    1201: "Job killed by signal: SIGTERM",
    1202: "Job killed by signal: SIGQUIT",
    1203: "Job killed by signal: SIGSEGV",
    1204: "Job killed by signal: SIGXCPU",
    1205: "Job killed by signal: SIGUSR1",
    1206: "Job killed by signal: SIGBUS",
    1207: "Job killed by signal: SIGKILL",
    1212: "Payload exceeded maximum allowed memory",
    1213: "Job killed by batch system: walltime exceeded",
    1220: "Job failed due to unknown reason",
    1229: "File checksum or size mismatch",
    1305: "Payload execution failed",
    1317: "Lost contact with the pilot",
    1324: "Batch system failed: submission refused or not accepted in time",
    1390: "Compute node lost: its node agent stopped reporting",
    1331: "Input file missing from storage",
    1346: "Transform not found or not allowed by the site config",
    1235: "COMPASS: a fatal error appeared (CORAL)",
    1236: "COMPASS: coral.exe core dump",
    1237: "COMPASS: DaqEventsManager::GetEvent(): no event",
    1238: "COMPASS: abnormal job termination, exception #2",
    1239: "COMPASS: payload aborted",
    1240: "COMPASS: no end-of-job marker in payload output",
    1241: "COMPASS: cannot allocate memory",
    1243: "COMPASS: _LEDinSpills empty string from calib file",
    1244: "COMPASS: cannot connect to the calibration database",
    1245: "COMPASS: readCalibration(): bad line",
    1246: "COMPASS: coral.exe killed",
    1247: "COMPASS: CORAL exiting with return code -3",
    1255: "COMPASS: file not accessible in the tape service class",
}

_SIGNAL_CODES: dict[int, int] = {
    signal.SIGTERM: ErrorCode.SIGTERM,
    signal.SIGQUIT: ErrorCode.SIGQUIT,
    signal.SIGSEGV: ErrorCode.SIGSEGV,
    signal.SIGXCPU: ErrorCode.SIGXCPU,
    signal.SIGUSR1: ErrorCode.SIGUSR1,
    signal.SIGBUS: ErrorCode.SIGBUS,
    signal.SIGKILL: ErrorCode.SIGKILL,
}


def error_message(code: int) -> str:
    """The table's message for a code, or the unknown-failure message."""
    return ERROR_MESSAGES.get(code, ERROR_MESSAGES[ErrorCode.UNKNOWN_FAILURE])


def code_for_signal(signum: int) -> int:
    """Pilot error code for a payload that died by a signal (pilot3: 1200 + n)."""
    return _SIGNAL_CODES.get(signum, ErrorCode.KILL_SIGNAL_BASE)


class PilotError(Exception):
    """An error that ends a job with a pilot error code and a diagnostic."""

    code: int = ErrorCode.GENERAL

    def __init__(self, diag: str, code: int | None = None) -> None:
        super().__init__(diag)
        if code is not None:
            self.code = code
        self.diag = diag

    def pilot_error_diag(self) -> str:
        """The diagnostic as PanDA stores it (pilotErrorDiag is cut to 500 chars by the server)."""
        return f"{error_message(self.code)}: {self.diag}"[:500]


class BadJobSpec(PilotError):
    """A job dict from the server that cannot be run; names the offending field."""

    code = ErrorCode.BAD_JOB_SPEC

    def __init__(self, field: str, problem: str, panda_id: int | None = None) -> None:
        super().__init__(f"bad job spec field {field!r}: {problem}")
        self.field = field
        self.problem = problem
        self.panda_id = panda_id


class StageInError(PilotError):
    code = ErrorCode.STAGE_IN_FAILED


class StageOutError(PilotError):
    code = ErrorCode.STAGE_OUT_FAILED


class PayloadError(PilotError):
    code = ErrorCode.PAYLOAD_FAILED


class CalibDBError(PilotError):
    code = ErrorCode.CALIBDB_UNAVAILABLE


class ConfigError(Exception):
    """A site configuration that does not validate: names file, key and expected type."""


class ServerError(Exception):
    """The PanDA server could not be reached or answered an error, after retries."""

    def __init__(self, message: str, status: int | None = None, retriable: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = retriable
