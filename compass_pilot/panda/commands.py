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

from compass_pilot.errors import ConfigError
from compass_pilot.exitcodes import ExitCode, ExitError
from compass_pilot.filemodes import write_private_text
from compass_pilot.panda.auth import create_key, issue_token, load_key
from compass_pilot.panda.command_args import add_dispatcher_args, add_submit_args  # noqa: F401  (their home was here)
from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from compass_pilot.panda.tasks import TaskError


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
