"""Imports the daemon process declines: libraries its dependencies load but it never uses.

requests imports a character-set guesser at import time (charset_normalizer: 3.4 MiB of
the daemon's RSS and 107 modules — it imports every codec Python has) only to guess the
encoding of a text answer that declares none.  The daemon's PanDA client decodes every
answer itself (UTF-8 JSON, or the ASCII of a legacy status line), so nothing is lost:
without a guesser requests falls back to UTF-8 (``Response.apparent_encoding``) and says
so once with a warning, silenced here.

Only the daemon process declines them (``compass-pilot daemon`` calls
:func:`decline_charset_guessers` before it imports the client): a process that hosts other
code — Harvester loading our plugins, the test suite — keeps requests as it is.
"""

from __future__ import annotations

import sys
import warnings

CHARSET_GUESSERS = ("charset_normalizer", "chardet")


def decline_charset_guessers() -> bool:
    """Make requests import without a charset guesser; False when one is already loaded (too late)."""
    if "requests" in sys.modules or any(sys.modules.get(name) for name in CHARSET_GUESSERS):
        return False
    warnings.filterwarnings("ignore", message="Unable to find acceptable character detection dependency")
    for name in CHARSET_GUESSERS:
        sys.modules.setdefault(name, None)  # type: ignore[assignment]  # import → ImportError
    return True
