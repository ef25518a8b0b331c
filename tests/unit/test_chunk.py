"""indexing.chunk: bounded, section-aware, overlapping chunks with exact spans."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.chunk import Chunk, approx_token_count, chunk
from indexing.parse import ParsedDocument, Part, assemble


def _words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def _sentences(n: int, words: int = 9, prefix: str = "s") -> str:
    return " ".join(f"{_words(words, f'{prefix}{i}x')}." for i in range(n))


def _word_count(text: str) -> int:
    return len(text.split())


def _check_invariants(
    doc: ParsedDocument, chunks: list[Chunk], max_tokens: int, count: Callable[[str], int]
) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for prev, cur in itertools.pairwise(chunks):
        assert prev.span_start <= cur.span_start
        assert prev.span_end < cur.span_end
    for c in chunks:
        assert 0 <= c.span_start < c.span_end <= len(doc.full_text)
        assert c.text == doc.full_text[c.span_start : c.span_end]
        assert c.text == c.text.strip()
        assert count(c.text) == c.tokens <= max_tokens


def test_small_document_is_one_chunk() -> None:
    doc = assemble("md", [Part("Intro", "Title", 1, ("Intro",)), Part("Hello there.", "Text", 1)])
    [only] = chunk(doc)
    assert only == Chunk(0, doc.full_text, 0, len(doc.full_text), (), 1, tokens=4)


def test_empty_document_has_no_chunks() -> None:
    assert chunk(assemble("txt", [])) == []


def test_sections_start_new_chunks_and_title_stays_with_its_body() -> None:
    doc = assemble(
        "md",
        [
            Part("Alpha", "Title", section=("Alpha",)),
            Part(_sentences(3, prefix="a"), "NarrativeText", section=("Alpha",)),
            Part("Beta", "Title", section=("Beta",)),
            Part(_sentences(3, prefix="b"), "NarrativeText", section=("Beta",)),
        ],
    )
    chunks = chunk(doc, max_tokens=100, overlap_tokens=10, count_tokens=_word_count)
    assert [c.section for c in chunks] == [("Alpha",), ("Beta",)]
    assert chunks[0].text.startswith("Alpha\n\n")
    assert chunks[1].text.startswith("Beta\n\n")
    assert chunks[0].span_end < chunks[1].span_start  # no overlap across sections


def test_tiny_sections_are_combined_under_their_common_heading() -> None:
    doc = assemble(
        "md",
        [
            Part("Guide", "Title", section=("Guide",)),
            Part("Setup", "Title", section=("Guide", "Setup")),
            Part("Run it.", "NarrativeText", section=("Guide", "Setup")),
            Part("Usage", "Title", section=("Guide", "Usage")),
            Part("Use it.", "NarrativeText", section=("Guide", "Usage")),
        ],
    )
    [only] = chunk(doc, max_tokens=50, count_tokens=_word_count)
    assert only.section == ("Guide",)


def test_long_element_splits_at_sentences_with_overlap() -> None:
    text = _sentences(20)  # 20 sentences x 9 words
    doc = assemble("txt", [Part(text, "NarrativeText", 3, ("S",))])
    chunks = chunk(doc, max_tokens=40, overlap_tokens=8, count_tokens=_word_count)
    assert len(chunks) > 4
    _check_invariants(doc, chunks, 40, _word_count)
    for prev, cur in itertools.pairwise(chunks):
        overlap = doc.full_text[cur.span_start : prev.span_end]
        assert 0 < _word_count(overlap) <= 8
    # apart from the overlap, every chunk ends on a sentence boundary
    assert all(c.text.endswith(".") for c in chunks)
    assert {c.page for c in chunks} == {3} and {c.section for c in chunks} == {("S",)}


def test_no_overlap_when_zero() -> None:
    doc = assemble("txt", [Part(_sentences(20), "NarrativeText")])
    chunks = chunk(doc, max_tokens=40, overlap_tokens=0, count_tokens=_word_count)
    for prev, cur in itertools.pairwise(chunks):
        assert prev.span_end < cur.span_start


def test_one_enormous_word_is_cut_inside() -> None:
    doc = assemble("txt", [Part("x" * 1000, "Text")])
    chunks = chunk(doc, max_tokens=10, overlap_tokens=0)
    _check_invariants(doc, chunks, 10, approx_token_count)
    assert "".join(c.text for c in chunks) == "x" * 1000


def test_table_rows_are_split_on_lines() -> None:
    rows = "\n".join(f"row{i} | {i * 7} | ok" for i in range(60))
    doc = assemble("xlsx", [Part(rows, "Table", 1, ("Sheet1",))])
    chunks = chunk(doc, max_tokens=30, overlap_tokens=0)
    _check_invariants(doc, chunks, 30, approx_token_count)
    assert all(c.text.startswith("row") and c.text.endswith("ok") for c in chunks)


def test_page_is_where_the_chunk_starts() -> None:
    doc = assemble(
        "pdf",
        [Part(_sentences(3, prefix=f"p{p}"), "NarrativeText", p) for p in (1, 2, 3)],
    )
    chunks = chunk(doc, max_tokens=30, overlap_tokens=5, count_tokens=_word_count)
    assert [c.page for c in chunks] == [1, 2, 3]


def test_bad_parameters() -> None:
    doc = assemble("txt", [Part("a", "Text")])
    with pytest.raises(ValueError):
        chunk(doc, max_tokens=0)
    with pytest.raises(ValueError):
        chunk(doc, max_tokens=10, overlap_tokens=10)


def test_approx_token_count() -> None:
    assert approx_token_count("") == 0
    assert approx_token_count("Hello, world!") == 4
    assert approx_token_count("internationalization") == 3


# --------------------------------------------------------------------------- properties

_word = st.one_of(
    st.sampled_from(["the", "a", "budget", "Q3", "e-mail", "don't", "naïve", "数据", "1,234.5"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz.,;!?'\"()-0123456789", min_size=1, max_size=40),
)
_separator = st.sampled_from([" ", " ", " ", "  ", "\n", ". ", "! ", "\n\n", "\t"])


@st.composite
def _element_text(draw: st.DrawFn) -> str:
    words = draw(st.lists(_word, min_size=1, max_size=80))
    seps = draw(st.lists(_separator, min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps, strict=True))


_parts = st.lists(
    st.builds(
        Part,
        text=_element_text(),
        category=st.sampled_from(["Title", "NarrativeText", "ListItem", "Table"]),
        page=st.one_of(st.none(), st.integers(1, 5)),
        section=st.sampled_from([(), ("A",), ("A", "B"), ("C",)]),
    ),
    min_size=0,
    max_size=12,
)
_counters: list[Callable[[str], int]] = [
    approx_token_count,
    _word_count,
    lambda s: (len(s) + 3) // 4,  # character-based: not additive, counts whitespace
]


@settings(max_examples=300, deadline=None)
@given(
    parts=_parts,
    max_tokens=st.integers(1, 60),
    overlap_ratio=st.floats(0, 0.9),
    counter=st.sampled_from(_counters),
)
def test_chunk_properties(
    parts: list[Part], max_tokens: int, overlap_ratio: float, counter: Callable[[str], int]
) -> None:
    doc = assemble("txt", parts)
    overlap = int(max_tokens * overlap_ratio)
    chunks = chunk(doc, max_tokens=max_tokens, overlap_tokens=overlap, count_tokens=counter)

    _check_invariants(doc, chunks, max_tokens, counter)
    spans = [(c.span_start, c.span_end) for c in chunks]
    # every non-whitespace character is in some chunk …
    for m in re.finditer(r"\S", doc.full_text):
        assert any(s <= m.start() < e for s, e in spans)
    # … and every word that fits the limit appears whole in at least one chunk
    for m in re.finditer(r"\S+", doc.full_text):
        if counter(m.group()) <= max_tokens:
            assert any(s <= m.start() and m.end() <= e for s, e in spans), m.group()
    # deterministic
    assert chunk(doc, max_tokens=max_tokens, overlap_tokens=overlap, count_tokens=counter) == chunks
