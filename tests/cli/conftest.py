"""Run ``compass-pilot`` as an operator does: a real process, its stderr and its exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    @property
    def has_traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr


def run_cli(*argv: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Outcome:
    """``python -m compass_pilot.cli argv…`` with this worktree first on the path."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(cwd), **(env or {}))
    done = subprocess.run(
        [sys.executable, "-m", "compass_pilot.cli", *argv],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)
