"""Process exit codes of every ``compass-pilot`` command: one table, pilot3's numbers where it has one.

A pilot factory, a site's cron job and an operator all decide what to do next from the exit
code alone ("no jobs: back off", "server down: retry later", "config broken: page a human"),
so each expected outcome gets its own number and never shares it with another.  pilot3
defines 0 (success), 1 (failure) and 20 (no jobs: ``pilot/util/constants.py``
``ERRNO_NOJOBS``); we keep those and number ours next to 20.  2 stays argparse's usage
error, which a bad site config joins (both are "fix the invocation").  Signals follow the
shell's convention (128 + signal number), so ``$?`` after a SIGTERM reads the same as
for any other Unix tool.
"""

from __future__ import annotations

import enum
import signal


class ExitCode(enum.IntEnum):
    """Exit codes; the docstring of each member is the one line that explains it."""

    OK = 0
    FAILURE = 1  # an unexpected error (``--debug`` shows the traceback)
    USAGE = 2  # bad command line or site configuration
    NO_JOBS = 20  # pilot3's ERRNO_NOJOBS: the server had no job for us
    SERVER_UNREACHABLE = 21  # the PanDA server did not answer (connection refused, timeout, 5xx after retries)
    SERVER_REFUSED = 22  # the PanDA server refused us (authentication, permission, 4xx)
    ALL_JOBS_FAILED = 23  # every job this run took ended failed
    SOME_JOBS_FAILED = 24  # some jobs finished, some failed
    PREFLIGHT_FAILED = 25  # batch system, work dir or disk not usable: no job was taken
    NO_VALID_PROXY = 26  # the X509 proxy is missing or expires before the jobs could end: no job was taken
    BLACK_HOLE = 27  # consecutive submissions failed: the daemon stopped fetching (circuit breaker open)
    REPORTS_OWED = 28  # final states not yet acknowledged by the server (kept in the journal for the next run)
    UNHEALTHY = 29  # ``status``: the daemon is not running, its state is stale, or its circuit breaker is open
    BATCH_UNREACHABLE = 30  # the batch system did not answer its probe (controller / server down): no job was taken
    MISSING_DEPENDENCY = 31  # an optional Python module is not installed (the line names the pip extra)
    INTERRUPTED_SIGINT = 128 + signal.SIGINT  # 130
    INTERRUPTED_SIGTERM = 128 + signal.SIGTERM  # 143

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success (grid: every job finished; status: healthy)",
    ExitCode.FAILURE: "unexpected error (run with --debug for the traceback)",
    ExitCode.USAGE: "bad command line or site configuration",
    ExitCode.NO_JOBS: "the server had no job (pilot3's ERRNO_NOJOBS)",
    ExitCode.SERVER_UNREACHABLE: "PanDA server unreachable",
    ExitCode.SERVER_REFUSED: "PanDA server refused the pilot (authentication or permission)",
    ExitCode.ALL_JOBS_FAILED: "every job taken ended failed",
    ExitCode.SOME_JOBS_FAILED: "some jobs failed",
    ExitCode.PREFLIGHT_FAILED: "preflight failed (batch system, work dir, disk): no job taken",
    ExitCode.NO_VALID_PROXY: "no valid X509 proxy for the jobs' duration: no job taken",
    ExitCode.BLACK_HOLE: "submissions kept failing: circuit breaker open, fetching stopped",
    ExitCode.REPORTS_OWED: "final states not acknowledged yet (kept for the next run)",
    ExitCode.UNHEALTHY: "status: daemon dead, stale or unhealthy",
    ExitCode.BATCH_UNREACHABLE: "the batch system did not answer (controller or server down): no job taken",
    ExitCode.MISSING_DEPENDENCY: "an optional Python module is missing (the message names the pip extra)",
    ExitCode.INTERRUPTED_SIGINT: "interrupted by SIGINT",
    ExitCode.INTERRUPTED_SIGTERM: "interrupted by SIGTERM",
}


class ExitError(Exception):
    """An expected failure that ends the command: one line for stderr and its exit code.

    Raised where the failure is understood (a missing ``--cert`` file, a port in use) so
    the message can name the thing and the fix; the CLI prints it and exits with ``code``.
    """

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def for_job_outcomes(finished: int, failed: int) -> ExitCode:
    """The exit code of a run that took ``finished + failed`` jobs (none taken → NO_JOBS)."""
    if finished + failed == 0:
        return ExitCode.NO_JOBS
    if failed == 0:
        return ExitCode.OK
    return ExitCode.ALL_JOBS_FAILED if finished == 0 else ExitCode.SOME_JOBS_FAILED


def table_text() -> str:
    """The table as ``--help`` epilog and README show it."""
    return "\n".join(f"  {int(code):>3}  {code.meaning}" for code in ExitCode)


def markdown_table() -> str:
    """The table as the README shows it (a test keeps the README's copy equal to this)."""
    rows = ["| exit code | meaning |", "| ---: | --- |"]
    rows += [f"| {int(code)} | {code.meaning} |" for code in ExitCode]
    return "\n".join(rows)
