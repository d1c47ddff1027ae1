"""The calibration database COMPASS reconstruction reads: one private instance per node.

``open_calibdb(cfg)`` gives the node-shared handle (first user starts it, last user stops
it); ``connect(env)`` / ``read_constants(conn, run)`` are what a payload uses.
"""

from calibdb.endpoint import Endpoint, connect, make_endpoint, read_constants
from calibdb.node import CalibDB, open_calibdb
from calibdb.snapshot import build_snapshot, demo_snapshot

__all__ = [
    "CalibDB",
    "Endpoint",
    "build_snapshot",
    "connect",
    "demo_snapshot",
    "make_endpoint",
    "open_calibdb",
    "read_constants",
]
