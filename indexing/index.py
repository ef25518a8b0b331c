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

# The query planner. Figures from ``benchmarks/query.py`` (2 cores, 384-d, clustered
# vectors, ACLs correlated with topics, filter = 1-125 allow tokens + a deny clause):
# - An ACL filter costs ~0.3-0.7 us per admitted point to evaluate, several times the
#   distance itself, and an *exact* count costs as much as an exact scan (30 ms at 48k
#   admitted points). So the planner asks the engine's cardinality *estimate* (~0.1 ms),
#   never an exact count. Of that cost the ``must_not acl_deny`` clause is the larger part
#   (300k points, exact scan p50 at 5 % / 20 %: 12 / 46 ms with it, 5 / 22 ms without).
# - An exact scan over E admitted points takes ~0.75 us * E: 15 ms at 19k. Scanning int8
#   vectors instead of f32 saves nothing measurable (300k, 14k admitted: 11.9 vs 12.2 ms
#   p50): the filter, not the distance, is the cost. So exact scans read the f32 vectors.
# - Filtered HNSW with the defaults (m=16, ef=256, no ACL links) found 0.49-0.71 of the
#   true top 10 at 10-20 % selectivity (100k). Links per ACL token (``payload_m``) and a
#   large ``ef`` fix it at 100k, but at 300k m=16 with ef=2048 still gave 0.9735 at 20 %.
#   m=32 / ef_construct=200 at 300k: ef=1024 gives 0.965-0.976 at 20-30 % (some queries
#   find none of their top 10: the admitted subgraph is badly connected near them),
#   ef=2048 gives 0.993-1.0; at 50 % ef=1024 already gives 0.999.
# - ef=2048 over f32 vectors is too slow (p50 37 ms under load at 300k); over int8 vectors
#   with the best 2x candidates rescored on f32 it is a third cheaper (p50 25 ms, same
#   load) at the same recall (0.996). Rescoring only 1x the limit lost recall (0.965-0.971).
#   Still, ef=2048 costs p95 ~27 ms at 300k and ~50-60 ms at 500k (busy machine): above
#   the exact-scan threshold the p95 target of 20 ms is not met yet.

#: Exact scan when the filter is estimated to admit at most this many points (p95 of the
#: scan stays under ~15 ms); HNSW above. Also the size past which the pipeline builds HNSW.
EXACT_SEARCH_MAX_POINTS = 15_000
#: HNSW ``ef`` by the share of the index the filter admits: the sparser the admitted points,
#: the more candidates graph search must visit to find the true top k. (share below, ef)
#: The share is the engine's *estimate*, which undercounts wide filters (300k points: 0.26
#: for a true 30 %, 0.39 for a true 50 %). ef=1536 was not enough at 30 % (0.982).
HNSW_EF_BY_SELECTIVITY: tuple[tuple[float, int], ...] = ((0.33, 2048), (1.01, 1024))
#: Kept for callers that want one number: the ef of the densest filters.
HNSW_EF = HNSW_EF_BY_SELECTIVITY[-1][1]
#: HNSW search walks int8 copies of the vectors (``HNSW_QUANTIZATION_INT8``), then rescores
#: this many times the limit on the original f32 vectors: returned scores are exact.
HNSW_RESCORE_OVERSAMPLING = 2.0

#: The HNSW graph, fixed when the index (collection) is created. m=16 / ef_construct=100
#: (Qdrant's defaults) stopped short of 0.99 recall at 300k with ef up to 2048; m=32 reaches it.
HNSW_M = 32
HNSW_EF_CONSTRUCT = 200
#: Keep an int8 copy of every vector (scalar quantization, 0.99 quantile), in RAM: +25 %
#: vector memory. HNSW builds and searches over it (300k points, m=32, busy machine: graph
#: built in 232 s instead of 439 s); the f32 vectors stay the truth for exact scans and rescoring.
HNSW_QUANTIZATION_INT8 = True
HNSW_QUANTIZATION_QUANTILE = 0.99
#: Extra links among the points that share a value of ``HNSW_LINKED_FIELDS`` (Qdrant's
#: ``payload_m``), so the points one group may read form a connected graph of their own.
HNSW_PAYLOAD_M = 16
#: Fields whose values get those links: the ACL allow tokens only. Links for ``source``,
#: ``document_id``, ``acl_deny`` or dates would cost build time and help no ACL query.
HNSW_LINKED_FIELDS = ("acl_allow",)
#: A token gets its own links once this many points carry it. Qdrant takes the threshold
#: (``full_scan_threshold``) in kB of vectors: see :func:`hnsw_full_scan_threshold_kb`.
#: Its own per-segment planner then scans below this size, which our planner does anyway.
HNSW_LINKED_MIN_POINTS = 200


@dataclass(frozen=True)
class SearchPlan:
    """How the dense part of a search runs: an exact scan over the original vectors, or
    HNSW with this ``ef`` over the quantized ones, rescoring ``rescore_oversampling``
    times the limit on the originals."""

    exact: bool
    hnsw_ef: int | None = None
    rescore_oversampling: float | None = None


def plan_search(estimated_admitted: int, total_points: int, limit: int) -> SearchPlan:
    """The planner: from the engine's estimate of how many points the filter admits."""
    if estimated_admitted <= EXACT_SEARCH_MAX_POINTS:
        return SearchPlan(exact=True)
    share = estimated_admitted / max(1, total_points)
    ef = next((ef for below, ef in HNSW_EF_BY_SELECTIVITY if share < below), HNSW_EF)
    return SearchPlan(
        exact=False, hnsw_ef=max(ef, limit), rescore_oversampling=HNSW_RESCORE_OVERSAMPLING
    )


def hnsw_full_scan_threshold_kb(dim: int) -> int:
    """``HNSW_LINKED_MIN_POINTS`` as Qdrant's ``full_scan_threshold`` (kB of f32 vectors)."""
    return max(1, HNSW_LINKED_MIN_POINTS * dim * 4 // 1024)


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
