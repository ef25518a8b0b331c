"""Typed SQLAlchemy 2 models of the store. The same code runs on SQLite and PostgreSQL.

Schema changes go through Alembic (``context_server/migrations``); never ``create_all``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JsonType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JsonType,
    }


class Source(Base):
    """A configured connector instance."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(50))
    config: Mapped[dict[str, Any]]
    # The checkpoint of the last completed sync, as the connector's checkpoint model dumps it.
    checkpoint: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Document(Base):
    """The latest known state of one source document. ``deleted_at`` marks a tombstone."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("source_id", "external_id"),)

    # Deterministic (uuid5 of source name + external id): the index and the store agree on it
    # even when a crash separates their writes.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(1024))
    title: Mapped[str] = mapped_column(String(1024))
    url: Mapped[str | None] = mapped_column(String(2048))
    mime_type: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int | None] = mapped_column(BigInteger)
    author: Mapped[str | None] = mapped_column(String(255))
    content_hash: Mapped[str] = mapped_column(String(128))
    # Our version: 1 on first ingest, +1 whenever the content changes.
    version: Mapped[int] = mapped_column(Integer, default=1)
    source_version: Mapped[str | None] = mapped_column(String(255))
    acl: Mapped[dict[str, Any]]
    doc_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    updated_at: Mapped[datetime | None]
    indexed_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]

    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document", cascade="all, delete-orphan", order_by="Chunk.ordinal"
    )


class Chunk(Base):
    """A piece of a document's text; ``id`` is also its vector point id."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("document_id", "ordinal"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    span_start: Mapped[int]
    span_end: Mapped[int]
    section: Mapped[str | None] = mapped_column(String(1024))
    page: Mapped[int | None]
    tokens: Mapped[int]

    document: Mapped[Document] = relationship(back_populates="chunks")


class SyncRun(Base):
    __tablename__ = "sync_runs"
    __table_args__ = (Index("ix_sync_runs_source_started", "source_id", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20))  # running | completed | failed
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    counts: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    checkpoint: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)

    failures: Mapped[list[SyncFailure]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="SyncFailure.id"
    )


class SyncFailure(Base):
    """One document a sync could not ingest, and why."""

    __tablename__ = "sync_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sync_runs.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(1024))
    reason: Mapped[str] = mapped_column(String(50))
    detail: Mapped[str] = mapped_column(Text, default="")
    # The failed content: the next sync does not parse it again while it is unchanged.
    content_hash: Mapped[str | None] = mapped_column(String(128))

    run: Mapped[SyncRun] = relationship(back_populates="failures")


class Principal(Base):
    __tablename__ = "principals"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # user:alice, group:finance


class GroupMembership(Base):
    """``member`` (a user or a group) belongs to ``group``; groups nest."""

    __tablename__ = "group_memberships"

    group: Mapped[str] = mapped_column(
        ForeignKey("principals.name", ondelete="CASCADE"), primary_key=True
    )
    member: Mapped[str] = mapped_column(
        ForeignKey("principals.name", ondelete="CASCADE"), primary_key=True
    )
