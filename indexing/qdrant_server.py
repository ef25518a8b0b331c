"""``QdrantServerIndex``: the scale-out path, a collection on a Qdrant server via qdrant-client.

Same semantics as the embedded index (``qdrant_edge.py``): keyword payload indexes made at
``ensure()`` before any point, the ACL applied as a filter inside the query, and the same
exact-or-HNSW planner.

The embedder identity is recorded in the collection's own ``metadata``
(``{"embedder": {"name", "backend", "dim"}}``, set at creation), so it travels with the
collection and needs no reserved point that every count and search would have to exclude.
A server too old to keep collection metadata is refused at ``ensure()`` with that reason.

``QdrantClient(":memory:")`` (local mode) works too, and is how the tests run this module:
local mode has no payload indexes and always searches exactly, and it warns when given
either, so we skip both there.

Failures to reach the server become ``IndexUnavailableError``; other failures reported by
the server become ``IndexingError`` with the server's reason.

Imports: stdlib, qdrant_client, indexing.index, indexing.errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from types import TracebackType

from qdrant_client import QdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from indexing.errors import EmbedderMismatchError, IndexingError, IndexUnavailableError
from indexing.index import (
    FLOAT_FIELDS,
    HNSW_EF_CONSTRUCT,
    HNSW_LINKED_FIELDS,
    HNSW_M,
    HNSW_PAYLOAD_M,
    HNSW_QUANTIZATION_INT8,
    HNSW_QUANTIZATION_QUANTILE,
    HYBRID_DEPTH,
    KEYWORD_FIELDS,
    KEYWORD_VECTOR,
    RRF_K,
    AccessFilter,
    EmbedderIdentity,
    Hit,
    IndexPoint,
    SearchPlan,
    SparseVector,
    hnsw_full_scan_threshold_kb,
    identity_from_dict,
    identity_to_dict,
    mismatch_message,
    payload_from_dict,
    payload_to_dict,
    plan_search,
)

# Points per upsert request: keeps a request body to a few MB at 384 dimensions.
_UPSERT_BATCH = 512

_METADATA_KEY = "embedder"


class QdrantServerIndex:
    """A permission-aware vector index in one collection of a Qdrant server."""

    def __init__(
        self, client: QdrantClient, collection: str = "chunks", *, owns_client: bool = False
    ) -> None:
        """Use ``client``; ``close()`` closes it only when ``owns_client`` (see ``from_url``)."""
        self._client = client
        self._collection = collection
        self._owns_client = owns_client
        options = client.init_options
        # Local mode ignores payload indexes and search params, and warns about both.
        self._local = options.get("location") == ":memory:" or options.get("path") is not None
        url = options.get("url") or options.get("location") or options.get("host")
        self._where = (
            f"the in-process Qdrant ({options.get('location') or options.get('path')})"
            if self._local
            else f"the Qdrant server at {url or 'localhost'}"
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        collection: str = "chunks",
        timeout: int = 10,
    ) -> QdrantServerIndex:
        """Connect to the server at ``url`` (nothing is sent until the first call).

        ``:memory:`` is qdrant-client's in-process stand-in for a server (tests, trials)."""
        if url == ":memory:":
            client = QdrantClient(location=url)
        else:
            client = QdrantClient(url=url, api_key=api_key, timeout=timeout)
        return cls(client, collection, owns_client=True)

    # --- VectorIndex ----------------------------------------------------------------------

    def ensure(self, identity: EmbedderIdentity) -> None:
        with self._errors():
            exists = self._client.collection_exists(self._collection)
        if not exists:
            try:
                with self._errors():
                    self._client.create_collection(
                        self._collection,
                        vectors_config=m.VectorParams(
                            size=identity.dim, distance=m.Distance.COSINE
                        ),
                        sparse_vectors_config={
                            KEYWORD_VECTOR: m.SparseVectorParams(modifier=m.Modifier.IDF)
                        },
                        # The embedded index's graph, so both make the same trade-offs.
                        hnsw_config=m.HnswConfigDiff(
                            m=HNSW_M,
                            ef_construct=HNSW_EF_CONSTRUCT,
                            full_scan_threshold=hnsw_full_scan_threshold_kb(identity.dim),
                            payload_m=HNSW_PAYLOAD_M,
                        ),
                        quantization_config=_quantization(),
                        metadata={_METADATA_KEY: identity_to_dict(identity)},
                    )
            except _Conflict:
                pass  # another worker created it first: verify what it recorded, below
        self._check_identity(identity)
        # On a new collection this runs before any point is loaded, as HNSW needs.
        self._create_missing_field_indexes()

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        for start in range(0, len(points), _UPSERT_BATCH):
            batch = [
                m.PointStruct(id=p.id, vector=_vectors(p), payload=payload_to_dict(p.payload))
                for p in points[start : start + _UPSERT_BATCH]
            ]
            with self._errors():
                self._client.upsert(self._collection, points=batch, wait=True)

    def delete(self, point_ids: Sequence[str]) -> None:
        if not point_ids:
            return
        ids: list[m.ExtendedPointId] = list(point_ids)
        with self._errors():
            self._client.delete(
                self._collection, points_selector=m.PointIdsList(points=ids), wait=True
            )

    def delete_document(self, document_id: str) -> None:
        with self._errors():
            self._client.delete(
                self._collection,
                points_selector=m.FilterSelector(filter=_document(document_id)),
                wait=True,
            )

    def set_acl(self, document_id: str, allow: Sequence[str], deny: Sequence[str]) -> None:
        # set_payload merges these keys into each point's payload; vectors are untouched.
        with self._errors():
            self._client.set_payload(
                self._collection,
                payload={"acl_allow": list(allow), "acl_deny": list(deny)},
                points=_document(document_id),
                wait=True,
            )

    def search(
        self,
        vector: Sequence[float] | None,
        access: AccessFilter,
        limit: int,
        *,
        sparse: SparseVector | None = None,
    ) -> list[Hit]:
        if vector is None and sparse is None:
            raise ValueError("search needs a dense vector, a sparse one, or both")
        if limit <= 0 or access.sources == frozenset():
            return []
        acl = _access(access)
        params: m.SearchParams | None = None
        if not self._local:
            # Estimates, as in the embedded index: an exact count of an ACL filter costs
            # as much as the exact scan it would decide on.
            with self._errors():
                admitted = self._client.count(self._collection, count_filter=acl, exact=False).count
                total = self._client.count(self._collection, exact=False).count
            plan = plan_search(admitted, total, limit)
            params = _search_params(plan)
        dense = None if vector is None else [float(x) for x in vector]
        keyword = None if sparse is None else _sparse(sparse)
        with self._errors():
            if dense is not None and keyword is not None:
                # Hybrid: each part pre-filtered, then fused by reciprocal rank.
                depth = max(limit, HYBRID_DEPTH)
                response = self._client.query_points(
                    self._collection,
                    prefetch=[
                        m.Prefetch(query=dense, filter=acl, params=params, limit=depth),
                        m.Prefetch(query=keyword, using=KEYWORD_VECTOR, filter=acl, limit=depth),
                    ],
                    query=m.RrfQuery(rrf=m.Rrf(k=RRF_K)),
                    query_filter=acl,
                    limit=limit,
                    with_payload=True,
                )
            else:
                response = self._client.query_points(
                    self._collection,
                    query=dense if dense is not None else keyword,
                    using=None if dense is not None else KEYWORD_VECTOR,
                    query_filter=acl,
                    search_params=params if dense is not None else None,
                    limit=limit,
                    with_payload=True,
                )
        return [
            Hit(id=str(p.id), score=p.score, payload=payload_from_dict(p.payload or {}))
            for p in response.points
        ]

    def count(self, access: AccessFilter | None = None) -> int:
        if access is not None and access.sources == frozenset():
            return 0
        flt = None if access is None else _access(access)
        with self._errors():
            return self._client.count(self._collection, count_filter=flt, exact=True).count

    def optimize(self) -> bool:
        """A Qdrant server optimizes in the background: nothing to do here."""
        return False

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # --- Beyond the protocol --------------------------------------------------------------

    def __enter__(self) -> QdrantServerIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- Internals ------------------------------------------------------------------------

    def _check_identity(self, identity: EmbedderIdentity) -> None:
        where = f"the collection {self._collection!r} on {self._where}"
        with self._errors():
            info = self._client.get_collection(self._collection)
        metadata = info.config.metadata or {}
        recorded = identity_from_dict(metadata.get(_METADATA_KEY))
        if recorded is not None:
            if recorded != identity:
                raise EmbedderMismatchError(mismatch_message(where, recorded, identity))
            return
        # A collection we did not create. Adopt it only if it is empty and shaped for us.
        vectors = info.config.params.vectors
        keyword = (info.config.params.sparse_vectors or {}).get(KEYWORD_VECTOR)
        with self._errors():
            points = self._client.count(self._collection, exact=True).count
        shaped = (
            isinstance(vectors, m.VectorParams)
            and vectors.size == identity.dim
            and keyword is not None
            and keyword.modifier == m.Modifier.IDF
        )
        if points or not shaped:
            raise IndexingError(
                f"{where} was not created by context-server (it records no embedder, holds "
                f"{points} points and is {'' if shaped else 'not '}shaped for dense + keyword "
                "vectors); configure another collection name or delete it"
            )
        with self._errors():
            self._client.update_collection(
                self._collection, metadata={_METADATA_KEY: identity_to_dict(identity)}
            )
            stored = self._client.get_collection(self._collection).config.metadata or {}
        if identity_from_dict(stored.get(_METADATA_KEY)) != identity:
            raise IndexingError(
                f"{self._where} does not keep collection metadata, where the embedder "
                "identity is recorded; upgrade the Qdrant server"
            )

    def _create_missing_field_indexes(self) -> None:
        if self._local:
            return
        with self._errors():
            existing = self._client.get_collection(self._collection).payload_schema
            # Filter-aware HNSW links only for the ACL tokens (HNSW_LINKED_FIELDS).
            wanted: list[tuple[str, m.PayloadSchemaParams]] = [
                (
                    n,
                    m.KeywordIndexParams(
                        type=m.KeywordIndexType.KEYWORD, enable_hnsw=n in HNSW_LINKED_FIELDS
                    ),
                )
                for n in KEYWORD_FIELDS
            ]
            wanted += [
                (
                    n,
                    m.FloatIndexParams(
                        type=m.FloatIndexType.FLOAT, enable_hnsw=n in HNSW_LINKED_FIELDS
                    ),
                )
                for n in FLOAT_FIELDS
            ]
            for name, schema in wanted:
                if name not in existing:
                    self._client.create_payload_index(
                        self._collection, field_name=name, field_schema=schema, wait=True
                    )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Map qdrant-client's transport and HTTP errors to ours."""
        try:
            yield
        except ResponseHandlingException as e:
            raise IndexUnavailableError(
                f"{self._where} cannot be reached ({e.source}); is it running, and is the "
                "URL right?"
            ) from e
        except UnexpectedResponse as e:
            status = e.status_code
            if status in (401, 403):
                raise IndexUnavailableError(
                    f"{self._where} refused the request ({status}): check the API key"
                ) from e
            if status == 409:
                raise _Conflict(str(e)) from e
            if status is not None and status >= 500:
                raise IndexUnavailableError(
                    f"{self._where} failed ({status} {e.reason_phrase}); try again later"
                ) from e
            if status == 404:
                raise IndexingError(
                    f"the collection {self._collection!r} does not exist on {self._where}; "
                    "call ensure() first"
                ) from e
            raise IndexingError(f"{self._where} rejected the request: {e}") from e
        except ConnectionError as e:
            raise IndexUnavailableError(f"{self._where} cannot be reached ({e})") from e


class _Conflict(IndexingError):
    """The server answered 409: someone did the same thing first (e.g. created the collection)."""


def _document(document_id: str) -> m.Filter:
    return m.Filter(
        must=[m.FieldCondition(key="document_id", match=m.MatchValue(value=document_id))]
    )


def _access(access: AccessFilter) -> m.Filter:
    """The ACL as a query filter: some allow token is held (by both principal sets when
    there are two), no deny token is held; then the source and freshness limits."""
    must: list[m.Condition] = [
        m.FieldCondition(key="acl_allow", match=m.MatchAny(any=access.tokens()))
    ]
    also = access.also_tokens()
    if also is not None:
        must.append(m.FieldCondition(key="acl_allow", match=m.MatchAny(any=also)))
    if access.sources is not None:
        must.append(m.FieldCondition(key="source", match=m.MatchAny(any=sorted(access.sources))))
    if access.updated_after is not None:
        fresh = m.FieldCondition(key="updated_at", range=m.Range(gte=access.updated_after))
        empty = m.IsEmptyCondition(is_empty=m.PayloadField(key="updated_at"))
        must.append(m.Filter(should=[fresh, empty]))
    must_not: list[m.Condition] = [
        m.FieldCondition(key="acl_deny", match=m.MatchAny(any=access.deny_tokens()))
    ]
    return m.Filter(must=must, must_not=must_not)


def _quantization() -> m.ScalarQuantization | None:
    """The int8 copy HNSW builds and searches over (see ``HNSW_QUANTIZATION_INT8``)."""
    if not HNSW_QUANTIZATION_INT8:
        return None
    return m.ScalarQuantization(
        scalar=m.ScalarQuantizationConfig(
            type=m.ScalarType.INT8, quantile=HNSW_QUANTIZATION_QUANTILE, always_ram=True
        )
    )


def _search_params(plan: SearchPlan) -> m.SearchParams:
    if plan.exact:
        # The original vectors: an exact scan must be exact (and int8 would not be cheaper).
        return m.SearchParams(exact=True, quantization=m.QuantizationSearchParams(ignore=True))
    return m.SearchParams(
        hnsw_ef=plan.hnsw_ef,
        quantization=m.QuantizationSearchParams(
            rescore=True, oversampling=plan.rescore_oversampling
        ),
    )


def _sparse(vector: SparseVector) -> m.SparseVector:
    return m.SparseVector(indices=list(vector.indices), values=list(vector.values))


def _vectors(point: IndexPoint) -> m.VectorStruct:
    dense = [float(x) for x in point.vector]
    if point.sparse is None:
        return dense
    return {"": dense, KEYWORD_VECTOR: _sparse(point.sparse)}
