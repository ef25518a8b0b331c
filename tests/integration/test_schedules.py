"""Source schedules and groups synced from sources, on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import create_engine, insert, select, text

from connectors import registry
from context_server.runtime import Runtime
from context_server.schedules import check_schedule, next_run
from context_server.settings import Settings
from context_server.specs import PrincipalsSpec, SourceSpec
from context_server.store.db import alembic_config, make_engine, migrate
from context_server.store.models import GroupMembership
from indexing.embed import FakeHashEmbedder

T0 = datetime(2026, 11, 24, 8, 7, tzinfo=UTC)


def test_schedules_are_validated_with_a_clear_message() -> None:
    assert check_schedule("every 15m") == "every 15m"
    assert check_schedule(" */15 * * * * ") == "*/15 * * * *"
    for bad in ("every", "every fortnight", "*/15 * * *", "hourly", "61 * * * *"):
        with pytest.raises(ValueError, match="bad"):
            check_schedule(bad)
    with pytest.raises(ValueError, match="bad schedule"):
        SourceSpec(name="x", kind="jsonl", schedule="sometimes")


def test_next_run_for_every_and_cron() -> None:
    created = T0 - timedelta(days=1)
    assert next_run("every 15m", None, created) == created
    assert next_run("every 15m", T0, created) == T0 + timedelta(minutes=15)
    assert next_run("*/15 * * * *", T0, created) == datetime(2026, 11, 24, 8, 15, tzinfo=UTC)
    assert next_run("0 3 * * *", None, created) == datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    share = tmp_path / "share"
    share.mkdir()
    (share / "a.md").write_text("# A\n\nalpha")
    rt = Runtime(
        Settings(home=tmp_path / "home", database_url=database_url), embedder=FakeHashEmbedder()
    )
    rules = [{"glob": "**", "allow": ["group:everyone"]}]
    config = {"root": str(share), "acl_rules": rules}
    rt.add_source(SourceSpec(name="hourly", kind="filesystem", config=config, schedule="every 1h"))
    rt.add_source(SourceSpec(name="manual", kind="filesystem", config=config))
    yield rt
    rt.close()


def test_due_sources_sync_once_then_wait_for_their_next_run(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    due, _ = runtime.due(now)
    assert [d.source for d in due] == ["hourly"]  # never synced: due at once; manual never
    assert runtime.scheduler().run_due() == [("hourly", None)]
    due, upcoming = runtime.due(datetime.now(UTC))
    assert due == [] and upcoming is not None
    assert timedelta(minutes=59) < upcoming - now < timedelta(minutes=61)
    assert [d.source for d in runtime.due(now + timedelta(hours=2))[0]] == ["hourly"]
    status = {s.name: s.to_json() for s in runtime.list_sources()}
    assert status["hourly"]["schedule"] == "every 1h"
    assert status["hourly"]["next_run"] == upcoming.isoformat()
    assert status["hourly"]["last_sync"]["status"] == "completed"
    assert status["manual"]["next_run"] is None and status["manual"]["last_sync"] is None


def test_a_failing_scheduled_sync_is_reported_and_the_loop_goes_on(
    runtime: Runtime, tmp_path: Path
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    config = {"root": str(gone), "acl_rules": []}
    runtime.add_source(
        SourceSpec(name="broken", kind="filesystem", config=config, schedule="every 5m")
    )
    gone.rmdir()
    results = dict(runtime.scheduler().run_due())
    assert results["hourly"] is None
    assert results["broken"] is not None and "gone" in results["broken"]
    assert runtime.source_info("broken").last_sync["status"] == "failed"  # type: ignore[index]


class GroupsFromConfig:
    """A jsonl connector that also reports memberships (a fake, for the runtime's part)."""

    pairs: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def memberships(self) -> Iterator[tuple[str, str]]:
        yield from self.pairs


def test_groups_synced_from_a_source_sit_beside_the_principals_file(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = tmp_path / "docs.jsonl"
    lines.write_text('{"_id": "1", "title": "t", "text": "hello"}\n')
    runtime.add_source(
        SourceSpec(
            name="tickets",
            kind="jsonl",
            config={"path": str(lines), "acl": {"allow": ["group:jira-support"]}},
        )
    )
    build = registry.build
    monkeypatch.setattr(
        registry,
        "build",
        lambda kind, config: (
            GroupsFromConfig(build(kind, config)) if kind == "jsonl" else build(kind, config)
        ),
    )
    runtime.load_principals(PrincipalsSpec(groups={"everyone": ["user:ann", "user:bob"]}))
    GroupsFromConfig.pairs = [("user:ann", "group:jira-support"), ("user:ann", "group:everyone")]
    (run,) = runtime.sync("tickets")
    assert run.status == "completed"
    assert "group:jira-support" in runtime.principals_for("user:ann")
    # the principals file is reloaded: the source's memberships stay
    runtime.load_principals(PrincipalsSpec(groups={"everyone": ["user:bob"]}))
    assert runtime.principals_for("user:ann") >= {"group:jira-support", "group:everyone"}
    # the source drops ann: the next sync takes it away
    GroupsFromConfig.pairs = [("user:bob", "group:jira-support")]
    runtime.sync("tickets")
    assert "group:jira-support" not in runtime.principals_for("user:ann")
    assert "group:jira-support" in runtime.principals_for("user:bob")
    GroupsFromConfig.pairs = [("not a principal", "group:x")]
    with pytest.raises(ValueError, match="bad principal"):
        runtime.sync("tickets")
    assert runtime.source_info("tickets").last_sync["error"].startswith("group sync")  # type: ignore[index]
    assert "group:jira-support" in runtime.principals_for("user:bob")  # unchanged


def test_upgrading_keeps_existing_memberships(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = create_engine(url)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
        conn.execute(text("INSERT INTO principals (name) VALUES ('user:a'), ('group:g')"))
        conn.execute(
            text("INSERT INTO group_memberships (\"group\", member) VALUES ('group:g', 'user:a')")
        )
    engine.dispose()
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        rows = conn.execute(
            select(GroupMembership.member, GroupMembership.group, GroupMembership.origin)
        ).all()
        assert rows == [("user:a", "group:g", "principals")]
        conn.execute(
            insert(GroupMembership).values(member="user:a", group="group:g", origin="source:x")
        )
    engine.dispose()
