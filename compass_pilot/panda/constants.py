"""Names and numbers the dispatcher's command line shares with its server, importable without the server.

``compass-pilot`` builds every subcommand's arguments on each start; the daemon and the
grid pilot must not load the embedded dispatcher (its store, wire, pages: ~11 MiB and
300 modules) just to learn the defaults of ``compass-pilot dispatcher``.
"""

from __future__ import annotations

#: Who a bearer token may name (``panda.auth``).
ROLES = ("pilot", "admin")
#: Open connections served at once (each holds a thread): beyond it a new one gets 503 and is closed.
MAX_CONNECTIONS = 512
#: Open connections from one client address: one host cannot take every thread, whatever it sends.
MAX_CONNECTIONS_PER_CLIENT = 64
