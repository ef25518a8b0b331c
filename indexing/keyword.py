"""Keyword (sparse) vectors for hybrid search: Qdrant's BM25, run in-process.

``qdrant_edge.Bm25`` is Qdrant's own BM25 model (Rust: tokenizer, English stop words,
Snowball stemmer, term-frequency saturation). It only turns text into sparse vectors, so the
same vectors feed both index implementations; the index applies IDF at query time (the
sparse vector is declared with the IDF modifier). The parameters are fixed here and named
by ``index.KEYWORD_MODEL``, which is recorded in every index.

Imports: qdrant_edge, indexing.index.
"""

from __future__ import annotations

import threading

import qdrant_edge as qe

from indexing.index import KEYWORD_MODEL, SparseVector

# Our chunks are at most ~200 word pieces, ~150 words: the length BM25 normalises against.
# Changing any of these changes the vectors: change KEYWORD_MODEL with them.
_K, _B, _AVG_LEN, _LANGUAGE = 1.2, 0.75, 150.0, "english"


class KeywordEncoder:
    """Text → BM25 sparse vectors (documents: saturated term frequencies; queries: 1s)."""

    name = KEYWORD_MODEL

    def __init__(self) -> None:
        self._local = threading.local()  # one model per thread: no shared mutable state

    @property
    def _model(self) -> qe.Bm25:
        model: qe.Bm25 | None = getattr(self._local, "model", None)
        if model is None:
            model = qe.Bm25(qe.Bm25Config(k=_K, b=_B, avg_len=_AVG_LEN, language=_LANGUAGE))
            self._local.model = model
        return model

    def document(self, text: str) -> SparseVector:
        return _ours(self._model.embed_document(text))

    def query(self, text: str) -> SparseVector:
        return _ours(self._model.embed_query(text))


def _ours(vector: qe.SparseVector) -> SparseVector:
    return SparseVector(indices=tuple(vector.indices), values=tuple(vector.values))
