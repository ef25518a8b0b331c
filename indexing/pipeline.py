"""The ingest pipeline: a connector's changes → parsed → chunked → embedded → indexed.

One sync runs two stages concurrently so that embedding, the bottleneck on a CPU, never
waits: a reader thread pulls changes from the connector, reads, parses and chunks changed
documents; the calling thread embeds them in batches and writes index and store.

Write order keeps the index and the store consistent across crashes without a two-phase
commit: point ids are deterministic (document id + content hash + ordinal), a changed
document's old points are removed by document id before its new ones are written, and
the store is committed after the index. Re-running a sync that died half-way redoes the
unfinished documents and finds the finished ones unchanged. The checkpoint is committed
last, with the run's report.

Imports: stdlib, connectors.base, indexing.*.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from connectors.base import Acl, Change, Checkpoint, Delete, Failure, SourceDocument
from indexing.chunk import chunk as chunk_document
from indexing.embed import Embedder
from indexing.index import (
    EXACT_SEARCH_MAX_POINTS,
    ChunkPayload,
    IndexPoint,
    SparseVector,
    VectorIndex,
)
from indexing.keyword import KeywordEncoder
from indexing.parse import ParseFailure, parse

NAMESPACE = uuid.UUID("6f1c3a52-96b4-4a8e-9d51-3f0f6a1b2c7d")


def document_id(source: str, external_id: str) -> str:
    """Stable across syncs and processes: the store and the index agree on it."""
    return str(uuid.uuid5(NAMESPACE, f"{source}\x00{external_id}"))


def point_id(doc_id: str, content_hash: str, ordinal: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{doc_id}\x00{content_hash}\x00{ordinal}"))


# The model reads 256 word pieces; a chunk has up to 200, so its heading gets what is left.
HEADING_CHARS = 160


def embedding_text(title: str, section: str | None, text: str) -> str:
    """What is embedded for a chunk: the title and section situate a chunk that never
    names its subject."""
    heading = " / ".join(p for p in (title, section) if p)
    if len(heading) > HEADING_CHARS:
        heading = heading[: HEADING_CHARS - 1] + "…"
    return f"{heading}\n{text}" if heading else text


@dataclass(frozen=True)
class KnownDocument:
    """What the store remembers of a document (``deleted``: a tombstone)."""

    id: str
    content_hash: str
    acl: Acl
    version: int
    deleted: bool = False


@dataclass(frozen=True)
class KnownFailure:
    """A document the previous sync could not ingest, and the content it failed on."""

    content_hash: str
    reason: str
    detail: str


@dataclass(frozen=True)
class PreparedChunk:
    id: str
    ordinal: int
    text: str
    span_start: int
    span_end: int
    section: str | None
    page: int | None
    tokens: int


class SyncStore(Protocol):
    """The store's side of one sync of one source (implemented by the composition root)."""

    def known_documents(self) -> dict[str, KnownDocument]: ...

    def save_document(
        self, doc_id: str, document: SourceDocument, version: int, chunks: Sequence[PreparedChunk]
    ) -> None: ...

    def save_acl(self, doc_id: str, acl: Acl) -> None: ...

    def mark_deleted(self, doc_id: str) -> None: ...

    def known_failures(self) -> dict[str, KnownFailure]: ...

    def record_failure(
        self, external_id: str, reason: str, detail: str, content_hash: str | None
    ) -> None: ...

    def commit(self) -> None: ...


@dataclass
class SyncReport:
    documents_seen: int = 0
    upserted: int = 0
    unchanged: int = 0
    acl_updated: int = 0
    deleted: int = 0
    failed: int = 0
    chunks_embedded: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {
            "documents_seen": self.documents_seen,
            "upserted": self.upserted,
            "unchanged": self.unchanged,
            "acl_updated": self.acl_updated,
            "deleted": self.deleted,
            "failed": self.failed,
            "chunks_embedded": self.chunks_embedded,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class PipelineOptions:
    max_document_bytes: int = 50 * 1024 * 1024
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 30
    batch_chunks: int = 512  # chunks embedded together; amortises per-call overhead
    min_batch_chunks: int = 128  # embedded early when the reader is behind
    prefetch_documents: int = 32  # parsed documents waiting for the embedder, at most


@dataclass(frozen=True)
class _Prepared:
    document: SourceDocument
    doc_id: str
    version: int
    replaces: bool
    texts: list[str]
    chunks: list[PreparedChunk]
    keywords: list[SparseVector]


@dataclass(frozen=True)
class _AclOnly:
    doc_id: str
    acl: Acl


@dataclass(frozen=True)
class _Deleted:
    doc_id: str


@dataclass(frozen=True)
class _Failed:
    failure: Failure
    content_hash: str | None = None


@dataclass(frozen=True)
class _Done:
    checkpoint: Checkpoint


@dataclass(frozen=True)
class _Crashed:
    error: BaseException


_Item = _Prepared | _AclOnly | _Deleted | _Failed | _Done | _Crashed

ProgressFn = Callable[[SyncReport], None]


class Pipeline:
    def __init__(
        self,
        index: VectorIndex,
        embedder: Embedder,
        options: PipelineOptions | None = None,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.keywords = KeywordEncoder()
        self.options = options or PipelineOptions()

    def sync(
        self,
        source: str,
        changes: Generator[Change, None, Checkpoint],
        store: SyncStore,
        *,
        full: bool,
        progress: ProgressFn | None = None,
    ) -> tuple[SyncReport, Checkpoint]:
        """Consume one connector sync. ``full``: the connector lists every document (a sync
        from no checkpoint), so a stored document it did not list was deleted at the source.
        Raises what the connector raises; per-document problems are counted, never raised.
        """
        started = time.perf_counter()
        self.index.ensure(self.embedder.identity)
        known = store.known_documents()
        failed_before = store.known_failures()
        report = SyncReport()
        seen: set[str] = set()
        items: queue.Queue[_Item] = queue.Queue(maxsize=self.options.prefetch_documents)
        stop = threading.Event()
        reader = threading.Thread(
            target=self._read,
            args=(source, changes, known, failed_before, seen, items, stop, report),
            name=f"sync-reader-{source}",
            daemon=True,
        )
        reader.start()
        batch: list[_Prepared] = []
        checkpoint: Checkpoint | None = None
        try:
            while True:
                item = items.get()
                if isinstance(item, _Prepared):
                    batch.append(item)
                    pending = sum(len(p.chunks) for p in batch)
                    # Embed a full batch; or, when the reader has nothing more ready, a
                    # smaller one rather than let the embedder (the bottleneck) sit idle.
                    if pending >= self.options.batch_chunks or (
                        pending >= self.options.min_batch_chunks and items.empty()
                    ):
                        self._write_batch(source, batch, store, report)
                        batch = []
                elif isinstance(item, _AclOnly):
                    self.index.set_acl(item.doc_id, item.acl.allow_tokens(), item.acl.deny)
                    store.save_acl(item.doc_id, item.acl)
                    report.acl_updated += 1
                elif isinstance(item, _Deleted):
                    self._delete(item.doc_id, store, report)
                elif isinstance(item, _Failed):
                    f = item.failure
                    store.record_failure(f.external_id, f.reason, f.detail, item.content_hash)
                    report.failed += 1
                    report.failures.append((f.external_id, f.reason, f.detail))
                elif isinstance(item, _Crashed):
                    raise item.error
                elif isinstance(item, _Done):
                    checkpoint = item.checkpoint
                    break
                if progress:
                    progress(report)
            self._write_batch(source, batch, store, report)
            if full:
                unlisted = tuple(s for s in seen if s.endswith("/"))  # containers that failed
                for external_id in sorted(known.keys() - seen):
                    if not known[external_id].deleted and not external_id.startswith(unlisted):
                        self._delete(known[external_id].id, store, report)
            store.commit()
            if report.chunks_embedded and self.index.count() > EXACT_SEARCH_MAX_POINTS:
                # Past the exact-search threshold, searches need the HNSW graph, which an
                # embedded index builds only when asked.
                self.index.optimize()
        finally:
            stop.set()
            # Unblock a reader waiting on a full queue so it sees the stop flag.
            while reader.is_alive():
                try:
                    items.get_nowait()
                except queue.Empty:
                    reader.join(timeout=0.05)
            changes.close()  # the connector's files and connections, also when we failed
        report.seconds = time.perf_counter() - started
        if progress:
            progress(report)
        return report, checkpoint

    # -- reader thread -------------------------------------------------------------------

    def _read(
        self,
        source: str,
        changes: Generator[Change, None, Checkpoint],
        known: dict[str, KnownDocument],
        failed_before: dict[str, KnownFailure],
        seen: set[str],
        items: queue.Queue[_Item],
        stop: threading.Event,
        report: SyncReport,
    ) -> None:
        def put(item: _Item) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            while not stop.is_set():
                try:
                    change = next(changes)
                except StopIteration as end:
                    put(_Done(end.value))
                    return
                for item in self._prepare(source, change, known, failed_before, seen, report):
                    if not put(item):
                        return
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            put(_Crashed(exc))

    def _prepare(
        self,
        source: str,
        change: Change,
        known: dict[str, KnownDocument],
        failed_before: dict[str, KnownFailure],
        seen: set[str],
        report: SyncReport,
    ) -> list[_Item]:
        if isinstance(change, Delete):
            stored = known.get(change.external_id)
            seen.add(change.external_id)
            return [_Deleted(stored.id)] if stored and not stored.deleted else []
        if isinstance(change, Failure):
            seen.add(change.external_id)  # a failed read is not a deletion
            report.documents_seen += 1
            return [_Failed(change)]
        document = change.document
        seen.add(document.external_id)
        report.documents_seen += 1
        stored = known.get(document.external_id)
        if stored and not stored.deleted and stored.content_hash == document.content_hash:
            if stored.acl != document.acl:
                return [_AclOnly(stored.id, document.acl)]
            report.unchanged += 1
            return []
        doc_id = stored.id if stored else document_id(source, document.external_id)
        before = failed_before.get(document.external_id)
        if before and before.content_hash == document.content_hash:
            # The same bytes failed last time: report it again without parsing again.
            prepared: _Prepared | Failure = Failure(
                document.external_id, before.reason, before.detail
            )
        else:
            prepared = self._parse_and_chunk(document, doc_id, stored)
        if isinstance(prepared, _Prepared):
            return [prepared]
        failed = _Failed(prepared, document.content_hash)
        if stored and not stored.deleted and stored.acl != document.acl:
            # Keep the last good content searchable, but never under a stale ACL.
            return [_AclOnly(doc_id, document.acl), failed]
        return [failed]

    def _parse_and_chunk(
        self, document: SourceDocument, doc_id: str, stored: KnownDocument | None
    ) -> _Prepared | Failure:
        limit = self.options.max_document_bytes
        if document.size is not None and document.size > limit:
            return Failure(
                document.external_id, "too_large", f"{document.size} bytes > limit {limit}"
            )
        try:
            data = document.read()
        except Exception as exc:
            return Failure(document.external_id, "unreadable", f"{type(exc).__name__}: {exc}")
        parsed = parse(
            data, filename=document.filename, mime_type=document.mime_type, max_bytes=limit
        )
        if isinstance(parsed, ParseFailure):
            return Failure(document.external_id, parsed.reason, parsed.detail)
        pieces = chunk_document(
            parsed,
            max_tokens=self.options.chunk_tokens,
            overlap_tokens=self.options.chunk_overlap_tokens,
            count_tokens=self.embedder.count_tokens,
        )
        if not pieces:
            return Failure(document.external_id, "empty", "no text to index")
        chunks = [
            PreparedChunk(
                id=point_id(doc_id, document.content_hash, piece.ordinal),
                ordinal=piece.ordinal,
                text=piece.text,
                span_start=piece.span_start,
                span_end=piece.span_end,
                section=" / ".join(piece.section) or None,
                page=piece.page,
                tokens=piece.tokens,
            )
            for piece in pieces
        ]
        version = stored.version + 1 if stored else 1
        texts = [embedding_text(document.title, c.section, c.text) for c in chunks]
        return _Prepared(
            document=document,
            doc_id=doc_id,
            version=version,
            replaces=stored is not None,
            texts=texts,
            chunks=chunks,
            # Keyword vectors are cheap (Rust): made here, off the embedder's thread.
            keywords=[self.keywords.document(t) for t in texts],
        )

    # -- writer (calling thread) ---------------------------------------------------------

    def _write_batch(
        self, source: str, batch: list[_Prepared], store: SyncStore, report: SyncReport
    ) -> None:
        if not batch:
            return
        vectors = self.embedder.embed([t for p in batch for t in p.texts])
        row = 0
        now = time.time()
        for prepared in batch:
            doc = prepared.document
            updated_at = doc.updated_at.timestamp() if doc.updated_at else now
            points = []
            for chunk, keywords in zip(prepared.chunks, prepared.keywords, strict=True):
                points.append(
                    IndexPoint(
                        id=chunk.id,
                        vector=vectors[row].tolist(),
                        sparse=keywords,
                        payload=ChunkPayload(
                            document_id=prepared.doc_id,
                            source=source,
                            chunk_id=chunk.id,
                            ordinal=chunk.ordinal,
                            title=doc.title,
                            url=doc.url,
                            version=str(prepared.version),
                            span_start=chunk.span_start,
                            span_end=chunk.span_end,
                            text=chunk.text,
                            section=chunk.section,
                            acl_allow=tuple(doc.acl.allow_tokens()),
                            acl_deny=doc.acl.deny,
                            updated_at=updated_at,
                        ),
                    )
                )
                row += 1
            if prepared.replaces:
                self.index.delete_document(prepared.doc_id)
            self.index.upsert(points)
            store.save_document(prepared.doc_id, doc, prepared.version, prepared.chunks)
            report.upserted += 1
            report.chunks_embedded += len(prepared.chunks)
        store.commit()

    def _delete(self, doc_id: str, store: SyncStore, report: SyncReport) -> None:
        self.index.delete_document(doc_id)
        store.mark_deleted(doc_id)
        report.deleted += 1
