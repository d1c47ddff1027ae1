"""Adler-32 of a file, the one checksum PanDA, Harvester and the copytools agree on.

Its own module (``zlib`` only) so the node agent, which sums every output where the data
is hot, does not import the copytools (configuration, YAML) to get it.
"""

from __future__ import annotations

import os
import zlib

#: read size for checksums and copies: large enough to stream GB files fast, small enough
#: to keep the pilot's memory flat whatever the file size
BLOCK = 1024 * 1024


def adler32_of(path: str | os.PathLike[str]) -> str:
    """Streaming adler32 of a file: 8 lower-case hex digits, as PanDA stores it (``ad:`` stripped)
    and Harvester's ``calc_adler32`` writes it."""
    value = 1
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            value = zlib.adler32(block, value)
    return f"{value & 0xFFFFFFFF:08x}"
