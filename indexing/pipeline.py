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

One bad document never fails a sync: anything raised while reading, parsing, chunking or
storing one document (a ``read()`` that raises, a lone surrogate in a title, a store that
refuses a row) becomes a recorded ``Failure`` for that document, and deletions and ACL
updates still apply. What the connector's generator itself raises cannot be resumed and
fails the sync (the connector's job is to yield ``Failure`` instead). A document whose bytes
failed before (same content hash) is reported again without being parsed again
(``known_failures``), so a bomb costs one parse, not one per sync.

Memory: parsing runs in the parser (a bounded child process in production,
indexing/isolate.py); what waits here for the embedder is bounded by
``prefetch_documents`` and ``prefetch_chars`` (text of the documents parsed but not yet
written), so the sync's own memory is about its baseline + ``prefetch_chars`` x ~12 bytes
(text, chunk copies with overlap, embedding texts, keyword vectors) + one embedding batch.

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
from indexing.isolate import InProcessParser, Parser, ParserConfig
from indexing.keyword import KeywordEncoder
from indexing.parse import ParseFailure

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
    ) -> None:
        """All of it or nothing: a document the store refuses raises, leaving the store as it
        was before the call (the pipeline records the failure and goes on)."""
        ...

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
    known_failures: int = 0  # failed before with the same bytes: reported, not parsed again
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    # What the connector noted about its sync (connectors.base.SyncNotes), set by the caller.
    notes: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        """The stored and printed counts; each note also at the top level (its own count)."""
        return {
            "documents_seen": self.documents_seen,
            "upserted": self.upserted,
            "unchanged": self.unchanged,
            "acl_updated": self.acl_updated,
            "deleted": self.deleted,
            "failed": self.failed,
            "known_failures": self.known_failures,
            "chunks_embedded": self.chunks_embedded,
            "seconds": round(self.seconds, 3),
            **{k: v for k, v in self.notes.items() if k not in _COUNT_KEYS},
            "notes": dict(self.notes),
        }


_COUNT_KEYS = frozenset(
    {"documents_seen", "upserted", "unchanged", "acl_updated", "deleted", "failed"}
    | {"known_failures", "chunks_embedded", "seconds", "notes", "failures"}
)


@dataclass(frozen=True)
class PipelineOptions:
    max_document_bytes: int = 50 * 1024 * 1024
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 30
    batch_chunks: int = 512  # chunks embedded together; amortises per-call overhead
    min_batch_chunks: int = 128  # embedded early when the reader is behind
    prefetch_documents: int = 32  # parsed documents waiting for the embedder, at most
    prefetch_chars: int = 20_000_000  # their text, at most (one larger document still passes)


@dataclass(frozen=True)
class _Prepared:
    document: SourceDocument
    doc_id: str
    version: int
    replaces: bool
    texts: list[str]
    chunks: list[PreparedChunk]
    keywords: list[SparseVector]
    chars: int = 0  # its text, held against the prefetch budget until written


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
        parser: Parser | None = None,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.keywords = KeywordEncoder()
        self.options = options or PipelineOptions()
        # In-process by default (tests, benchmarks); the runtime lends an isolated one.
        self.parser = parser or InProcessParser(
            ParserConfig(max_bytes=self.options.max_document_bytes, isolate=False)
        )
        self._budget = _Budget(self.options.prefetch_chars)  # renewed by each sync

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
        self._budget = _Budget(self.options.prefetch_chars)
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
                try:
                    item = items.get(timeout=0.2)
                except queue.Empty:
                    # The reader is slow or waits for prefetch budget the batch holds.
                    self._write_batch(source, batch, store, report)
                    batch = []
                    continue
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
                    # An id or detail that cannot be stored as such is stored legibly.
                    external_id, detail = _legible(f.external_id), _legible(f.detail)
                    store.record_failure(external_id, f.reason, detail, item.content_hash)
                    report.failed += 1
                    report.failures.append((external_id, f.reason, detail))
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
                    if isinstance(item, _Prepared):
                        self._budget.acquire(item.chars, stop)
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
        invalid = _unstorable(document)
        if invalid is not None:
            failure = _Failed(Failure(document.external_id, "invalid_document", invalid))
            if stored and not stored.deleted and stored.acl != document.acl:
                return [_AclOnly(stored.id, document.acl), failure]
            return [failure]
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
            report.known_failures += 1
        else:
            try:
                prepared = self._parse_and_chunk(document, doc_id, stored)
            except Exception as exc:  # one document's problem, never the sync's
                prepared = Failure(
                    document.external_id, "processing_error", _describe(exc, "preparing it")
                )
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
        if len(data) > limit:
            return Failure(document.external_id, "too_large", f"{len(data)} bytes > limit {limit}")
        parsed = self.parser.parse(data, filename=document.filename, mime_type=document.mime_type)
        del data
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
            chars=len(parsed.full_text),
        )

    # -- writer (calling thread) ---------------------------------------------------------

    def _write_batch(
        self, source: str, batch: list[_Prepared], store: SyncStore, report: SyncReport
    ) -> None:
        if not batch:
            return
        try:
            self._write_documents(source, batch, store, report)
        finally:
            self._budget.release(sum(p.chars for p in batch))

    def _write_documents(
        self, source: str, batch: list[_Prepared], store: SyncStore, report: SyncReport
    ) -> None:
        vectors = self.embedder.embed([t for p in batch for t in p.texts])
        row = 0
        now = time.time()
        for prepared in batch:
            first_row = row
            row += len(prepared.chunks)
            doc = prepared.document
            # The store first (all or nothing, not yet committed): a document it refuses is
            # a failure of that document, and the index is not touched for it.
            try:
                store.save_document(prepared.doc_id, doc, prepared.version, prepared.chunks)
            except Exception as exc:
                detail = _describe(exc, "storing it")
                external_id, detail = _legible(doc.external_id), _legible(detail)
                store.record_failure(external_id, "invalid_document", detail, None)
                report.failed += 1
                report.failures.append((external_id, "invalid_document", detail))
                continue
            updated_at = doc.updated_at.timestamp() if doc.updated_at else now
            points = []
            for offset, (chunk, keywords) in enumerate(
                zip(prepared.chunks, prepared.keywords, strict=True)
            ):
                points.append(
                    IndexPoint(
                        id=chunk.id,
                        vector=vectors[first_row + offset].tolist(),
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
            if prepared.replaces:
                self.index.delete_document(prepared.doc_id)
            self.index.upsert(points)
            report.upserted += 1
            report.chunks_embedded += len(prepared.chunks)
        store.commit()

    def _delete(self, doc_id: str, store: SyncStore, report: SyncReport) -> None:
        self.index.delete_document(doc_id)
        store.mark_deleted(doc_id)
        report.deleted += 1


class _Budget:
    """Characters of parsed text in flight between the reader and the writer. The reader
    waits while taking more would pass ``limit`` (unless nothing is in flight: one document
    larger than the limit still passes, alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, stop: threading.Event) -> None:
        with self._cond:
            while self.used and self.used + n > self.limit and not stop.is_set():
                self._cond.wait(0.1)
            self.used += n

    def release(self, n: int) -> None:
        with self._cond:
            self.used = max(0, self.used - n)
            self._cond.notify_all()


def _describe(exc: BaseException, doing: str) -> str:
    return f"{type(exc).__name__} while {doing}: {exc}"[:2000]


def _legible(value: str) -> str:
    """``value`` without NULs and lone surrogates (as ``\\udcff``): storable everywhere."""
    value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _bad_text(value: str) -> str | None:
    if "\x00" in value:
        return "a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a character UTF-8 cannot encode ({exc.reason}) at position {exc.start}"
    return None


def _unstorable(document: SourceDocument) -> str | None:
    """Why the store or the index could not hold this document's fields, or ``None``. A
    connector handing on undecodable names (surrogateescape) must not fail the sync."""
    fields: list[tuple[str, str | None]] = [
        ("title", document.title),
        ("filename", document.filename),
        ("url", document.url),
        ("mime_type", document.mime_type),
        ("author", document.author),
        ("version", document.version),
        ("content_hash", document.content_hash),
    ]
    for key, value in document.metadata.items():
        fields += [("a metadata key", str(key)), (f"metadata {key!r}", str(value))]
    for name, text in fields:
        if text is not None and (problem := _bad_text(text)) is not None:
            return f"its {name} has {problem}"
    return None
