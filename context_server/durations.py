"""Durations as people write them in YAML and on the command line: ``365d``, ``15m``."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``"365d"``, ``"12h"``, ``"30m"``, ``"2w"``, ``"45s"`` as a ``timedelta``."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(
            f"bad duration {text!r}: a whole number and a unit s, m, h, d or w (e.g. 365d)"
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: must be positive")
    return timedelta(seconds=seconds)
