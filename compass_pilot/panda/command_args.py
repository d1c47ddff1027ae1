"""The arguments of ``compass-pilot dispatcher`` and ``compass-pilot submit``, without the dispatcher.

Kept apart from :mod:`compass_pilot.panda.commands` (which runs them) because the CLI
builds every subcommand's parser at each start: importing the dispatcher there cost the
MOM-node daemon and every grid pilot ~19 MiB of RSS and 330 modules they never use.
"""

from __future__ import annotations

import argparse

from compass_pilot.argtypes import positive
from compass_pilot.panda.constants import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT, ROLES


def add_dispatcher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default="compass-dispatcher.sqlite", help="SQLite file (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    parser.add_argument("--port", type=int, default=25080, help="25080 is PanDA's http port; 0 = any free port")
    parser.add_argument("--cert", help="server certificate (PEM): serve HTTPS")
    parser.add_argument("--key", help="server key (PEM)")
    parser.add_argument(
        "--ca", help="CA file or hashed CA dir: client certificates (X509 proxies) are then verified and required"
    )
    parser.add_argument("--token-key", help="key file (0600) verifying the bearer tokens made by 'dispatcher token'")
    parser.add_argument(
        "--pilot-dn", action="append", default=[], help="DN of a production pilot (repeat; proxy CNs are ignored)"
    )
    parser.add_argument("--admin-dn", action="append", default=[], help="DN allowed to submit and kill (repeat)")
    parser.add_argument("--sent-timeout", type=float, default=1800, help="sent but silent → failed 102 (s)")
    parser.add_argument("--heartbeat-timeout", type=float, default=7200, help="no heartbeat → failed 100 (s)")
    parser.add_argument("--check-interval", type=float, default=60, help="seconds between timeout checks")
    parser.add_argument(
        "--max-connections",
        type=positive,
        default=MAX_CONNECTIONS,
        help="connections served at once; more get 503 (default %(default)s)",
    )
    parser.add_argument(
        "--max-connections-per-client",
        type=positive,
        default=MAX_CONNECTIONS_PER_CLIENT,
        help="connections from one address served at once; more get 503 (default %(default)s)",
    )
    actions = parser.add_subparsers(dest="dispatcher_action", metavar="{token}")
    token = actions.add_parser("token", help="issue a signed bearer token for a pilot or an admin")
    token.add_argument("--identity", required=True, help="who the token names (jobs are bound to it)")
    token.add_argument("--role", choices=ROLES, default="pilot")
    token.add_argument("--key-file", required=True, help="signing key (created 0600 if missing)")
    token.add_argument("--days", type=float, default=30, help="validity in days")
    token.add_argument("--out", help="write the token to this file (0600) instead of printing it")


def add_submit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task YAML file")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="the dispatcher's SQLite file")
    where.add_argument("--url", help="a running dispatcher's URL")
    parser.add_argument("--token-file", help="admin bearer token for --url (from 'dispatcher token --role admin')")
    parser.add_argument("--ca", help="CA file verifying an https dispatcher")
