"""Plugin loggers: Harvester's own when the plugins run inside Harvester, ours otherwise.

Harvester writes each module's log to ``panda-<name>.log`` through
``core_utils.setup_logger(name)`` (a PandaLogger, core_utils.py l. 174-184 at d561b72);
lines logged through a plain ``logging.getLogger`` never reach those files, so an
operator reading Harvester's logs would not see why a worker or a transfer failed.
Inside Harvester our modules log to ``panda-compass_<module>.log``; outside (our daemon,
the tests) the standard ``logging`` tree is used, under the module's own name.
"""

from __future__ import annotations

import logging
from typing import Any

from harvester_plugins import compat


def plugin_logger(module: str) -> Any:
    """The logger for plugin module ``module`` (pass ``__name__``)."""
    if compat.HAVE_HARVESTER:  # pragma: no cover - only inside Harvester
        try:
            from pandaharvester.harvestercore import core_utils

            return core_utils.setup_logger("compass_" + module.rsplit(".", 1)[-1])
        except Exception:  # Harvester importable but unconfigured (no panda_common logger config)
            pass
    return logging.getLogger(module)
