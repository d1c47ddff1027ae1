"""``compass-pilot status``: what the MOM-node daemon is doing, read from its state file.

The daemon writes ``daemon_state.json`` into the shared directory every round; this module
only reads and formats it, so ``status`` never needs the daemon's own imports.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from compass_pilot.config import expand, load_site_config
from compass_pilot.exitcodes import ExitCode, ExitError
from compass_pilot.modes.multijob import STATE_FILE


def format_status(data: dict[str, Any], now: float | None = None) -> str:
    """The at-a-glance view a site admin wants on the MOM node."""
    now = now or time.time()
    age = now - data.get("updated", now)
    lines = [f"site {data.get('site')}  daemon pid {data.get('pid')}  state written {age:.0f} s ago"]
    contact = data.get("last_server_contact") or 0
    lines.append(
        f"last PanDA contact: {f'{now - contact:.0f} s ago' if contact else 'never'}"
        f"   requests: {data.get('fetch_requests', 0)} fetch, {data.get('update_requests', 0)} update"
        f"   pending updates: {data.get('pending_updates', 0)}"
    )
    subs = data.get("submissions", [])
    lines.append(f"submissions in flight: {len(subs)}")
    if subs:
        lines.append(f"  {'batch id':<28} {'queue':<8} {'nodes':>5} {'jobs':>5} {'age':>8}  status")
        for s in subs:
            lines.append(
                f"  {s['batch_id'][:28]:<28} {s['queue']:<8} {s['nodes']:>5} {s['jobs']:>5} "
                f"{now - s['created']:>7.0f}s  {s['batch_status']}"
            )
    by_state = data.get("jobs_by_state", {})
    lines.append("jobs by state: " + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) or "none"))
    errors = data.get("errors_by_code", {})
    lines.append("errors by code: " + (", ".join(f"{k}×{v}" for k, v in sorted(errors.items())) or "none"))
    for e in data.get("recent_errors", [])[-5:]:
        lines.append(f"  job {e['panda_id']}: {e['code']} {e['diag'][:100]}")
    return "\n".join(lines)


def read_state(path: Path) -> dict[str, Any]:
    """The daemon's state file; an ExitError (UNHEALTHY) naming the file when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExitError(
            ExitCode.UNHEALTHY, f"no daemon state at {path}: the daemon has not run with this site config"
        ) from None
    except OSError as exc:
        raise ExitError(ExitCode.UNHEALTHY, f"{path}: cannot read the daemon state: {exc.strerror}") from None
    except ValueError as exc:
        raise ExitError(
            ExitCode.UNHEALTHY,
            f"{path}: not valid JSON ({exc}): the daemon rewrites it each round; if it is not running, remove it",
        ) from None
    if not isinstance(data, dict):
        raise ExitError(ExitCode.UNHEALTHY, f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def cmd_status(args: argparse.Namespace) -> int:
    site = load_site_config(args.site)
    path = Path(expand(site.hpc.shared_dir)) / STATE_FILE
    data = read_state(path)
    print(format_status(data))
    return 0
