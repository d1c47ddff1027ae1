"""``compass-pilot daemon``: the command-line glue around :class:`~compass_pilot.modes.multijob.MultiJobDaemon`.

Kept apart from the daemon itself so ``modes/multijob.py`` holds only the daemon's logic,
and the CLI's concerns (signals, the closing line, the exit code) live in one small place.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections import Counter
from typing import Any

from compass_pilot.config import load_site_config
from compass_pilot.exitcodes import ExitCode, for_job_outcomes
from compass_pilot.modes.batchgate import BackgroundPreflight, make_backend


def cmd_daemon(args: argparse.Namespace) -> int:
    from compass_pilot.leanimports import decline_charset_guessers

    decline_charset_guessers()  # before requests is imported: 3.4 MiB of the daemon's RSS it never uses
    site = load_site_config(args.site)
    backend = make_backend(site)
    # first the batch system: its probe, the broker's start and its job service's opening run
    # while the daemon's own modules are imported (they are not needed before)
    early = BackgroundPreflight(backend)
    from compass_pilot.modes.multijob import MultiJobDaemon
    from compass_pilot.panda.client import PandaClient, make_pilot_id

    client = PandaClient(site.panda, site.site, pilot_id=make_pilot_id("daemon"))
    daemon = MultiJobDaemon(site, client, backend, early_preflight=early)
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        # SIGTERM (the batch system or systemd ending us) takes the submissions down too; Ctrl-C only stops fetching
        daemon.terminate() if signum == signal.SIGTERM else daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        code = daemon.run(once=args.once, max_cycles=args.max_cycles)
    finally:
        client.close()
    if daemon.exit_code and daemon.unhealthy:
        print(f"daemon: {daemon.unhealthy}", file=sys.stderr)  # the one line that says why
    states = Counter(daemon.outcomes)  # every final since start (final_states keeps the recent ones)
    print(
        f"daemon done: {dict(states)}; fetch requests {daemon.source.stats.requests}, "
        f"update requests {daemon.updater.stats.requests}"
    )
    return daemon_exit_code(daemon, code, received[0] if received else None)


def daemon_exit_code(daemon: Any, code: int, signum: int | None) -> int:
    """The daemon's own verdict first (preflight, reports owed), then a signal, the breaker, the jobs' outcome."""
    if code == ExitCode.REPORTS_OWED:
        owed = daemon.updater.pending_finals()
        print(f"{owed} final state(s) not acknowledged: kept in the journal for the next daemon", file=sys.stderr)
    if code != ExitCode.OK:
        return code
    if signum is not None:
        return 128 + signum
    if getattr(daemon, "breaker_open", False):
        print("circuit breaker open: submissions kept failing, the daemon stopped fetching", file=sys.stderr)
        return ExitCode.BLACK_HOLE
    states = Counter(daemon.outcomes)  # every final since start (final_states keeps the recent ones)
    return for_job_outcomes(states.get("finished", 0), states.get("failed", 0))
