#!/usr/bin/env python3
"""Run a real xrootd over an export dir until Ctrl-C / SIGTERM (tests, the demo, by hand).

    python3 scripts/xrootd_server.py [--export DIR] [--port N] [--no-checksum]

Prints ``url=root://127.0.0.1:PORT/`` and ``export=DIR`` once the server is ready, then
waits.  The reusable part is ``compass_pilot.copytools.xrootd_server.XRootDServer``;
this is only its command line.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from compass_pilot.copytools.xrootd_server import XRootDServer, XRootDServerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="directory to export (default: a fresh temp dir, removed on exit)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: one the server picks)")
    parser.add_argument("--no-checksum", action="store_true", help="no adler32 plug-in (xrdfs query checksum fails)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with XRootDServer(args.export, port=args.port, checksum=not args.no_checksum) as server:
            print(f"url={server.url}\nexport={server.data}", flush=True)
            proc = server.proc
            assert proc is not None
            # a dead server ends the wait too: one thread blocks on it, no polling
            threading.Thread(target=lambda: (proc.wait(), stop.set()), daemon=True).start()
            stop.wait()
            if proc.poll() is not None:
                print(f"xrootd exited with {proc.returncode}: {server.log_tail()}", file=sys.stderr)
                return 1
    except XRootDServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
