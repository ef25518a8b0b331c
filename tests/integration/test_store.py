"""The store on SQLite and on the real PostgreSQL: same code, same results."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from connectors.base import Acl, SourceDocument
from connectors.errors import ConfigError, UnknownKindError
from context_server.errors import NotFoundError, SpecError
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.specs import PrincipalsSpec, SourceSpec
from context_server.store.db import migrate
from context_server.store.models import Chunk, Document, Source, SyncRun
from context_server.store.sync_store import SqlSyncStore
from indexing.pipeline import PreparedChunk


@pytest.fixture
def runtime(database_url: str, tmp_path: Path) -> Runtime:
    rt = Runtime(Settings(home=tmp_path / "home", database_url=database_url))
    yield rt  # type: ignore[misc]
    rt.close()


def test_migrations_create_every_table_and_are_idempotent(runtime: Runtime) -> None:
    migrate(runtime.engine)
    tables = set(inspect(runtime.engine).get_table_names())
    assert {
        "sources",
        "documents",
        "chunks",
        "sync_runs",
        "sync_failures",
        "principals",
        "group_memberships",
        "alembic_version",
    } <= tables


def test_sources_are_validated_saved_and_replaced(runtime: Runtime, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    spec = SourceSpec(name="drive", kind="filesystem", config={"root": "share"})
    info = runtime.add_source(spec, base_dir=tmp_path)
    assert (info.name, info.kind, info.documents, info.last_sync) == (
        "drive",
        "filesystem",
        0,
        None,
    )
    with runtime.sessions() as s:
        row = s.scalar(select(Source))
        assert row is not None and row.config["root"] == str(share)  # resolved against the YAML
    with pytest.raises(ConfigError, match="acl_rules"):
        runtime.add_source(
            SourceSpec(name="drive", kind="filesystem", config={"root": "/", "acl_rules": 3})
        )
    with pytest.raises(UnknownKindError, match="filesystem"):
        runtime.add_source(SourceSpec(name="x", kind="nope", config={}))
    with pytest.raises(NotFoundError):
        runtime.source_info("missing")
    with pytest.raises(ValueError):
        SourceSpec(name="Bad Name", kind="filesystem")


def test_principals_load_replaces_memberships(runtime: Runtime) -> None:
    spec = PrincipalsSpec(
        groups={
            "everyone": ["group:staff", "user:grace"],
            "staff": ["group:finance", "user:carol"],
            "finance": ["user:alice"],
        }
    )
    assert runtime.load_principals(spec) == {"groups": 3, "memberships": 5}
    assert runtime.principals_for("user:alice") == {
        "user:alice",
        "group:finance",
        "group:staff",
        "group:everyone",
    }
    runtime.load_principals(PrincipalsSpec(groups={"finance": ["user:bob"]}))
    assert runtime.principals_for("user:alice") == {"user:alice"}
    assert runtime.principals_for("user:bob") == {"user:bob", "group:finance"}
    with pytest.raises(ValueError):
        PrincipalsSpec(groups={"finance": ["alice"]})


def _document(text: str, acl: Acl) -> SourceDocument:
    data = text.encode()
    return SourceDocument(
        external_id="dir/a.txt",
        title="a.txt",
        acl=acl,
        content_hash=str(hash(data)),
        read=lambda: data,
        filename="a.txt",
        url="file:///dir/a.txt",
        mime_type="text/plain",
        size=len(data),
        version="v1",
        updated_at=datetime(2026, 1, 2, tzinfo=UTC),
    )


def test_sync_store_round_trip(runtime: Runtime, tmp_path: Path) -> None:
    runtime.add_source(SourceSpec(name="drive", kind="filesystem", config={"root": str(tmp_path)}))
    with runtime.sessions() as session:
        source = session.scalar(select(Source))
        assert source is not None
        run = SyncRun(source_id=source.id, status="running", counts={})
        session.add(run)
        session.commit()
        store = SqlSyncStore(session, source.id, run)
        acl = Acl.of(["group:finance"], deny=["user:bob"])
        chunks = [
            PreparedChunk(
                f"00000000-0000-0000-0000-00000000000{i}", i, f"t{i}", i, i + 1, None, 1, 2
            )
            for i in range(3)
        ]
        store.save_document("doc-1", _document("hello", acl), 1, chunks)
        store.record_failure("dir/bad.pdf", "encrypted", "password required", "sha256:x")
        store.commit()
        known = store.known_documents()
        assert known["dir/a.txt"].acl == acl and known["dir/a.txt"].version == 1
        # a new version replaces the chunks
        store.save_document("doc-1", _document("hello again", acl), 2, chunks[:1])
        store.save_acl("doc-1", Acl.of(["group:everyone"]))
        store.commit()
        assert session.query(Chunk).count() == 1
        known = store.known_documents()["dir/a.txt"]
        assert known.version == 2 and known.acl == Acl.of(["group:everyone"])
        store.mark_deleted("doc-1")
        store.commit()
        assert store.known_documents()["dir/a.txt"].deleted
        assert session.query(Chunk).count() == 0
        doc = session.get(Document, "doc-1")
        assert doc is not None and doc.deleted_at is not None
    assert runtime.failures("drive") == [
        {"external_id": "dir/bad.pdf", "reason": "encrypted", "detail": "password required"}
    ]


def test_empty_query_is_refused(runtime: Runtime) -> None:
    with pytest.raises(SpecError):
        runtime.search("   ", "user:alice")
