"""CLI glue for ``compass-pilot dispatcher`` and ``compass-pilot submit``."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

import requests
import yaml

from compass_pilot.panda.dispatcher import Dispatcher, submit_task
from compass_pilot.panda.tasks import TaskError


def add_dispatcher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default="compass-dispatcher.sqlite", help="SQLite file (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    parser.add_argument("--port", type=int, default=25080, help="25080 is PanDA's http port; 0 = any free port")
    parser.add_argument("--cert", help="server certificate (PEM): serve HTTPS")
    parser.add_argument("--key", help="server key (PEM)")
    parser.add_argument("--ca", help="CA file to verify client certificates (X509 proxies)")
    parser.add_argument("--sent-timeout", type=float, default=1800, help="sent but silent → failed 102 (s)")
    parser.add_argument("--heartbeat-timeout", type=float, default=7200, help="no heartbeat → failed 100 (s)")
    parser.add_argument("--check-interval", type=float, default=60, help="seconds between timeout checks")


def cmd_dispatcher(args: argparse.Namespace) -> int:
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
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    dispatcher.start()
    print(f"dispatcher serving on {dispatcher.url}/ (db {args.db})", flush=True)
    stop.wait()
    dispatcher.stop()
    return 0


def add_submit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task YAML file")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="the dispatcher's SQLite file")
    where.add_argument("--url", help="a running dispatcher's URL")


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        task = yaml.safe_load(Path(args.task).read_text())
    except (OSError, yaml.YAMLError) as exc:
        print(f"{args.task}: cannot read task: {exc}")
        return 2
    try:
        if args.db:
            task_id = submit_task(args.db, task)
        else:
            answer = requests.post(
                f"{args.url.rstrip('/')}/admin/submit",
                data=json.dumps(task),
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
            if answer.status_code != 200:
                print(f"{args.task}: {answer.json().get('error', answer.text)}")
                return 2
            task_id = answer.json()["task_id"]
    except TaskError as exc:
        print(f"{args.task}: {exc}")
        return 2
    print(f"task {task_id} submitted")
    return 0
