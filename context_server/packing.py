"""Fitting candidate passages into a token budget: near-duplicates out, then greedy by score.

Near-duplicates are found by word 4-gram (shingle) Jaccard similarity: cheap, deterministic,
and enough for the 50 candidates of one request (a chunk and its copy in another document,
a page exported twice).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, TypeVar

#: Two passages sharing at least this fraction of their word 4-grams are one passage.
NEAR_DUPLICATE_JACCARD = 0.8
_SHINGLE = 4
_WORD_RE = re.compile(r"\w+")

Shingles = frozenset[tuple[str, ...]]


class Packable(Protocol):
    @property
    def tokens(self) -> int: ...

    @property
    def shingles(self) -> Shingles: ...


P = TypeVar("P", bound=Packable)


def shingles(text: str) -> Shingles:
    words = [w.lower() for w in _WORD_RE.findall(text)]
    if len(words) < _SHINGLE:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i : i + _SHINGLE]) for i in range(len(words) - _SHINGLE + 1))


def jaccard(a: Shingles, b: Shingles) -> float:
    if not a or not b:
        return 1.0 if a == b else 0.0
    return len(a & b) / len(a | b)


def pack(candidates: Sequence[P], budget: int) -> tuple[list[P], int]:
    """Near-duplicates out (the better-scored copy stays), then greedy by score into the
    budget: an item that does not fit is skipped and smaller ones after it may still fit."""
    kept: list[P] = []
    duplicates = 0
    used = 0
    for candidate in candidates:
        if any(jaccard(candidate.shingles, k.shingles) >= NEAR_DUPLICATE_JACCARD for k in kept):
            duplicates += 1
            continue
        if used + candidate.tokens > budget:
            continue
        kept.append(candidate)
        used += candidate.tokens
    return kept, duplicates
