"""The ``VectorIndex`` interface and the values that cross it.

Two implementations live beside it: ``qdrant_edge.py`` (the embedded default: Qdrant's
engine in-process through ``qdrant-edge-py``) and ``qdrant_server.py`` (a Qdrant server
through ``qdrant-client``). ``open_index`` picks one from a URL or a path; code above
this interface never branches on which one it has.

Access control is a *pre-filter*: ``search`` takes an :class:`AccessFilter` and the
implementation must put it inside the vector query. A point qualifies when its
``acl_allow`` shares a token with the caller's principals (``PUBLIC`` is always one of
them) and its ``acl_deny`` shares none.

Imports: stdlib, qdrant libraries, connectors.base.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from connectors.base import PUBLIC

#: The keyword (sparse) model every index carries beside the dense vectors: Qdrant's BM25
#: (English stop words, Snowball stemmer) with these parameters; IDF is applied by the index
#: at query time. Part of the index identity: a different keyword model needs a re-index.
KEYWORD_MODEL = "qdrant-bm25/english/k1.2/b0.75/avg150"
#: The name of the sparse vector in both implementations.
KEYWORD_VECTOR = "keyword"
#: Reciprocal rank fusion constant for hybrid search (the usual 60).
RRF_K = 60
#: How many candidates each part of a hybrid search contributes to the fusion.
HYBRID_DEPTH = 100


@dataclass(frozen=True)
class EmbedderIdentity:
    """Which models made the vectors. Mixing two in one index is refused."""

    name: str  # e.g. "all-MiniLM-L6-v2"
    backend: str  # e.g. "torch-bf16"
    dim: int
    keyword: str = KEYWORD_MODEL

    def key(self) -> str:
        return f"{self.name}/{self.backend}/{self.dim}+{self.keyword}"


@dataclass(frozen=True)
class SparseVector:
    """Keyword weights: token ids (32-bit hashes) and their weights."""

    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class ChunkPayload:
    """What the index stores beside each vector."""

    document_id: str
    source: str
    chunk_id: str
    ordinal: int
    title: str
    url: str | None
    version: str
    span_start: int
    span_end: int
    text: str
    section: str | None = None
    acl_allow: tuple[str, ...] = ()
    acl_deny: tuple[str, ...] = ()
    #: When the document last changed at its source (POSIX seconds; when the source gives
    #: no time, when we indexed it). ``None`` in indexes from before freshness filters.
    updated_at: float | None = None


@dataclass(frozen=True)
class IndexPoint:
    id: str  # a UUID string: the chunk's vector point id
    vector: Sequence[float]
    payload: ChunkPayload
    sparse: SparseVector | None = None


@dataclass(frozen=True)
class AccessFilter:
    """What a search may see: the caller's resolved principals, optionally the sources it
    may draw from, a second principal set that must *also* be granted (an agent reading
    only what both it and its user may read), and a freshness limit."""

    principals: frozenset[str]
    sources: frozenset[str] | None = None
    also: frozenset[str] | None = None
    #: Only documents updated at or after this POSIX time (points recording no time pass).
    updated_after: float | None = None

    def tokens(self) -> list[str]:
        return sorted(self.principals | {PUBLIC})

    def also_tokens(self) -> list[str] | None:
        return None if self.also is None else sorted(self.also | {PUBLIC})

    def deny_tokens(self) -> list[str]:
        """A deny entry naming any principal of either set excludes the point."""
        return sorted(self.principals | (self.also or frozenset()) | {PUBLIC})


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: ChunkPayload = field(compare=False)


class VectorIndex(Protocol):
    """A permission-aware vector index owned by one process."""

    def ensure(self, identity: EmbedderIdentity) -> None:
        """Create the collection (payload indexes first) or check the recorded identity.

        Raises ``EmbedderMismatchError`` when the index was built by another embedder.
        """

    def upsert(self, points: Sequence[IndexPoint]) -> None: ...

    def delete(self, point_ids: Sequence[str]) -> None: ...

    def delete_document(self, document_id: str) -> None: ...

    def set_acl(self, document_id: str, allow: Sequence[str], deny: Sequence[str]) -> None:
        """Rewrite the ACL payload of every point of a document, without touching vectors."""

    def search(
        self,
        vector: Sequence[float] | None,
        access: AccessFilter,
        limit: int,
        *,
        sparse: SparseVector | None = None,
    ) -> list[Hit]:
        """Dense search (``vector``), keyword search (``sparse``), or both fused by
        reciprocal rank (hybrid); the access filter applies inside every part."""
        ...

    def count(self, access: AccessFilter | None = None) -> int: ...

    def optimize(self) -> bool:
        """Build search structures now (blocking); ``False`` when there was nothing to do
        or the backend does it in the background (a Qdrant server)."""
        ...

    def close(self) -> None: ...


# --- Shared by the implementations -------------------------------------------------------

#: Payload fields that get a keyword index, created before any point is loaded: Qdrant
#: builds filter-aware HNSW links only for fields indexed when the graph is built.
KEYWORD_FIELDS = ("acl_allow", "acl_deny", "source", "document_id")
#: Payload fields that get a float (range) index.
FLOAT_FIELDS = ("updated_at",)

#: The query planner. Filtered HNSW loses results at ACL selectivities of a few percent
#: (recall@10 fell to 0.10 at 100k, see platform notes), while an exact scan over the
#: points the filter admits stays in single milliseconds up to tens of thousands. So:
#: count the filter's cardinality exactly, scan exactly below this many points, and use
#: HNSW with a generous ``ef`` above it. Re-measure both numbers in ``benchmarks/``.
EXACT_SEARCH_MAX_POINTS = 20_000
HNSW_EF = 256


def use_exact_search(cardinality: int) -> bool:
    """The planner's one decision: exact scan when the filter admits few enough points."""
    return cardinality <= EXACT_SEARCH_MAX_POINTS


def payload_to_dict(payload: ChunkPayload) -> dict[str, object]:
    """The JSON payload stored beside a vector (tuples become lists)."""
    out = asdict(payload)
    out["acl_allow"] = list(payload.acl_allow)
    out["acl_deny"] = list(payload.acl_deny)
    return out


def payload_from_dict(data: Mapping[str, object]) -> ChunkPayload:
    """Inverse of :func:`payload_to_dict`: lists become tuples, unknown keys are ignored."""

    def text(key: str) -> str:
        return str(data[key])

    def optional(key: str) -> str | None:
        value = data.get(key)
        return None if value is None else str(value)

    def integer(key: str) -> int:
        value = data[key]
        return value if isinstance(value, int) else int(str(value))

    def tokens(key: str) -> tuple[str, ...]:
        value = data.get(key)
        return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()

    def number(key: str) -> float | None:
        value = data.get(key)
        return float(value) if isinstance(value, int | float) else None

    return ChunkPayload(
        document_id=text("document_id"),
        source=text("source"),
        chunk_id=text("chunk_id"),
        ordinal=integer("ordinal"),
        title=text("title"),
        url=optional("url"),
        version=text("version"),
        span_start=integer("span_start"),
        span_end=integer("span_end"),
        text=text("text"),
        section=optional("section"),
        acl_allow=tokens("acl_allow"),
        acl_deny=tokens("acl_deny"),
        updated_at=number("updated_at"),
    )


def identity_to_dict(identity: EmbedderIdentity) -> dict[str, str | int]:
    return {
        "name": identity.name,
        "backend": identity.backend,
        "dim": identity.dim,
        "keyword": identity.keyword,
    }


def identity_from_dict(data: object) -> EmbedderIdentity | None:
    """The recorded identity, or ``None`` when ``data`` is not one (missing or mangled)."""
    if not isinstance(data, Mapping):
        return None
    name, backend, dim = data.get("name"), data.get("backend"), data.get("dim")
    keyword = data.get("keyword", "")  # indexes from before keyword search record none
    if not (isinstance(name, str) and isinstance(backend, str) and isinstance(dim, int)):
        return None
    return EmbedderIdentity(name=name, backend=backend, dim=dim, keyword=str(keyword))


def mismatch_message(where: str, recorded: EmbedderIdentity, wanted: EmbedderIdentity) -> str:
    return (
        f"{where} was built with embedder {recorded.key()!r}, but this configuration embeds "
        f"with {wanted.key()!r}; vectors from two embedders cannot share an index. Point the "
        "index setting at a new location (or delete the old index) and re-index."
    )


def open_index(*, path: Path | None, url: str | None, api_key: str | None = None) -> VectorIndex:
    """The index a deployment configured: a Qdrant server when ``url`` is set (``path`` is
    then ignored), else the embedded index at ``path``.

    Implementations are imported here, lazily, so that using one never loads the other's
    library.
    """
    if url is not None:
        from indexing.qdrant_server import QdrantServerIndex

        return QdrantServerIndex.from_url(url, api_key=api_key)
    if path is None:
        raise ValueError("open_index needs either a path (embedded Qdrant) or a url (server)")
    from indexing.qdrant_edge import EdgeVectorIndex

    return EdgeVectorIndex(path)
