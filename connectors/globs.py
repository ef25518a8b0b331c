"""Path globs for ACL rules: ``*`` stays inside one folder, ``**`` crosses folders.

``finance/**`` matches everything below ``finance/``; ``**/*.pdf`` matches a PDF at any
depth, the top folder included; ``?`` is one character other than ``/``; ``[abc]`` a set,
``[!abc]`` its complement (``]`` first in a set is literal, ``a-z`` a range; a set never
matches ``/``). ``*`` and ``?`` match a leading dot, so ``**/.*`` is every hidden file.
``\\`` is an ordinary character, not an escape. Paths are relative, with ``/`` separators.
Matching is case-sensitive and exact: every character a file system allows in a name
(newline, carriage return, other control characters, Unicode separators, the lone
surrogates ``os`` uses for bytes that are not UTF-8) matches exactly as a letter would.

Why our own translator and not wcmatch: wcmatch (GLOBSTAR | DOTMATCH) refuses ``.`` and
``..`` path parts with a ``$`` lookahead, so a legal name such as ``..\\n`` matches no
pattern at all, not even ``**``, and that file would fall to the fallback ACL; it also
reads ``[`` without ``]`` as a literal where we refuse the pattern. The property tests in
tests/security/test_names_and_globs.py compare this matcher with wcmatch on plain names.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["compile_glob", "glob_match"]


def _set(pattern: str, start: int) -> tuple[str, int]:
    """The regex for the set opening at ``pattern[start] == '['`` and the index after it."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] == "!"
    if negate:
        i += 1
    items: list[str] = []
    first = True
    while i < len(pattern) and (first or pattern[i] != "]"):
        first = False
        c = pattern[i]
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            lo, hi = c, pattern[i + 2]
            if lo > hi:
                raise ValueError(f"bad glob {pattern!r}: range {lo}-{hi} is reversed")
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 3
        else:
            items.append(re.escape(c))
            i += 1
    if i >= len(pattern):
        raise ValueError(f"bad glob {pattern!r}: '[' without ']'")
    body = "".join(items)
    # A set is one character of a name: never the folder separator.
    return (f"[^/{body}]" if negate else f"(?!/)[{body}]"), i + 1


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The compiled pattern; ``ValueError`` ("bad glob ...") when it is not a valid glob."""
    if not pattern or pattern.startswith("/"):
        raise ValueError(f"bad glob {pattern!r}: write a relative path pattern like 'finance/**'")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # zero or more whole folders
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            regex, i = _set(pattern, i)
            out.append(regex)
        else:
            out.append(re.escape(c))
            i += 1
    # DOTALL: '.' must match a newline like any letter. fullmatch (not '$', which also
    # matches before a final newline) so 'a.pdf\n' is not a PDF.
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:  # not expected: every part above is escaped
        raise ValueError(f"bad glob {pattern!r}: {exc}") from None


def glob_match(pattern: str, path: str) -> bool:
    """Whether the relative ``path`` matches ``pattern`` (see the module docstring)."""
    return compile_glob(pattern).fullmatch(path) is not None
