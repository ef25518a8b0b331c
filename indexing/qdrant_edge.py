"""``EdgeVectorIndex``: the embedded default, Qdrant's engine in-process (``qdrant-edge-py``).

One directory holds one index::

    <path>/index.lock       flock held for the life of the open index (one owner at a time)
    <path>/identity.json    the EmbedderIdentity that made the vectors, written by ensure()
    <path>/shard/           the EdgeShard: segments, WAL, edge_config.json

Exactly one ``EdgeVectorIndex`` may have a directory open; a second one, in this process or
another, gets ``IndexLockedError``. The lock is our own ``flock`` taken in the constructor,
so it is held even before the shard exists; Qdrant's WAL lock (``WouldBlock``) is mapped
the same way as a second line of defence.

Qdrant Edge raises a bare ``Exception`` for everything that goes wrong in the engine;
``_engine_errors`` turns those into ``IndexingError`` subclasses with a message a user can
act on, so no raw lock or corruption error leaves this module.

Imports: stdlib, qdrant_edge, indexing.index, indexing.errors. POSIX only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import qdrant_edge as qe

from indexing.errors import (
    EmbedderMismatchError,
    IndexingError,
    IndexLockedError,
)
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

# Points per update operation: big enough to amortise the call, small enough that one
# batch's Python objects stay a few MB at 384 dimensions.
_UPSERT_BATCH = 1024

_LOCK_FILE = "index.lock"
_IDENTITY_FILE = "identity.json"
_SHARD_DIR = "shard"


class EdgeVectorIndex:
    """A permission-aware vector index in ``path``, owned by this object until ``close()``."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._shard_path = self._path / _SHARD_DIR
        self._identity_path = self._path / _IDENTITY_FILE
        try:
            self._path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IndexingError(f"cannot create the index directory {self._path}: {e}") from e
        self._lock_fd: int | None = self._acquire_lock()
        self._shard: qe.EdgeShard | None = None
        try:
            # Open an existing index now, so that read-only callers (count, search) work
            # without knowing the embedder, and a corrupt index is reported at open.
            if (self._shard_path / "edge_config.json").exists():
                self._shard = self._load_shard()
        except BaseException:
            self._release_lock()
            raise

    # --- VectorIndex ----------------------------------------------------------------------

    def ensure(self, identity: EmbedderIdentity) -> None:
        recorded = self._read_identity()
        if recorded is not None:
            if recorded != identity:
                raise EmbedderMismatchError(
                    mismatch_message(f"the index at {self._path}", recorded, identity)
                )
            if self._shard is None:
                raise IndexingError(
                    f"the index at {self._path} records an embedder but its data "
                    f"({self._shard_path}) is missing; delete {self._path} and re-index"
                )
            self._create_missing_field_indexes(self._shard)
            return

        if self._shard is not None:
            # A shard without identity.json: ensure() was interrupted after creating it.
            # An empty one is safe to recreate; one holding points came from elsewhere.
            with self._engine_errors():
                points = self._shard.info().points_count
            if points:
                raise IndexingError(
                    f"the index at {self._path} holds {points} points but records no "
                    f"embedder identity ({self._identity_path} is missing); delete "
                    f"{self._path} and re-index"
                )
            with self._engine_errors():
                self._shard.close()
            self._shard = None
            shutil.rmtree(self._shard_path)

        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=identity.dim, distance=qe.Distance.Cosine),
            sparse_vectors={KEYWORD_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            hnsw_config=qe.HnswIndexConfig(
                m=HNSW_M,
                ef_construct=HNSW_EF_CONSTRUCT,
                full_scan_threshold=hnsw_full_scan_threshold_kb(identity.dim),
                payload_m=HNSW_PAYLOAD_M,
            ),
            quantization_config=_quantization(),
        )
        with self._engine_errors():
            shard = qe.EdgeShard.create(str(self._shard_path), config)
        self._shard = shard
        # Before any point: HNSW links for filtered search are built only for fields that
        # were indexed when the graph is built.
        self._create_missing_field_indexes(shard)
        with self._engine_errors():
            shard.flush()
        # Written last, atomically: its presence means the index is fully set up.
        self._write_identity(identity)

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        shard = self._require_shard()
        for start in range(0, len(points), _UPSERT_BATCH):
            batch = [
                qe.Point(p.id, _vectors(p), payload_to_dict(p.payload))
                for p in points[start : start + _UPSERT_BATCH]
            ]
            with self._engine_errors():
                shard.update(qe.UpdateOperation.upsert_points(batch))

    def delete(self, point_ids: Sequence[str]) -> None:
        if not point_ids:
            return
        shard = self._require_shard()
        ids: list[qe.PointId] = list(point_ids)
        with self._engine_errors():
            shard.update(qe.UpdateOperation.delete_points(ids))

    def delete_document(self, document_id: str) -> None:
        shard = self._require_shard()
        with self._engine_errors():
            shard.update(qe.UpdateOperation.delete_points_by_filter(_document(document_id)))

    def set_acl(self, document_id: str, allow: Sequence[str], deny: Sequence[str]) -> None:
        shard = self._require_shard()
        # set_payload merges the given keys into each point's payload: vectors and the
        # other fields are left as they are.
        acl: dict[str, object] = {"acl_allow": list(allow), "acl_deny": list(deny)}
        with self._engine_errors():
            shard.update(qe.UpdateOperation.set_payload_by_filter(_document(document_id), acl))

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
        shard = self._require_shard()
        if limit <= 0 or access.sources == frozenset():
            return []
        acl = _access(access)
        # Estimates, not exact counts: an exact count of an ACL filter costs as much as
        # the exact scan it would decide on (see the planner in indexing/index.py).
        with self._engine_errors():
            admitted = shard.count(qe.CountRequest(exact=False, filter=acl))
            total = shard.count(qe.CountRequest(exact=False))
        plan = plan_search(admitted, total, limit)
        params = _search_params(plan)
        dense = None if vector is None else qe.Query.Nearest([float(x) for x in vector])
        keyword = (
            None if sparse is None else qe.Query.Nearest(_sparse(sparse), using=KEYWORD_VECTOR)
        )
        if dense is not None and keyword is not None:
            # Hybrid: each part pre-filtered, then fused by reciprocal rank.
            depth = max(limit, HYBRID_DEPTH)
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[
                    qe.Prefetch(query=dense, filter=acl, params=params, limit=depth),
                    qe.Prefetch(query=keyword, filter=acl, limit=depth),
                ],
                query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]  # stub omits Rrf
                filter=acl,
                with_payload=True,
            )
        else:
            request = qe.QueryRequest(
                limit=limit,
                query=dense if dense is not None else keyword,
                filter=acl,
                params=params if dense is not None else None,
                with_payload=True,
            )
        with self._engine_errors():
            scored = shard.query(request)
        return [
            Hit(id=str(p.id), score=p.score, payload=payload_from_dict(p.payload or {}))
            for p in scored
        ]

    def count(self, access: AccessFilter | None = None) -> int:
        shard = self._require_shard()
        if access is not None and access.sources == frozenset():
            return 0
        flt = None if access is None else _access(access)
        with self._engine_errors():
            return shard.count(qe.CountRequest(exact=True, filter=flt))

    def close(self) -> None:
        """Flush, close the shard and release the lock. Safe to call twice."""
        shard, self._shard = self._shard, None
        try:
            if shard is not None:
                with self._engine_errors():
                    try:
                        shard.flush()
                    finally:
                        shard.close()
        finally:
            self._release_lock()

    def optimize(self) -> bool:
        """Build HNSW graphs and merge segments; blocks until done (seconds per 10k points).

        Qdrant Edge runs no background optimizer: until this is called every search scans
        (which the planner would pick below ``EXACT_SEARCH_MAX_POINTS`` anyway). Call it
        after a large ingest, off the request path. Returns whether anything changed.
        """
        shard = self._require_shard()
        with self._engine_errors():
            return shard.optimize()

    # --- Beyond the protocol --------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> EdgeVectorIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- Internals ------------------------------------------------------------------------

    def _locked_message(self) -> str:
        return (
            f"the index at {self._path} is owned by another process "
            "(is `context-server serve` running?)"
        )

    def _acquire_lock(self) -> int:
        fd = os.open(self._path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock locks belong to the open file description, so a second open in this
            # same process conflicts too, not only another process.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IndexLockedError(self._locked_message()) from None
        except OSError as e:
            os.close(fd)
            raise IndexingError(f"cannot lock the index at {self._path}: {e}") from e
        return fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _load_shard(self) -> qe.EdgeShard:
        with self._engine_errors():
            return qe.EdgeShard.load(str(self._shard_path))

    def _require_shard(self) -> qe.EdgeShard:
        if self._shard is None:
            if self._lock_fd is None:
                raise IndexingError(f"the index at {self._path} is closed")
            raise IndexingError(
                f"the index at {self._path} has not been created yet: call ensure() first"
            )
        return self._shard

    def _create_missing_field_indexes(self, shard: qe.EdgeShard) -> None:
        with self._engine_errors():
            existing = shard.info().payload_schema
            # Filter-aware HNSW links only for the ACL tokens (HNSW_LINKED_FIELDS).
            wanted: list[tuple[str, qe.PayloadSchemaParams]] = [
                (n, qe.KeywordIndexParams(enable_hnsw=n in HNSW_LINKED_FIELDS))
                for n in KEYWORD_FIELDS
            ]
            wanted += [
                (n, qe.FloatIndexParams(enable_hnsw=n in HNSW_LINKED_FIELDS)) for n in FLOAT_FIELDS
            ]
            for name, schema in wanted:
                if name not in existing:
                    shard.update(qe.UpdateOperation.create_field_index(name, schema))

    def _read_identity(self) -> EmbedderIdentity | None:
        try:
            raw = self._identity_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise IndexingError(f"cannot read {self._identity_path}: {e}") from e
        try:
            identity = identity_from_dict(json.loads(raw))
        except json.JSONDecodeError:
            identity = None
        if identity is None:
            raise IndexingError(
                f"{self._identity_path} is not a valid embedder record; the index at "
                f"{self._path} may be damaged: delete it and re-index"
            )
        return identity

    def _write_identity(self, identity: EmbedderIdentity) -> None:
        tmp = self._identity_path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(identity_to_dict(identity), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._identity_path)

    @contextlib.contextmanager
    def _engine_errors(self) -> Iterator[None]:
        """Map Qdrant Edge's bare ``Exception`` to our errors, with a message to act on."""
        try:
            yield
        except IndexingError:
            raise
        except Exception as e:
            # The engine raises plain Exception (type is exactly Exception); its own
            # ValueError/TypeError for bad arguments are our callers' bugs: let them through.
            if type(e) is not Exception:
                raise
            message = str(e)
            if "WouldBlock" in message:
                raise IndexLockedError(self._locked_message()) from e
            if "Vector dimension error" in message:
                raise ValueError(message) from e
            raise IndexingError(
                f"the index at {self._path} failed ({message}); if it persists after a "
                f"restart the index may be damaged: delete {self._path} and re-index"
            ) from e


def _document(document_id: str) -> qe.Filter:
    return qe.Filter(must=[qe.FieldCondition("document_id", match=qe.MatchValue(document_id))])


def _access(access: AccessFilter) -> qe.Filter:
    """The ACL as a query filter: some allow token is held (by both principal sets when
    there are two), no deny token is held; then the source and freshness limits."""
    must: list[qe.ConditionType] = [
        qe.FieldCondition("acl_allow", match=qe.MatchAny(access.tokens()))
    ]
    also = access.also_tokens()
    if also is not None:
        must.append(qe.FieldCondition("acl_allow", match=qe.MatchAny(also)))
    if access.sources is not None:
        must.append(qe.FieldCondition("source", match=qe.MatchAny(sorted(access.sources))))
    if access.updated_after is not None:
        fresh = qe.FieldCondition("updated_at", range=qe.RangeFloat(gte=access.updated_after))
        must.append(qe.Filter(should=[fresh, qe.IsEmptyCondition("updated_at")]))
    must_not: list[qe.ConditionType] = [
        qe.FieldCondition("acl_deny", match=qe.MatchAny(access.deny_tokens()))
    ]
    return qe.Filter(must=must, must_not=must_not)


def _quantization() -> qe.ScalarQuantizationConfig | None:
    """The int8 copy HNSW builds and searches over (see ``HNSW_QUANTIZATION_INT8``)."""
    if not HNSW_QUANTIZATION_INT8:
        return None
    return qe.ScalarQuantizationConfig(
        type=qe.ScalarType.Int8, quantile=HNSW_QUANTIZATION_QUANTILE, always_ram=True
    )


def _search_params(plan: SearchPlan) -> qe.SearchParams:
    if plan.exact:
        # The original vectors: an exact scan must be exact (and int8 would not be cheaper).
        return qe.SearchParams(exact=True, quantization=qe.QuantizationSearchParams(ignore=True))
    return qe.SearchParams(
        hnsw_ef=plan.hnsw_ef,
        quantization=qe.QuantizationSearchParams(
            rescore=True, oversampling=plan.rescore_oversampling
        ),
    )


def _sparse(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(list(vector.indices), list(vector.values))


def _vectors(point: IndexPoint) -> qe.Vector:
    dense = [float(x) for x in point.vector]
    if point.sparse is None:
        return dense
    return {"": dense, KEYWORD_VECTOR: _sparse(point.sparse)}
