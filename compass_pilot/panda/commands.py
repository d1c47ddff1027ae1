"""CLI glue for ``compass-pilot dispatcher`` and ``compass-pilot submit``."""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sqlite3
import ssl
import sys
import threading
from pathlib import Path

import requests
import yaml

from compass_pilot.argtypes import positive
from compass_pilot.errors import ConfigError
from compass_pilot.exitcodes import ExitCode, ExitError
from compass_pilot.filemodes import write_private_text
from compass_pilot.panda.auth import ROLES, create_key, issue_token, load_key
from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from compass_pilot.panda.tasks import TaskError
from compass_pilot.panda.wire import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT


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


def cmd_token(args: argparse.Namespace) -> int:
    """Print (or write 0600) a token; the key is created on first use."""
    try:
        if not Path(args.key_file).exists():
            create_key(args.key_file)
            print(f"created token key {args.key_file} (mode 0600)", file=sys.stderr)
        token = issue_token(load_key(args.key_file), args.identity, args.role, args.days * 86400)
    except (ConfigError, ValueError) as exc:
        raise ExitError(ExitCode.USAGE, f"dispatcher token: {exc}") from None
    if args.out:
        write_private_text(args.out, token + "\n")
        print(f"token for {args.identity} ({args.role}) written to {args.out}", file=sys.stderr)
    else:
        print(token)
    return ExitCode.OK


def check_dispatcher_args(args: argparse.Namespace) -> None:
    """Files and directories named on the command line exist, before anything is created.

    Each failure is one line naming the option, the path and the fix (exit 2), instead of
    sqlite's "unable to open database file" or ssl's bare "No such file or directory".
    """
    parent = Path(args.db).expanduser().resolve().parent
    if not parent.is_dir():
        raise ExitError(ExitCode.USAGE, f"--db {args.db}: directory {parent} does not exist (create it first)")
    for option in ("cert", "key", "ca", "token_key"):
        value = getattr(args, option)
        if value and not (Path(value).is_file() or (option == "ca" and Path(value).is_dir())):
            raise ExitError(ExitCode.USAGE, f"--{option.replace('_', '-')} {value}: no such file")
    if (args.key or args.ca) and not args.cert:
        raise ExitError(ExitCode.USAGE, "--key / --ca need --cert (the server certificate to serve HTTPS with)")


def start_dispatcher(args: argparse.Namespace) -> Dispatcher:
    check_dispatcher_args(args)
    try:
        dispatcher = Dispatcher(
            args.db,
            args.host,
            args.port,
            sent_timeout=args.sent_timeout,
            heartbeat_timeout=args.heartbeat_timeout,
            certfile=args.cert,
            keyfile=args.key,
            cafile=args.ca,
            check_interval=args.check_interval,
            token_key_file=args.token_key,
            pilot_dns=args.pilot_dn,
            admin_dns=args.admin_dn,
            max_connections=args.max_connections,
            max_connections_per_client=args.max_connections_per_client,
        )
    except ConfigError as exc:  # e.g. a non-loopback address without authentication
        raise ExitError(ExitCode.USAGE, str(exc)) from None
    except ssl.SSLError as exc:
        raise ExitError(
            ExitCode.USAGE, f"--cert {args.cert}: not a usable certificate and key ({exc.reason})"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ExitError(
                ExitCode.USAGE,
                f"--port {args.port}: {args.host}:{args.port} is already in use"
                " (another dispatcher running? choose another --port, or 0 for any free port)",
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ExitError(ExitCode.USAGE, f"--host {args.host}: not an address of this machine") from None
        raise
    except sqlite3.Error as exc:
        raise ExitError(ExitCode.USAGE, f"--db {args.db}: not a usable SQLite database ({exc})") from None
    return dispatcher.start()


def cmd_dispatcher(args: argparse.Namespace) -> int:
    if getattr(args, "dispatcher_action", None) == "token":
        return cmd_token(args)
    dispatcher = start_dispatcher(args)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"dispatcher serving on {dispatcher.url}/ (db {args.db})", flush=True)
    stop.wait()
    dispatcher.stop()
    print(f"dispatcher on {dispatcher.url}/ stopped", flush=True)
    return ExitCode.OK  # asked to stop is how a service ends: not a failure


def add_submit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task YAML file")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="the dispatcher's SQLite file")
    where.add_argument("--url", help="a running dispatcher's URL")
    parser.add_argument("--token-file", help="admin bearer token for --url (from 'dispatcher token --role admin')")
    parser.add_argument("--ca", help="CA file verifying an https dispatcher")


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        task = yaml.safe_load(Path(args.task).read_text())
    except OSError as exc:
        raise ExitError(ExitCode.USAGE, f"{args.task}: cannot read the task file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ExitError(ExitCode.USAGE, f"{args.task}: not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        if args.db:
            if not Path(args.db).is_file():
                raise ExitError(ExitCode.USAGE, f"--db {args.db}: no such file (start the dispatcher with it first)")
            task_id = submit_task(args.db, task)
        else:
            task_id = _submit_over_http(args.url, args.task, task, args.token_file, args.ca)
    except TaskError as exc:
        raise ExitError(ExitCode.USAGE, f"{args.task}: {exc}") from None
    print(f"task {task_id} submitted")
    return ExitCode.OK


def _submit_over_http(url: str, name: str, task: object, token_file: str | None = None, ca: str | None = None) -> int:
    from compass_pilot.failures import short_reason

    target = f"{url.rstrip('/')}/admin/submit"
    headers = {"Content-Type": "application/json"}
    if token_file:
        try:
            headers["Authorization"] = f"Bearer {Path(token_file).read_text().strip()}"
        except OSError as exc:
            raise ExitError(ExitCode.USAGE, f"--token-file {token_file}: {exc.strerror}") from None
    try:
        answer = requests.post(target, data=json.dumps(task), headers=headers, timeout=60, verify=ca or True)
    except requests.RequestException as exc:
        raise ExitError(
            ExitCode.SERVER_UNREACHABLE, f"--url {url}: dispatcher unreachable: {short_reason(exc)}"
        ) from None
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code != 200:
        raise ExitError(ExitCode.USAGE, f"{name}: {body.get('error') or answer.text[:200]}")
    return int(body["task_id"])
