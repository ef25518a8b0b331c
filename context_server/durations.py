"""Durations as people write them in YAML and on the command line: ``365d``, ``15m``.

A bad duration is bad input wherever it arrives: ``DurationError`` is a ``SpecError`` (the
API answers 422 with its message) and a ``ValueError`` (what parsers' callers catch).
"""

from __future__ import annotations

import re
from datetime import timedelta

from context_server.errors import SpecError

_DURATION_RE = re.compile(r"^\s*(\d{1,12})\s*([smhdw])\s*$", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The longest duration accepted: a century (``timedelta`` and dates overflow far beyond).
MAX_SECONDS = 100 * 366 * 86400


class DurationError(SpecError, ValueError):
    """A duration that does not parse, or is not positive, or is longer than a century."""


def parse_duration(text: str) -> timedelta:
    """``"365d"``, ``"12h"``, ``"30m"``, ``"2w"``, ``"45s"`` as a ``timedelta``."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise DurationError(
            f"bad duration {text[:50]!r}: a whole number and a unit s, m, h, d or w (e.g. 365d)"
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise DurationError(f"bad duration {text!r}: must be positive")
    if seconds > MAX_SECONDS:
        raise DurationError(f"bad duration {text!r}: at most a century (36600d)")
    return timedelta(seconds=seconds)
