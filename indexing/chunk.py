"""Chunking: a ``ParsedDocument`` → bounded, section-aware, overlapping text chunks.

``chunk(parsed, max_tokens=…, overlap_tokens=…, count_tokens=…)`` returns ``Chunk`` values
whose ``text`` is exactly ``parsed.full_text[span_start:span_end]``. Rules:

* Size: no chunk counts more than ``max_tokens`` by ``count_tokens`` (the embedder's own
  tokenizer in the pipeline; a cheap word-piece estimate by default).
* Structure: an element that fits is never split. A longer one is cut at line, then
  sentence, then whitespace boundaries, and only a single over-long "word" is cut inside.
* Sections: a chunk ends where the heading path changes, unless it is still smaller than
  ``combine_under_tokens`` (a lone heading or a one-line section joins what follows).
  ``Chunk.section`` is the heading path shared by everything in the chunk (overlap aside).
* Overlap: a chunk that continues the same section as the previous one starts with up to
  ``overlap_tokens`` of the previous chunk's tail (on a word boundary). No overlap across
  sections.
* Deterministic: same input, same chunks.

``Chunk.tokens`` is the counter's verdict on the final text, so callers need not recount.

Imports: stdlib; indexing.parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple

from indexing.parse import Element, ParsedDocument

TokenCounter = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Chunk:
    ordinal: int  # 0..n-1 in document order
    text: str  # == full_text[span_start:span_end]
    span_start: int
    span_end: int
    section: tuple[str, ...]  # heading path, outermost first; () when the document has none
    page: int | None  # page of the chunk's first new text (the overlap may begin earlier)
    tokens: int  # count_tokens(text), as measured while chunking


_PIECE_RE: Final = re.compile(r"\w+|[^\w\s]")
_WORD_RE: Final = re.compile(r"\S+")


def approx_token_count(text: str) -> int:
    """Cheap stand-in for a word-piece tokenizer: a token per punctuation mark, one per word
    plus one per further 8 characters (rare long words split into several pieces)."""
    return sum(1 + (len(p) - 1) // 8 for p in _PIECE_RE.findall(text))


class _Atom(NamedTuple):
    """An unsplittable run of text (``start``/``end`` index the full text)."""

    start: int
    end: int
    tokens: int
    section: tuple[str, ...]
    page: int | None


# Boundaries from coarse to fine, for cutting an element that is over the limit; group 1 is
# the whitespace dropped between pieces (a sentence keeps its closing quote or bracket).
_SPLITTERS: Final = (
    re.compile(r"(\s*\n\s*)"),  # lines: table rows, list lines
    re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*(\s+)"),  # sentences
    re.compile(r"(\s+)"),  # words
)


def chunk(
    parsed: ParsedDocument,
    *,
    max_tokens: int = 200,
    overlap_tokens: int = 30,
    count_tokens: TokenCounter | None = None,
    combine_under_tokens: int | None = None,
) -> list[Chunk]:
    """Cut ``parsed`` into chunks; see the module docstring for the rules."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError("overlap_tokens must be in [0, max_tokens)")
    count = count_tokens or approx_token_count
    combine_under = max_tokens // 4 if combine_under_tokens is None else combine_under_tokens
    text = parsed.full_text
    atoms = [a for el in parsed.elements for a in _atoms(el, text, max_tokens, count)]

    chunks: list[Chunk] = []
    i = 0
    overlap_from: tuple[int, int] | None = None  # previous chunk's span when it continues
    while i < len(atoms):
        first = atoms[i]
        start = first.start
        est = first.tokens
        if overlap_from is not None and overlap_tokens:
            budget = min(overlap_tokens, max_tokens - first.tokens)
            tail = _tail(text, *overlap_from, budget, count) if budget > 0 else None
            if tail is not None:
                start, tail_tokens = tail
                est += tail_tokens
        j = i + 1
        while j < len(atoms):
            atom = atoms[j]
            if atom.section != atoms[j - 1].section and est >= combine_under:
                break
            if est + atom.tokens > max_tokens:
                break
            est += atom.tokens
            j += 1
        # The sum of the parts is an estimate; the counter on the joined text decides. Shed
        # atoms, then the overlap; a lone atom fits by construction.
        while (tokens := count(text[start : atoms[j - 1].end])) > max_tokens:
            if j - i > 1:
                j -= 1
            elif start != first.start:
                start = first.start
            else:
                break
        end = atoms[j - 1].end
        members = atoms[i:j]
        chunks.append(
            Chunk(
                ordinal=len(chunks),
                text=text[start:end],
                span_start=start,
                span_end=end,
                section=_common_prefix([a.section for a in members]),
                page=first.page,
                tokens=tokens,
            )
        )
        continues = j < len(atoms) and atoms[j].section == atoms[j - 1].section
        overlap_from = (start, end) if continues else None
        i = j
    return chunks


def _atoms(el: Element, text: str, max_tokens: int, count: TokenCounter) -> Iterator[_Atom]:
    for start, end, tokens in _split(text, el.span_start, el.span_end, 0, max_tokens, count):
        yield _Atom(start, end, tokens, el.section, el.page)


def _split(
    text: str, start: int, end: int, level: int, max_tokens: int, count: TokenCounter
) -> Iterator[tuple[int, int, int]]:
    """Yield ``(start, end, tokens)`` pieces of ``text[start:end]``, each within the limit."""
    tokens = count(text[start:end])
    if tokens <= max_tokens:
        yield start, end, tokens
        return
    if level == len(_SPLITTERS):
        yield from _split_chars(text, start, end, max_tokens, count)
        return
    pos = start
    for sep in _SPLITTERS[level].finditer(text, start, end):
        if sep.start(1) > pos:
            yield from _split(text, pos, sep.start(1), level + 1, max_tokens, count)
        pos = sep.end(1)
    if pos < end:
        yield from _split(text, pos, end, level + 1, max_tokens, count)


def _split_chars(
    text: str, start: int, end: int, max_tokens: int, count: TokenCounter
) -> Iterator[tuple[int, int, int]]:
    """Cut one over-long word into the longest prefixes that fit (binary search)."""
    while start < end:
        lo, hi = start + 1, end  # a piece always advances by at least one character
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[start:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        yield start, lo, count(text[start:lo])
        start = lo


def _tail(
    text: str, start: int, end: int, budget: int, count: TokenCounter
) -> tuple[int, int] | None:
    """``(s, tokens)`` for the longest tail ``text[s:end]`` that starts on a word after
    ``start`` and fits ``budget``, or None.

    Tails shrink as ``s`` moves right, so this is a binary search. It runs on the cheap
    estimate first and asks the real counter (a tokenizer call, the cost here) only to
    confirm, searching with it only when the estimate was too generous.
    """
    words = [m.start() for m in _WORD_RE.finditer(text, start, end)][1:]

    def first_fit(lo: int, fits: Callable[[int], bool]) -> int:
        hi = len(words)
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(words[mid]):
                hi = mid
            else:
                lo = mid + 1
        return lo

    k = first_fit(0, lambda s: approx_token_count(text[s:end]) <= budget)
    if k < len(words) and (tokens := count(text[words[k] : end])) <= budget:
        return words[k], tokens
    k = first_fit(k + 1, lambda s: count(text[s:end]) <= budget)
    if k < len(words) and (tokens := count(text[words[k] : end])) <= budget:
        return words[k], tokens
    return None  # no word fits, or the counter is not monotone in the tail


def _common_prefix(sections: list[tuple[str, ...]]) -> tuple[str, ...]:
    prefix = sections[0]
    for section in sections[1:]:
        n = 0
        while n < min(len(prefix), len(section)) and prefix[n] == section[n]:
            n += 1
        prefix = prefix[:n]
    return prefix
