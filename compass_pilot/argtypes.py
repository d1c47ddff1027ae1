"""argparse value types shared by every subcommand, so each bad value is one line naming it.

The grid options (pilot3's, in ``modes/grid_args``) and the other subcommands (``cli``)
take counts and intervals; one checker each keeps their wording and limits the same.
"""

from __future__ import annotations

import argparse


def count(value: str) -> int:
    """A whole number ≥ 0 (0 conventionally means "no limit")."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number} is negative (0 means no limit)")
    return number


def seconds(value: str) -> float:
    """An interval of at least 1 s: the pilot never polls faster (no busy loops)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number:g} s is under 1 s (no busy polling)")
    return number


def positive(value: str) -> int:
    """A whole number ≥ 1 (a limit that cannot be switched off)."""
    number = count(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not at least 1")
    return number
