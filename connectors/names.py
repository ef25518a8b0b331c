"""File names as connectors emit them: always valid UTF-8, stable and unambiguous.

``os`` hands a name that is not valid UTF-8 to Python with each undecodable byte as a lone
surrogate (``b"caf\\xe9"`` → ``"caf\\udce9"``, PEP 383). Such a string matches globs like any
other (the bytes are matched exactly), but it cannot be stored, JSON-encoded or shown. So
every string a connector emits from a name (external id, title, file name, checkpoint key,
failure id) goes through :func:`escape_name`:

- each undecodable byte becomes ``\\xHH`` (two lowercase hex digits): ``caf\\xe9.txt``;
- a backslash becomes ``\\\\``, so a file really named ``caf\\xe9.txt`` (with a backslash)
  is ``caf\\\\xe9.txt`` and the two never collide;
- everything else, newlines and other control characters included, is kept: it is valid
  UTF-8 and the name as the user sees it.

The mapping is injective (every backslash in the output starts ``\\\\`` or ``\\xHH``) and
depends on the name only, so an id is the same on every sync. Names without a backslash or
an undecodable byte, i.e. nearly all, are unchanged. URLs instead percent-encode the real
bytes (:func:`quote_name`), which is what a web server serving the share expects.

Imports: stdlib only.
"""

from __future__ import annotations

import re
from urllib.parse import quote

__all__ = ["escape_name", "name_bytes", "quote_name"]

_NEEDS_ESCAPE = re.compile("[\\\\\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte os could not decode
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"  # any other lone surrogate (not from os, but never emitted raw)


def escape_name(name: str) -> str:
    """``name`` (or a ``/``-separated path) as valid UTF-8; see the module docstring."""
    return _NEEDS_ESCAPE.sub(_escape, name)


def name_bytes(name: str) -> bytes:
    """The bytes the file system has for ``name`` (the inverse of ``os.fsdecode``)."""
    return name.encode("utf-8", "surrogateescape")


def quote_name(path: str, safe: str = "/") -> str:
    """``path`` percent-encoded for a URL from its real bytes (``caf%E9.txt``)."""
    try:
        return quote(name_bytes(path), safe=safe)
    except UnicodeEncodeError:  # a surrogate os never produces: quote what we can show
        return quote(escape_name(path), safe=safe)
