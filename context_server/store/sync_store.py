"""The store's side of one sync: ``indexing.pipeline.SyncStore`` on SQLAlchemy."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from connectors.base import Acl, SourceDocument
from context_server.store.models import Chunk, Document, SyncFailure, SyncRun
from indexing.pipeline import KnownDocument, KnownFailure, PreparedChunk


class SqlSyncStore:
    def __init__(self, session: Session, source_id: int, run: SyncRun) -> None:
        self.session = session
        self.source_id = source_id
        self.run = run

    def known_documents(self) -> dict[str, KnownDocument]:
        rows = self.session.execute(
            select(
                Document.external_id,
                Document.id,
                Document.content_hash,
                Document.acl,
                Document.version,
                Document.deleted_at,
            ).where(Document.source_id == self.source_id)
        )
        return {
            ext: KnownDocument(
                id=i,
                content_hash=h,
                acl=Acl.model_validate(acl),
                version=v,
                deleted=deleted is not None,
            )
            for ext, i, h, acl, v, deleted in rows
        }

    def save_document(
        self, doc_id: str, document: SourceDocument, version: int, chunks: Sequence[PreparedChunk]
    ) -> None:
        """In a savepoint: a row the database refuses leaves the session as it was."""
        with self.session.begin_nested():
            self._save_document(doc_id, document, version, chunks)

    def _save_document(
        self, doc_id: str, document: SourceDocument, version: int, chunks: Sequence[PreparedChunk]
    ) -> None:
        row = self.session.get(Document, doc_id)
        if row is None:
            row = Document(id=doc_id, source_id=self.source_id, external_id=document.external_id)
            self.session.add(row)
        else:
            self.session.execute(delete(Chunk).where(Chunk.document_id == doc_id))
            self.session.expire(row, ["chunks"])
        row.title = document.title
        row.url = document.url
        row.mime_type = document.mime_type
        row.size = document.size
        row.author = document.author
        row.content_hash = document.content_hash
        row.version = version
        row.source_version = document.version
        row.acl = document.acl.model_dump(mode="json")
        row.doc_metadata = dict(document.metadata)
        row.updated_at = document.updated_at
        row.indexed_at = datetime.now(UTC)
        row.deleted_at = None
        self.session.flush()
        self.session.add_all(
            Chunk(
                id=c.id,
                document_id=doc_id,
                ordinal=c.ordinal,
                text=c.text,
                span_start=c.span_start,
                span_end=c.span_end,
                section=c.section,
                page=c.page,
                tokens=c.tokens,
            )
            for c in chunks
        )
        self.session.flush()

    def save_acl(self, doc_id: str, acl: Acl) -> None:
        row = self.session.get(Document, doc_id)
        if row is not None:
            row.acl = acl.model_dump(mode="json")

    def mark_deleted(self, doc_id: str) -> None:
        row = self.session.get(Document, doc_id)
        if row is not None:
            row.deleted_at = datetime.now(UTC)
            self.session.execute(delete(Chunk).where(Chunk.document_id == doc_id))

    def known_failures(self) -> dict[str, KnownFailure]:
        """Failures that recorded the failed content's hash, from the source's last completed
        run and every run after it (an interrupted or failed run recorded some failures the
        completed one before it did not have: a bomb that killed a sync stays known); the
        latest failure of a document wins. A completed run re-records every known failure
        it met, so nothing older is needed."""
        runs = select(SyncRun.id).where(
            SyncRun.source_id == self.source_id, SyncRun.id != self.run.id
        )
        last_completed = self.session.scalar(
            runs.where(SyncRun.status == "completed").order_by(SyncRun.id.desc()).limit(1)
        )
        if last_completed is not None:
            runs = runs.where(SyncRun.id >= last_completed)
        rows = self.session.scalars(
            select(SyncFailure)
            .where(SyncFailure.run_id.in_(runs), SyncFailure.content_hash.is_not(None))
            .order_by(SyncFailure.run_id, SyncFailure.id)
        )
        return {f.external_id: KnownFailure(f.content_hash or "", f.reason, f.detail) for f in rows}

    def record_failure(
        self, external_id: str, reason: str, detail: str, content_hash: str | None
    ) -> None:
        self.session.add(
            SyncFailure(
                run_id=self.run.id,
                external_id=external_id,
                reason=reason,
                detail=detail,
                content_hash=content_hash,
            )
        )

    def commit(self) -> None:
        self.session.commit()
