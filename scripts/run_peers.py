#!/usr/bin/env python3
"""Every real peer we claim compatibility with, run in one go: one verdict line each.

A claim of compatibility holds only after the real peer ran it.  This runs, for the peers
whose sources are given (none are committed: fetch them, see each script's docstring):

- ``--harvester-src DIR``: HSF/harvester's own agents load our plugins
  (``scripts/harvester_conformance.py``): every row ``ok``, the worker propagated;
- ``--pilot-src DIR`` / ``--pilot-pypi VERSION``: an unmodified pilot3 against our dispatcher
  (``scripts/run_pilot3.py``): success, payload failure, server kill;
- ``--panda-state DIR`` (made by ``scripts/panda_server/setup_db.sh`` + ``setup_server.sh``):
  our grid pilot and daemon against the real PanDA server (``scripts/panda_server/run_all.py``);
  its PostgreSQL is started first and stopped after.

Each peer's whole output goes to ``--out`` (default: a temp dir); the verdicts are printed
at the end.  Exit status: 0 when every peer run passed, 1 when one failed, 2 when none was given.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(name: str, argv: list[str], out: Path, timeout: float) -> tuple[bool, str]:
    """Run one peer's script; (passed, its last meaningful line or why it failed)."""
    log = out / f"{name}.txt"
    start = time.monotonic()
    try:
        with open(log, "w", encoding="utf-8") as sink:
            done = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"no end within {timeout:.0f} s (log {log})"
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    took = time.monotonic() - start
    tail = lines[-1] if lines else "(no output)"
    return done.returncode == 0, f"exit {done.returncode} in {took:.0f} s; last line: {tail[:160]} (log {log})"


def _postgres(state: Path, port: int, action: str) -> None:
    """Start or stop the real server's PostgreSQL (setup_db.sh's cluster) around its run."""
    argv = [str(HERE / "panda_server" / "start_db.sh"), str(state), str(port), action]
    subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--harvester-src", type=Path, help="HSF/harvester source tree (with pandaharvester/)")
    pilot = parser.add_mutually_exclusive_group()
    pilot.add_argument("--pilot-src", type=Path, help="a pilot3 source tree (git checkout or sdist)")
    pilot.add_argument("--pilot-pypi", metavar="VERSION", help="panda-pilot VERSION from PyPI")
    parser.add_argument("--panda-state", type=Path, help="STATE dir of scripts/panda_server/setup_*.sh")
    parser.add_argument("--panda-port", type=int, default=25443, help="setup_server.sh's HTTPS port")
    parser.add_argument("--panda-db-port", type=int, default=54329, help="setup_db.sh's port")
    parser.add_argument("--out", type=Path, help="where each peer's output goes (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per peer")
    args = parser.parse_args()

    runs: list[tuple[str, list[str]]] = []
    py = sys.executable
    if args.harvester_src:
        runs.append(
            ("harvester", [py, str(HERE / "harvester_conformance.py"), "--harvester-src", str(args.harvester_src)])
        )
    if args.pilot_src or args.pilot_pypi:
        source = ["--pilot-src", str(args.pilot_src)] if args.pilot_src else ["--pypi", args.pilot_pypi]
        runs.append(("pilot3", [py, str(HERE / "run_pilot3.py"), *source]))
    if args.panda_state:
        runs.append(
            (
                "panda-server",
                [
                    py,
                    str(HERE / "panda_server" / "run_all.py"),
                    str(args.panda_state),
                    "--port",
                    str(args.panda_port),
                    "--db-port",
                    str(args.panda_db_port),
                ],
            )
        )
    if not runs:
        print("no peer given: --harvester-src, --pilot-src/--pilot-pypi, --panda-state", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="compass-peers-"))
    out.mkdir(parents=True, exist_ok=True)
    verdicts = []
    for name, argv in runs:
        if name == "panda-server":
            _postgres(args.panda_state, args.panda_db_port, "start")
        try:
            verdicts.append((name, *_run(name, argv, out, args.timeout)))
        finally:
            if name == "panda-server":
                _postgres(args.panda_state, args.panda_db_port, "stop")
    for name, passed, detail in verdicts:
        print(f"{name:13s} {'PASS' if passed else 'FAIL'}  {detail}")
    return 0 if all(passed for _, passed, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
