"""The calibration database COMPASS reconstruction reads: one private instance per node.

``open_calibdb(cfg)`` gives the node-shared handle (first user starts it, last user stops
it); ``connect(env)`` / ``read_constants(conn, run)`` are what a payload uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from calibdb.endpoint import Endpoint, connect, make_endpoint, read_constants
    from calibdb.node import CalibDB, open_calibdb
    from calibdb.snapshot import build_snapshot, demo_snapshot

# Loaded on first use (PEP 562): whoever needs only ``calibdb.endpoint``'s constants (the
# trusted-command code every node agent imports) must not pay for the node manager,
# psutil and the backends (~20 ms per agent start).
_WHERE = {
    "Endpoint": "calibdb.endpoint",
    "connect": "calibdb.endpoint",
    "make_endpoint": "calibdb.endpoint",
    "read_constants": "calibdb.endpoint",
    "CalibDB": "calibdb.node",
    "open_calibdb": "calibdb.node",
    "build_snapshot": "calibdb.snapshot",
    "demo_snapshot": "calibdb.snapshot",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'calibdb' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


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
