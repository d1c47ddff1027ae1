"""``compass-pilot status``: is the MOM-node daemon alive, healthy, and what is it doing.

The daemon writes ``daemon_state.json`` into the shared directory every round and keeps
its journal (``daemon-journal.sqlite``) beside it.  This module only *reads* them — the
state file for the daemon's figures, the journal (read-only) for the jobs' true states —
so ``status`` never needs the daemon's imports and never disturbs it.  It checks what a
state file alone cannot say: that the pid is alive and is a compass-pilot daemon (a pid
is reused after a reboot), and that the file is fresh.  Exit 0 when healthy, 29
(UNHEALTHY) otherwise, so a cron job or a Nagios check can use it as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compass_pilot.config import expand, load_site_config
from compass_pilot.exitcodes import ExitCode, ExitError

STATE_FILE = "daemon_state.json"  # written by compass_pilot.modes.multijob (same name there)
JOURNAL_FILE = "daemon-journal.sqlite"
FINAL = ("finished", "failed")


@dataclass
class Health:
    """The verdict: healthy or not, and every reason why not (one short phrase each)."""

    problems: list[str] = field(default_factory=list)
    pid_alive: bool = False
    pid_ours: bool = False
    age: float | None = None  # seconds since the state was written; None when it has no time stamp
    stale: bool = False

    @property
    def healthy(self) -> bool:
        return not self.problems


def process_is_daemon(pid: int) -> tuple[bool, bool]:
    """(alive, ours): the pid exists, and its command line is a compass-pilot daemon of our user."""
    if pid <= 0:
        return False, False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, False
    except PermissionError:
        return True, False  # alive, but another user's: not our daemon
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        owner = Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return True, False
    ours = owner == os.getuid() and "daemon" in cmdline and ("compass_pilot" in cmdline or "compass-pilot" in cmdline)
    return True, ours


def assess(data: dict[str, Any], *, now: float, stale_after: float) -> Health:
    """Healthy = the pid is a live daemon of ours, the state is fresh, preflight passed, the breaker is closed."""
    health = Health()
    pid = data.get("pid")
    health.pid_alive, health.pid_ours = process_is_daemon(pid if isinstance(pid, int) else 0)
    if not health.pid_alive:
        health.problems.append(f"daemon pid {pid} is not running")
    elif not health.pid_ours:
        health.problems.append(f"pid {pid} is alive but is not a compass-pilot daemon of this user (pid reused?)")
    updated = data.get("updated")
    health.age = now - updated if isinstance(updated, int | float) else None
    if health.age is None or health.age > stale_after:
        health.stale = True
        health.problems.append(f"state is stale: written {_ago(health.age)} (limit {stale_after:.0f} s)")
    if data.get("healthy") is False:
        health.problems.append(f"daemon reports unhealthy: {data.get('unhealthy_reason') or 'no reason given'}")
    breaker = breaker_state(data)
    if breaker["open"]:
        since = breaker.get("since")
        health.problems.append(
            f"circuit breaker open after {breaker['consecutive_failures']} failed submissions"
            f"{' since ' + _ago(now - since) if isinstance(since, int | float) else ''}"
        )
    return health


def breaker_state(data: dict[str, Any]) -> dict[str, Any]:
    """The circuit breaker as {open, consecutive_failures, since}, from either form the daemon writes.

    The daemon writes ``"circuit_breaker": "open" | "closed"`` beside
    ``"consecutive_submit_failures"``; a mapping ``{"open": bool, "consecutive_failures": n,
    "since": t}`` is read as well.
    """
    raw = data.get("circuit_breaker")
    if isinstance(raw, dict):
        return {
            "open": bool(raw.get("open")),
            "consecutive_failures": raw.get("consecutive_failures", 0),
            "since": raw.get("since"),
            "known": True,
        }
    return {
        "open": raw == "open",
        "consecutive_failures": data.get("consecutive_submit_failures", 0),
        "since": None,
        "known": raw is not None,
    }


def journal_states(path: Path) -> dict[str, int] | None:
    """Jobs by state from the daemon's journal, read-only: a pending final report counts as its final state.

    The state file's counts cover only the submissions in flight; the journal is what the
    daemon will act on after a restart, so its word is the truth.  ``None`` when absent.
    """
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        rows = conn.execute(
            "SELECT COALESCE((SELECT r.state FROM reports r WHERE r.panda_id = j.panda_id"
            " AND r.attempt_nr = j.attempt_nr AND r.is_final = 1), j.state) AS s,"
            " MAX(j.final_acked) = 0 AND (SELECT COUNT(*) FROM reports r WHERE r.panda_id = j.panda_id"
            " AND r.attempt_nr = j.attempt_nr AND r.is_final = 1) > 0 AS owed"
            " FROM jobs j GROUP BY j.panda_id, j.attempt_nr"
        ).fetchall()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    counts: dict[str, int] = {}
    for state, owed in rows:
        key = f"{state} (not acknowledged)" if owed else str(state)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _by_lifecycle(counts: dict[str, int]) -> str:
    order = ["defined", "activated", "sent", "starting", "submitted", "running", "transferring", *FINAL]
    keys = sorted(counts, key=lambda k: (order.index(k.split()[0]) if k.split()[0] in order else 99, k))
    return ", ".join(f"{k} {counts[k]}" for k in keys) or "none"


def format_status(
    data: dict[str, Any],
    now: float | None = None,
    health: Health | None = None,
    journal: dict[str, int] | None = None,
) -> str:
    """The at-a-glance view a site admin wants on the MOM node."""
    now = now or time.time()
    lines = []
    if health is not None:
        verdict = "HEALTHY" if health.healthy else "UNHEALTHY: " + "; ".join(health.problems)
        lines.append(verdict)
    age = now - data.get("updated", now)
    pid_note = ""
    if health is not None:
        pid_note = " (running)" if health.pid_alive and health.pid_ours else " (NOT running)"
    stale_note = "  [STALE]" if health is not None and health.stale else ""
    lines.append(
        f"site {data.get('site')}  daemon pid {data.get('pid')}{pid_note}  state written {_ago(age)}{stale_note}"
    )
    contact = data.get("last_server_contact") or 0
    lines.append(
        f"last PanDA contact: {_ago(now - contact) if contact else 'never'}"
        f"   requests: {data.get('fetch_requests', 0)} fetch, {data.get('update_requests', 0)} update"
        f"   pending updates: {data.get('pending_updates', 0)}"
    )
    breaker = breaker_state(data)
    if breaker["known"]:
        state = "OPEN" if breaker["open"] else "closed"
        lines.append(f"circuit breaker: {state} ({breaker['consecutive_failures']} consecutive submission failures)")
    if "rounds" in data:
        started = data.get("started")
        up = f"up {_ago(now - started).removesuffix(' ago')} · " if isinstance(started, int | float) else ""
        lines.append(
            f"{up}{data['rounds']} rounds · {data.get('in_flight_jobs', 0)} jobs in flight · "
            f"{data.get('jobs_finished', 0)} finished, {data.get('jobs_failed', 0)} failed since start"
        )
    subs = data.get("submissions", [])
    lines.append(f"submissions in flight: {len(subs)}")
    if subs:
        lines.append(f"  {'batch id':<28} {'queue':<8} {'nodes':>5} {'jobs':>5} {'age':>10}  status")
        for s in subs:
            lines.append(
                f"  {str(s.get('batch_id', ''))[:28]:<28} {s.get('queue', ''):<8} {s.get('nodes', 0):>5}"
                f" {s.get('jobs', 0):>5} {_ago(now - s.get('created', now)):>10}  {s.get('batch_status', '')}"
            )
    if journal is not None:
        lines.append("jobs by state (journal): " + _by_lifecycle(journal))
    lines.append("jobs in flight by state: " + _by_lifecycle(data.get("jobs_by_state", {})))
    errors = data.get("errors_by_code", {})
    lines.append("errors by code: " + (", ".join(f"{k}×{v}" for k, v in sorted(errors.items())) or "none"))
    for e in data.get("recent_errors", [])[-5:]:
        lines.append(f"  job {e.get('panda_id')}: {e.get('code')} {str(e.get('diag', ''))[:100]}")
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
    shared = Path(expand(site.hpc.shared_dir))
    data = read_state(shared / STATE_FILE)
    now = time.time()
    # three missed rounds: one slow round is normal, three are a hung or dead daemon
    stale_after = args.stale_after or max(3 * site.hpc.poll_interval, 60.0)
    health = assess(data, now=now, stale_after=stale_after)
    journal = journal_states(shared / JOURNAL_FILE)
    if getattr(args, "prometheus", False):
        print(prometheus_text(data, health, now), end="")
    elif getattr(args, "json", False):
        doc = {
            "healthy": health.healthy,
            **asdict(health),
            "state_file": str(shared / STATE_FILE),
            "journal_jobs_by_state": journal,
            "daemon": data,
        }
        print(json.dumps(doc, indent=1, default=str))
    else:
        print(format_status(data, now, health, journal))
    return ExitCode.OK if health.healthy else ExitCode.UNHEALTHY


def prometheus_text(data: dict[str, Any], health: Health, now: float) -> str:
    """The daemon's figures for node_exporter's textfile collector (``status --prometheus > x.prom``)."""
    from compass_pilot.panda.metrics import MetricWriter

    out = MetricWriter()
    labels = {"site": str(data.get("site", ""))}

    def gauge(name: str, help_text: str, value: float, extra: dict[str, str] | None = None) -> None:
        out.family(name, "gauge", help_text).sample(name, value, {**labels, **(extra or {})})

    gauge("compass_daemon_healthy", "1 when status finds the daemon healthy, else 0.", int(health.healthy))
    gauge("compass_daemon_state_age_seconds", "Seconds since the daemon wrote its state.", round(health.age or 0.0, 1))
    gauge("compass_daemon_rounds", "Rounds since the daemon started.", data.get("rounds", 0))
    gauge("compass_daemon_in_flight_jobs", "Jobs in submissions not yet final.", data.get("in_flight_jobs", 0))
    contact = data.get("last_server_contact") or 0
    gauge(
        "compass_daemon_server_contact_age_seconds",
        "Seconds since the last answer from PanDA.",
        round(now - contact, 1) if contact else float("inf"),
    )
    gauge("compass_daemon_pending_updates", "Reports queued for PanDA.", data.get("pending_updates", 0))
    gauge("compass_daemon_circuit_breaker_open", "1 when the circuit breaker stopped fetching.",
          int(breaker_state(data)["open"]))  # fmt: skip
    out.family("compass_daemon_jobs_final", "gauge", "Final states reached since the daemon started.")
    for state in ("finished", "failed"):
        out.sample("compass_daemon_jobs_final", data.get(f"jobs_{state}", 0), {**labels, "state": state})
    return out.text()
