"""``compass-pilot``: grid · daemon · dispatcher · submit · demo · status · calibdb.

Each subcommand's work lives in its own module; this file only parses arguments,
sets up logging and signal handling, and dispatches.  The grid subcommand accepts
PanDA pilot3's usual arguments so a pilot factory can launch it unchanged.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from compass_pilot.config import SiteConfig, load_site_config
from compass_pilot.errors import ConfigError, ServerError

log = logging.getLogger("compass_pilot")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _apply_pilot3_args(site: SiteConfig, args: argparse.Namespace) -> SiteConfig:
    """Map pilot3's -q/-s/-r/--url/-p/-j onto the site config (the arguments win)."""
    if args.queue:
        site.site.name = args.queue
    elif args.site_name:
        site.site.name = args.site_name
    if args.resource_type:
        site.site.resource_type = args.resource_type
    if args.url:
        url = args.url.rstrip("/")
        if args.port and url.count(":") < 2:
            url = f"{url}:{args.port}"
        site.panda.url = url
    if args.job_label:
        site.site.job_label = args.job_label
    if args.max_jobs is not None:
        site.grid.max_jobs = args.max_jobs
    if args.heartbeat is not None:
        site.grid.heartbeat_interval = args.heartbeat
    if args.workdir:
        site.site.workdir = args.workdir
    return site


def cmd_grid(args: argparse.Namespace) -> int:
    from compass_pilot.modes.grid import GridPilot
    from compass_pilot.panda.client import PandaClient

    site = _apply_pilot3_args(load_site_config(args.site), args)
    client = PandaClient(site.panda, site.site)
    pilot = GridPilot(site, client)
    signal.signal(signal.SIGTERM, lambda *_: pilot.stop())
    signal.signal(signal.SIGINT, lambda *_: pilot.stop())
    try:
        summary = pilot.run()
    finally:
        client.close()
    if summary.preflight_error:
        print(f"preflight failed: {summary.preflight_error}", file=sys.stderr)
        return summary.exit_code
    for panda_id, state in sorted(summary.jobs.items()):
        print(f"job {panda_id}: {state} (pilotErrorCode {summary.codes.get(panda_id, 0)})")
    if summary.unacknowledged:
        print(f"final states not acknowledged by the server: {summary.unacknowledged}", file=sys.stderr)
        return 3
    return 0


def _delegate(module: str, func: str) -> Any:
    mod = __import__(module, fromlist=[func])
    return getattr(mod, func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compass-pilot", description="COMPASS pilot and edge services for PanDA")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    grid = sub.add_parser("grid", help="run jobs one at a time (grid / pilot-factory mode)")
    grid.add_argument("--site", help="site config YAML (default: embedded defaults)")
    grid.add_argument("-q", "--queue", help="PanDA queue name (pilot3 -q)")
    grid.add_argument("-s", "--site-name", dest="site_name", help="site name (pilot3 -s)")
    grid.add_argument("-r", "--resource", dest="resource_type", help="resource type (pilot3 -r)")
    grid.add_argument("--url", help="PanDA server URL (pilot3 --url)")
    grid.add_argument("-p", "--port", type=int, help="PanDA server port (pilot3 -p)")
    grid.add_argument("-j", "--job-label", dest="job_label", help="prodSourceLabel to ask for (pilot3 -j)")
    grid.add_argument("--max-jobs", type=int, help="jobs to run before exiting (0 = until none left)")
    grid.add_argument("--heartbeat", type=float, help="seconds between running heartbeats")
    grid.add_argument("--workdir", help="pilot work root")
    grid.set_defaults(func=cmd_grid)

    daemon = sub.add_parser("daemon", help="multi-job HPC daemon on the MOM node")
    daemon.add_argument("--site", required=True)
    daemon.add_argument("--once", action="store_true", help="one fetch-submit-report cycle, then exit when done")
    daemon.add_argument("--max-cycles", type=int, default=0, help="stop after this many submissions (0 = no limit)")
    daemon.set_defaults(func=lambda a: _delegate("compass_pilot.modes.daemon_cli", "cmd_daemon")(a))

    status = sub.add_parser("status", help="what the MOM-node daemon is doing")
    status.add_argument("--site", required=True)
    status.set_defaults(func=lambda a: _delegate("compass_pilot.status", "cmd_status")(a))

    dispatcher = sub.add_parser("dispatcher", help="embedded PanDA-compatible job dispatcher")
    _delegate("compass_pilot.panda.commands", "add_dispatcher_args")(dispatcher)
    dispatcher.set_defaults(func=lambda a: _delegate("compass_pilot.panda.commands", "cmd_dispatcher")(a))

    submit = sub.add_parser("submit", help="define the jobs of a task file in the dispatcher")
    _delegate("compass_pilot.panda.commands", "add_submit_args")(submit)
    submit.set_defaults(func=lambda a: _delegate("compass_pilot.panda.commands", "cmd_submit")(a))

    demo = sub.add_parser("demo", help="dispatcher + synthetic production + pilots, end to end")
    demo.add_argument("--chunks", type=int, default=20)
    demo.add_argument("--pilots", type=int, default=2, help="pilots running at once")
    demo.add_argument("--events", type=int, default=200, help="events per raw chunk")
    demo.add_argument("--calibdb", choices=("sqlite", "mariadb"), default="sqlite")
    demo.add_argument("--chain", action="store_true", help="reco → merge → cross-check for 2 runs × 10 chunks")
    demo.add_argument("--xrootd", action="store_true", help="move files through a local XRootD server")
    demo.add_argument("--dir", help="keep everything under this directory (default: a temp dir)")
    demo.add_argument("--keep-running", action="store_true", help="leave the dispatcher up to browse its page")
    demo.set_defaults(func=lambda a: _delegate("compass_pilot.demo.run", "cmd_demo")(a))

    calib = sub.add_parser("calibdb", help="calibration DB snapshots")
    _delegate("calibdb.commands", "add_calibdb_args")(calib)
    calib.set_defaults(func=lambda a: _delegate("calibdb.commands", "cmd_calibdb")(a))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"PanDA server error: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
