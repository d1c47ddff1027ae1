"""``compass-pilot``: grid · daemon · dispatcher · submit · demo · status · calibdb.

Each subcommand's work lives in its own module; this file only parses arguments,
sets up logging and signal handling, dispatches, and turns the outcome into one exit
code from :mod:`compass_pilot.exitcodes`.  An expected failure is one line on stderr
(:mod:`compass_pilot.failures` words it); ``--debug`` adds the traceback.  The grid
subcommand accepts PanDA pilot3's usual arguments so a pilot factory can launch it
unchanged.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import sys
import traceback
from typing import Any, NoReturn

from compass_pilot import argtypes
from compass_pilot.config import load_site_config
from compass_pilot.exitcodes import ExitCode, ExitError, for_job_outcomes, table_text

log = logging.getLogger("compass_pilot")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FILE_BYTES = 10 * 1024 * 1024  # rotate at 10 MB, keep 5: a month of a busy daemon's INFO lines
LOG_FILE_BACKUPS = 5


def version() -> str:
    """The installed distribution's version (setup.py), or 'unknown' when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("compass-pilot")
    except PackageNotFoundError:
        return "unknown"


def setup_logging(level: str, log_file: str | None) -> None:
    """Log lines to stderr and, with ``--log-file``, to a rotating file as well."""
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(getattr(logging, level))
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    root.addHandler(stderr)
    if log_file:
        try:
            handler = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
            )
        except OSError as exc:
            raise ExitError(ExitCode.USAGE, f"--log-file {log_file}: cannot open: {exc.strerror}") from None
        handler.setFormatter(fmt)
        root.addHandler(handler)


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


class _Signals:
    """Record which signal asked us to stop, so the exit code can say so (128 + n)."""

    def __init__(self, on_signal: Any) -> None:
        self.received: int | None = None
        self._on_signal = on_signal
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        # no logging here: a handler runs between two bytecodes of the main thread, which may
        # hold the logging lock at that moment (a deadlock); the pilot logs the stop itself
        self.received = self.received or signum
        self._on_signal(signum)


def cmd_grid(args: argparse.Namespace) -> int:
    from compass_pilot.modes.grid import GridPilot
    from compass_pilot.modes.grid_args import apply_grid_arguments, site_config_path
    from compass_pilot.panda.client import PandaClient

    site = apply_grid_arguments(load_site_config(site_config_path(args)), args)
    client = PandaClient(site.panda, site.site)
    pilot = GridPilot(site, client)
    signals = _Signals(lambda _signum: pilot.stop())
    try:
        summary = pilot.run()
    finally:
        client.close()
    if signals.received:
        log.warning("%s received: stopped", signal.Signals(signals.received).name)
    if summary.preflight_error:
        fix = " (create one with voms-proxy-init, or set panda.x509_proxy / X509_USER_PROXY)"
        print(
            f"preflight failed: {summary.preflight_error}{fix if summary.exit_code == ExitCode.NO_VALID_PROXY else ''}",
            file=sys.stderr,
        )
        return summary.exit_code
    for panda_id, state in sorted(summary.jobs.items()):
        print(f"job {panda_id}: {state} (pilotErrorCode {summary.codes.get(panda_id, 0)})")
    return grid_exit_code(summary, signals.received, site.panda.url)


def grid_exit_code(summary: Any, signum: int | None, url: str) -> int:
    """What a grid pilot's run means, in one number and (when not plain success) one stderr line."""
    from compass_pilot.failures import server_failure

    if summary.unacknowledged:
        print(
            f"final states not acknowledged by {url} for jobs {summary.unacknowledged}: "
            "kept in the journal, the next pilot on this node sends them",
            file=sys.stderr,
        )
        return ExitCode.REPORTS_OWED
    if signum is not None:
        return 128 + signum
    taken = summary.finished + summary.failed
    if summary.server_error is not None and taken == 0:
        code, line = server_failure(summary.server_error)
        print(line, file=sys.stderr)
        return code
    code = for_job_outcomes(summary.finished, summary.failed)
    if code == ExitCode.NO_JOBS:
        print(f"no jobs: the server at {url} had none for this queue", file=sys.stderr)
    elif code != ExitCode.OK:
        print(f"{summary.failed} of {taken} jobs failed", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (the usage block is what --help is for)."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _delegate(module: str, func: str) -> Any:
    mod = __import__(module, fromlist=[func])
    return getattr(mod, func)


def _common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--log-level / --log-file / --debug, accepted before or after the subcommand."""
    default = (lambda value: value) if top else (lambda _value: argparse.SUPPRESS)
    parser.add_argument(
        "--log-level", type=_log_level, default=default("INFO"), help=f"one of {', '.join(LOG_LEVELS)} (default INFO)"
    )
    parser.add_argument("--log-file", default=default(None), help="also log to this file (rotated at 10 MB, 5 kept)")
    parser.add_argument("--debug", action="store_true", default=default(False), help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + table_text()
    parser = _Parser(
        prog="compass-pilot",
        description="COMPASS pilot and edge services for PanDA",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"compass-pilot {version()}")
    _common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        command = sub.add_parser(name, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        _common_options(command, top=False)
        return command

    grid = add("grid", help="run jobs one at a time (grid / pilot-factory mode)")
    from compass_pilot.modes.grid_args import add_grid_arguments

    add_grid_arguments(grid)  # pilot3's arguments with pilot3's meaning (modes/grid_args.py)
    grid.set_defaults(func=cmd_grid)

    daemon = add("daemon", help="multi-job HPC daemon on the MOM node")
    daemon.add_argument("--site", required=True)
    daemon.add_argument("--once", action="store_true", help="one fetch-submit-report cycle, then exit when done")
    daemon.add_argument(
        "--max-cycles", type=argtypes.count, default=0, help="stop after this many submissions (0 = no limit)"
    )
    daemon.set_defaults(func=lambda a: _delegate("compass_pilot.modes.daemon_cli", "cmd_daemon")(a))

    status = add("status", help="what the MOM-node daemon is doing (exit 0 healthy, 29 not)")
    status.add_argument("--site", required=True)
    shape = status.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the status as one JSON document")
    shape.add_argument(
        "--prometheus", action="store_true", help="the daemon's figures for a node_exporter textfile collector"
    )
    status.add_argument(
        "--stale-after", type=argtypes.seconds, help="state older than this is stale (default: 3 × hpc.poll_interval)"
    )
    status.set_defaults(func=lambda a: _delegate("compass_pilot.status", "cmd_status")(a))

    dispatcher = add("dispatcher", help="embedded PanDA-compatible job dispatcher")
    _delegate("compass_pilot.panda.command_args", "add_dispatcher_args")(dispatcher)
    dispatcher.set_defaults(func=lambda a: _delegate("compass_pilot.panda.commands", "cmd_dispatcher")(a))

    submit = add("submit", help="define the jobs of a task file in the dispatcher")
    _delegate("compass_pilot.panda.command_args", "add_submit_args")(submit)
    submit.set_defaults(func=lambda a: _delegate("compass_pilot.panda.commands", "cmd_submit")(a))

    demo = add("demo", help="dispatcher + synthetic production + pilots, end to end")
    demo.add_argument("--chunks", type=argtypes.count, default=20)
    demo.add_argument("--pilots", type=argtypes.count, default=2, help="pilots running at once")
    demo.add_argument("--events", type=argtypes.count, default=200, help="events per raw chunk")
    demo.add_argument("--calibdb", choices=("sqlite", "mariadb"), default="sqlite")
    demo.add_argument("--chain", action="store_true", help="reco → merge → cross-check for 2 runs × 10 chunks")
    demo.add_argument("--xrootd", action="store_true", help="move files through a local XRootD server")
    demo.add_argument("--dir", help="keep everything under this directory (default: a temp dir)")
    demo.add_argument("--keep-running", action="store_true", help="leave the dispatcher up to browse its page")
    demo.set_defaults(func=lambda a: _delegate("compass_pilot.demo.run", "cmd_demo")(a))

    calib = add("calibdb", help="calibration DB snapshots")
    _delegate("calibdb.commands", "add_calibdb_args")(calib)
    calib.set_defaults(func=lambda a: _delegate("calibdb.commands", "cmd_calibdb")(a))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every outcome is an exit code from the table, every expected failure one line."""
    from compass_pilot.failures import explain, unexpected

    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        setup_logging(args.log_level, args.log_file)
        return int(args.func(args) or 0)
    except SystemExit:
        raise
    except BaseException as exc:  # the one place every failure becomes a line and a code
        if debug:
            traceback.print_exc()
        explained = explain(exc)
        if explained is None:
            print(unexpected(exc), file=sys.stderr)
            return ExitCode.FAILURE
        code, line = explained
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
