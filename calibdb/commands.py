"""CLI glue for ``compass-pilot calibdb snapshot``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from calibdb.snapshot import DEMO_DUMP, build_snapshot
from compass_pilot.errors import CalibDBError


def add_calibdb_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="calibdb_command", required=True)
    snap = sub.add_parser("snapshot", help="build a ready-to-start snapshot from an SQL dump")
    snap.add_argument("--from", dest="dump", default=str(DEMO_DUMP), help="SQL dump (default: the demo's)")
    snap.add_argument("--out", required=True, help="DIR or FILE.tar (MariaDB datadir) or FILE.sqlite")
    snap.add_argument("--backend", choices=("mariadb", "sqlite"), help="default: from --out's suffix")


def cmd_calibdb(args: argparse.Namespace) -> int:
    try:
        out = build_snapshot(Path(args.dump), Path(args.out), args.backend or "")
    except CalibDBError as exc:
        print(f"snapshot failed: {exc}", file=sys.stderr)  # errors on stderr: stdout is for what a script parses
        return 1
    print(f"snapshot written to {out}")
    return 0
