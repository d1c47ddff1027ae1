"""``compass-pilot daemon``: the command-line glue around :class:`~compass_pilot.modes.multijob.MultiJobDaemon`.

Kept apart from the daemon itself so ``modes/multijob.py`` holds only the daemon's logic,
and the CLI's concerns (signals, the closing line, the exit code) live in one small place.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections import Counter

from compass_pilot.config import load_site_config
from compass_pilot.modes.multijob import MultiJobDaemon, make_backend


def cmd_daemon(args: argparse.Namespace) -> int:
    from compass_pilot.panda.client import PandaClient

    site = load_site_config(args.site)
    client = PandaClient(site.panda, site.site)
    daemon = MultiJobDaemon(site, client, make_backend(site))
    signal.signal(signal.SIGTERM, lambda *_: daemon.terminate())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    try:
        code = daemon.run(once=args.once, max_cycles=args.max_cycles)
    finally:
        client.close()
    if daemon.exit_code and daemon.unhealthy:
        print(f"daemon: {daemon.unhealthy}", file=sys.stderr)  # the one line that says why
    states = Counter(daemon.final_states.values())
    print(
        f"daemon done: {dict(states)}; fetch requests {daemon.source.stats.requests}, "
        f"update requests {daemon.updater.stats.requests}"
    )
    return code
