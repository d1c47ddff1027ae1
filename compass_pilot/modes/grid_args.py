"""``compass-pilot grid``'s command line: PanDA pilot3's arguments, with pilot3's meaning.

A pilot factory launches a pilot through a wrapper (PanDAWMS/pilot-wrapper
``runpilot2-wrapper.sh``) that runs ``pilot.py -q <queue> -i <tag> -j <label> <the
factory's other arguments>`` — typically ``-w generic --pilot-user X --url … -d -t
--resource-type SCORE --job-type managed --allow-same-user=False …``.  For us to be
launched unchanged, every argument pilot3 accepts (pilot3 3.7 ``pilot.py``, 3.11
``arguments.py``) is accepted here, and where it means something to us it means what it
means to pilot3:

- ``-q/--queue`` the PanDA queue (sent as computingElement), ``-r/--resource`` the PanDA
  resource (sent as siteName; the queue when not given), ``-s/--site`` the site name,
  ``--resource-type``, ``-j/--joblabel`` (prodSourceLabel), ``--url`` + ``-p/--port``
  (pilot3's default port 25443 when the URL has none), ``-a/--workdir``, ``-i/--versiontag``
  (in the pilotID), ``-d`` (debug logging), ``-t`` (no proxy lifetime check), ``--cacert``/``--capath`` (proxy, CA dir),
  ``-v/--getjobrequests`` (jobs to take before exiting);
- the rest (``-w``, ``-z``, ``-l``, ``-L``, ``--pilot-user``, ``--harvester-*``, …)
  have no counterpart here: accepted, and each one given is logged as ignored.

Our own YAML file is ``--site-config`` (or ``COMPASS_SITE_CONFIG``), named so it cannot
clash with pilot3's ``-s/--site``.  Exit codes follow :mod:`compass_pilot.exitcodes`
(pilot3's 20 = no jobs).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from compass_pilot import argtypes
from compass_pilot.config import SiteConfig, panda_url_problem
from compass_pilot.exitcodes import ExitCode, ExitError

log = logging.getLogger("compass_pilot.grid")

PILOT3_DEFAULT_PORT = 25443
SITE_CONFIG_ENV = "COMPASS_SITE_CONFIG"


def _str2bool(value: str) -> bool:
    """pilot3's ``str2bool``: the boolean options take a value (``--allow-same-user=False``)."""
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean (True/False)")


#: pilot3 options with no counterpart here: (flags, argparse keywords); logged when given
IGNORED: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("-w", "--workflow"), {}),
    (("-l", "--lifetime"), {"type": int}),
    (("-L", "--leasetime"), {"type": int}),
    (("-z", "--noserverupdate"), {"action": "store_true"}),
    (("-u", "--verifypayloadproxy"), {"action": "store_true"}),
    (("-x", "--getjobfailures"), {"type": int}),
    (("--pilot-user",), {}),
    (("--job-type",), {}),
    (("--subscribe-to-msgsvc",), {"action": "store_true"}),
    (("--queuedata-url",), {}),
    (("--storagedata-url",), {}),
    (("--rucio-host",), {}),
    (("--redirect-stdout",), {}),
    (("--country-group",), {}),
    (("--working-group",), {}),
    (("--allow-other-country",), {"type": _str2bool}),
    (("--allow-same-user",), {"type": _str2bool}),
    (("--pod",), {"action": "store_true"}),
    (("--harvester-workdir",), {}),
    (("--harvester-datadir",), {}),
    (("--harvester-eventstatusdump",), {}),
    (("--harvester-workerattributes",), {}),
    (("--harvester-submit-mode",), {}),
    (("--use-https",), {"type": _str2bool}),
    (("--cleanup",), {"type": _str2bool}),
    (("--use-realtime-logging",), {"action": "store_true"}),
    (("--realtime-logging-server",), {}),
    (("--realtime-logname",), {}),
    (("--input-dir",), {}),
    (("--input-destination-dir",), {}),
    (("--output-dir",), {}),
    (("--use-rucio-traces",), {"type": _str2bool}),
    (("--hpc-resource",), {}),
    (("--hpc-mode",), {}),
    (("--es-executor-type",), {}),
    (("--no-pilot-log",), {"action": "store_true"}),
    (("--baseurls",), {}),
    (("--nocvmfs",), {"action": "store_true"}),
    (("--notokenrenewal",), {"action": "store_true"}),
    (("--noworkerpilotstatusupdate",), {"action": "store_true"}),
    (("--stageout-attempts",), {"type": int}),
)


def _dest(flags: tuple[str, ...]) -> str:
    return "ignored_" + flags[-1].lstrip("-").replace("-", "_")


def add_grid_arguments(grid: argparse.ArgumentParser) -> None:
    """Every pilot3 argument, plus ours (``--site-config``, ``--max-jobs``, ``--heartbeat``)."""
    grid.add_argument(
        "--site-config",
        default=os.environ.get(SITE_CONFIG_ENV) or None,
        help=f"site config YAML (default: ${SITE_CONFIG_ENV}, else the embedded defaults)",
    )
    grid.add_argument("-q", "--queue", help="PanDA queue (pilot3 -q): sent as computingElement")
    grid.add_argument("-r", "--resource", help="PanDA resource (pilot3 -r): sent as siteName (default: the queue)")
    grid.add_argument("-s", "--site", dest="site_name", help="site name (pilot3 -s), logged")
    grid.add_argument("--resource-type", help="resource type asked for, e.g. SCORE / MCORE (pilot3 --resource-type)")
    grid.add_argument("-j", "--joblabel", dest="job_label", help="prodSourceLabel asked for (pilot3 -j)")
    grid.add_argument("--url", help="PanDA server URL (pilot3 --url)")
    grid.add_argument(
        "-p",
        "--port",
        type=int,
        help=f"PanDA server port when --url has none (pilot3 -p, default {PILOT3_DEFAULT_PORT})",
    )
    grid.add_argument("-a", "--workdir", help="pilot work root (pilot3 -a)")
    grid.add_argument(
        "-i", "--versiontag", dest="version_tag", help="pilot version tag, PR or RC (pilot3 -i): in the pilotID"
    )
    grid.add_argument(
        "-t", "--noproxyverification", dest="no_proxy_check", action="store_true", help="no proxy check (pilot3 -t)"
    )
    grid.add_argument("-d", dest="debug_logging", action="store_true", help="debug logging (pilot3 -d)")
    grid.add_argument("--cacert", help="X509 proxy used as client certificate (pilot3 --cacert)")
    grid.add_argument("--capath", help="CA directory to verify the server (pilot3 --capath)")
    grid.add_argument(
        "-v",
        "--getjobrequests",
        dest="getjob_requests",
        type=argtypes.count,
        help="jobs to take before exiting (pilot3 -v)",
    )
    grid.add_argument("--max-jobs", type=argtypes.count, help="jobs to run before exiting (0 = until none left)")
    grid.add_argument("--heartbeat", type=argtypes.seconds, help="seconds between running heartbeats (at least 1)")
    for flags, kwargs in IGNORED:
        grid.add_argument(*flags, dest=_dest(flags), default=None, help=argparse.SUPPRESS, **kwargs)


def site_config_path(args: argparse.Namespace) -> str | None:
    """The YAML file to load; a ``--site FILE.yaml`` from before ``--site-config`` still works, with a warning."""
    if args.site_config:
        return str(args.site_config)
    name = args.site_name or ""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        log.warning("--site %s: a YAML file; --site is pilot3's site name now, use --site-config", name)
        args.site_name = None
        return name
    return None


def apply_grid_arguments(site: SiteConfig, args: argparse.Namespace) -> SiteConfig:
    """Map the command line onto the site config (the arguments win); log what has no counterpart."""
    if args.queue:
        site.site.computing_element = args.queue
        site.site.name = args.resource or args.queue
    elif args.resource:
        site.site.name = args.resource
    if args.site_name:
        log.info("site name (-s): %s", args.site_name)
    if args.resource_type:
        site.site.resource_type = args.resource_type
    if args.job_label:
        site.site.job_label = args.job_label
    if args.url:
        url = args.url.rstrip("/")
        if "://" in url and ":" not in url.split("://", 1)[1].split("/", 1)[0]:
            host, _, path = url.partition("://")[2].partition("/")
            url = f"{url.split('://', 1)[0]}://{host}:{args.port or PILOT3_DEFAULT_PORT}" + (f"/{path}" if path else "")
        problem = panda_url_problem(url)
        if problem:
            raise ExitError(ExitCode.USAGE, f"--url: {problem}")
        site.panda.url = url
    if args.workdir:
        site.site.workdir = args.workdir
    if args.cacert:
        site.panda.x509_proxy = args.cacert
    if args.capath:
        site.panda.ca_dir = args.capath
    if args.version_tag:
        site.site.version_tag = args.version_tag
    if args.no_proxy_check:
        site.panda.verify_proxy = False
    if args.debug_logging:
        logging.getLogger().setLevel(logging.DEBUG)
    jobs = args.max_jobs if args.max_jobs is not None else args.getjob_requests
    if jobs is not None:
        site.grid.max_jobs = jobs
    if args.heartbeat is not None:
        site.grid.heartbeat_interval = args.heartbeat
    for flags, _ in IGNORED:
        value = getattr(args, _dest(flags), None)
        if value not in (None, False):
            log.info("pilot3 option %s=%s has no meaning here: ignored", flags[-1], value)
    return site
