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


def as_utc(value: datetime) -> datetime:
    """Every time we store is UTC, but SQLite hands datetimes back naive: make them aware."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JsonType,
        list[str]: JsonType,
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
    # "every 15m" or a cron expression (context_server/schedules.py); None: on demand only.
    schedule: Mapped[str | None] = mapped_column(String(100))
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
    status: Mapped[str] = mapped_column(String(20))  # running|completed|failed|interrupted
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    # "host:pid:start-time" of the process running it, renewed heartbeat_at while it runs:
    # a running run whose process is gone is marked interrupted (runtime start-up).
    owner: Mapped[str | None] = mapped_column(String(300))
    heartbeat_at: Mapped[datetime | None]
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
    """``member`` (a user or a group) belongs to ``group``; groups nest. ``origin`` says who
    asserted it: ``principals`` (the principals file) or ``source:<name>`` (synced from a
    source); each origin's rows are replaced as a whole."""

    __tablename__ = "group_memberships"

    group: Mapped[str] = mapped_column(
        ForeignKey("principals.name", ondelete="CASCADE"), primary_key=True
    )
    member: Mapped[str] = mapped_column(
        ForeignKey("principals.name", ondelete="CASCADE"), primary_key=True
    )
    origin: Mapped[str] = mapped_column(String(110), primary_key=True, default="principals")


class ApiKey(Base):
    """A bearer key. Only the SHA-256 of its secret is stored; the key is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public part of the key
    secret_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(10))  # agent | user
    subject: Mapped[str] = mapped_column(String(255))  # the agent's name, or user:<name>
    label: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AgentVersion(Base):
    """Every agent profile version ever served from, by content hash: bundles point here."""

    __tablename__ = "agent_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    spec: Mapped[dict[str, Any]]
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class Bundle(Base):
    """The context served for one request, exactly as served: the provenance record."""

    __tablename__ = "bundles"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    agent: Mapped[str] = mapped_column(String(100), index=True)
    agent_version: Mapped[str] = mapped_column(ForeignKey("agent_versions.version"))
    on_behalf_of: Mapped[str | None] = mapped_column(String(255))
    acting_as: Mapped[str] = mapped_column(String(20))
    # The resolved principal sets the search ran with ("user" and, in intersection or
    # as_agent mode, "agent").
    principals: Mapped[dict[str, Any]]
    sources: Mapped[list[str]]  # the sources the search could reach
    query: Mapped[str] = mapped_column(Text)
    budget_tokens: Mapped[int]
    used_tokens: Mapped[int]
    key_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    items: Mapped[list[BundleItem]] = relationship(
        back_populates="bundle", cascade="all, delete-orphan", order_by="BundleItem.rank"
    )


class BundleItem(Base):
    __tablename__ = "bundle_items"

    bundle_id: Mapped[str] = mapped_column(
        ForeignKey("bundles.id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(primary_key=True)
    # No foreign keys to documents/chunks: the record outlives what it cites.
    document_id: Mapped[str] = mapped_column(String(36))
    chunk_id: Mapped[str] = mapped_column(String(36))
    source: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(String(1024))
    section: Mapped[str | None] = mapped_column(String(1024))
    url: Mapped[str | None] = mapped_column(String(2048))
    version: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(128))
    document_updated_at: Mapped[datetime | None]
    acl: Mapped[dict[str, Any]]  # the document's ACL when it was served
    score: Mapped[float]
    tokens: Mapped[int]
    text: Mapped[str] = mapped_column(Text)

    bundle: Mapped[Bundle] = relationship(back_populates="items")


class AuditEvent(Base):
    """One request for context or a document, allowed or refused. Append-only: the
    migration installs triggers that refuse UPDATE and DELETE."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str] = mapped_column(String(30))  # context | document | bundle | bundle_check
    outcome: Mapped[str] = mapped_column(String(20))  # allowed | denied | error
    key_id: Mapped[str | None] = mapped_column(String(32))
    caller: Mapped[str] = mapped_column(String(255))  # admin, agent:<name>, user:<name>
    agent: Mapped[str | None] = mapped_column(String(100))
    on_behalf_of: Mapped[str | None] = mapped_column(String(255))
    query: Mapped[str | None] = mapped_column(Text)
    document_ids: Mapped[list[str]]  # what was returned
    bundle_id: Mapped[str | None] = mapped_column(String(36))
    detail: Mapped[str] = mapped_column(Text, default="")


class AgentRun(Base):
    """One run of a declared agent: a job in the queue, then its record.

    ``state``: ``queued`` (waiting; ``available_at`` delays a retry) → ``running`` (a worker
    holds the lease until ``lease_expires_at`` and renews it while alive) → ``succeeded``
    (its output is a review item), ``failed`` (no attempts left, or not worth retrying) or
    ``cancelled``. A running job whose lease expired is taken over by another worker.
    ``(agent, trigger_key)`` is unique: one run per trigger occurrence.
    """

    __tablename__ = "agent_runs"
    __table_args__ = (
        UniqueConstraint("agent", "trigger_key"),
        Index("ix_agent_runs_state_available", "state", "available_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    agent: Mapped[str] = mapped_column(String(100), index=True)
    agent_version: Mapped[str | None] = mapped_column(String(64))  # of the last attempt
    trigger_kind: Mapped[str] = mapped_column(String(20))  # manual | schedule | event | changes
    trigger_key: Mapped[str] = mapped_column(String(255))
    trigger: Mapped[dict[str, Any]]  # what fired it: the document, the slot, the review
    on_behalf_of: Mapped[str | None] = mapped_column(String(255))
    input: Mapped[dict[str, Any]]
    requested_by: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(20), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    query: Mapped[str | None] = mapped_column(Text)
    bundle_id: Mapped[str | None] = mapped_column(String(36))
    harness_input: Mapped[dict[str, Any] | None]
    harness_output: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    # one entry per attempt: worker, started, finished, outcome, error
    history: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    # the current (or last) attempt's worker and command harness processes, so a worker on
    # the same machine can tell the worker died and kill the harness (context_server/worker.py)
    attempt_process: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class AgentCursor(Base):
    """The last schedule slot an agent was enqueued for (a new agent starts at now)."""

    __tablename__ = "agent_cursors"

    agent: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_slot: Mapped[datetime]


class Review(Base):
    """A run's output waiting for (or past) a human decision.

    ``pending`` → ``approved`` (enough approvals of the current revision) → ``shipping`` →
    ``shipped`` | ``ship_failed``; or ``rejected``, ``changes_requested`` (a new run was
    enqueued with the comment), ``expired``. ``ship_key`` makes shipping idempotent."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("agent_runs.id"), unique=True)
    agent: Mapped[str] = mapped_column(String(100), index=True)
    agent_version: Mapped[str] = mapped_column(String(64))
    on_behalf_of: Mapped[str | None] = mapped_column(String(255))
    bundle_id: Mapped[str | None] = mapped_column(String(36))
    state: Mapped[str] = mapped_column(String(24), default="pending")
    title: Mapped[str] = mapped_column(String(1024), default="")
    output: Mapped[dict[str, Any]]  # the agent's output spec when the run was made
    approvers: Mapped[list[str]]
    required: Mapped[int]
    ship: Mapped[dict[str, Any] | None]  # the ship spec the approval is for
    target: Mapped[dict[str, Any] | None]  # the document a comment goes to
    revision: Mapped[int] = mapped_column(Integer, default=1)
    expires_at: Mapped[datetime | None]
    deferred_until: Mapped[datetime | None]
    ship_key: Mapped[str] = mapped_column(String(80))
    ship_attempts: Mapped[int] = mapped_column(Integer, default=0)
    ship_started_at: Mapped[datetime | None]
    shipped_at: Mapped[datetime | None]
    ship_result: Mapped[dict[str, Any] | None]
    ship_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]

    revisions: Mapped[list[ReviewRevision]] = relationship(
        cascade="all, delete-orphan", order_by="ReviewRevision.number"
    )
    events: Mapped[list[ReviewEvent]] = relationship(
        cascade="all, delete-orphan", order_by="ReviewEvent.id"
    )


class ReviewRevision(Base):
    """The artifact as the agent wrote it (1), and each reviewer edit after, with its diff."""

    __tablename__ = "review_revisions"

    review_id: Mapped[str] = mapped_column(
        ForeignKey("reviews.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(255))  # agent:<name> or user:<name>
    diff: Mapped[str] = mapped_column(Text, default="")  # unified diff from the previous one
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewEvent(Base):
    """One decision or note on a review: approve, reject, request_changes, comment, defer,
    edit, expire, ship, ship_failed."""

    __tablename__ = "review_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    review_id: Mapped[str] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(30))
    revision: Mapped[int]
    comment: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)


class WebSession(Base):
    """A browser's login to the web pages, held on the server: the cookie carries only a
    random id, and ``id`` is its SHA-256 (a copy of the store opens no session). Logging
    out, revoking ``key_id`` or passing ``expires_at`` ends it for every copy of the cookie.
    """

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[dict[str, Any]]  # the pages' session: who, the CSRF token, flash messages
    key_id: Mapped[str | None] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]
