"""One bad document never fails a sync; a sync whose process died is marked at start-up;
what a connector notes about its sync reaches the report, the stored run and the status.

The connectors here are tiny fakes registered for the test (``registry._entry_points``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from connectors import registry
from connectors.base import (
    Acl,
    Change,
    Checkpoint,
    ConnectorConfig,
    Delete,
    DocRef,
    SourceDocument,
    Upsert,
)
from context_server.cli import app
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.specs import SourceSpec
from context_server.store.models import SyncRun
from indexing.embed import FakeHashEmbedder

ALL = Acl.of(["group:all"])


class FakeConfig(ConnectorConfig):
    scenario: str = "docs"


class FakeCheckpoint(Checkpoint):
    pass


def doc(ext_id: str, text: str | Callable[[], bytes], acl: Acl = ALL, **kw: Any) -> Upsert:
    read = text if callable(text) else (lambda: text.encode())
    digest = hashlib.sha256(repr(text if not callable(text) else ext_id).encode()).hexdigest()
    return Upsert(SourceDocument(ext_id, ext_id, acl, digest, read, filename=ext_id, **kw))


class FakeConnector:
    """Yields ``FakeConnector.changes[scenario]`` and notes ``FakeConnector.notes``."""

    config_model: ClassVar[type[ConnectorConfig]] = FakeConfig
    checkpoint_model: ClassVar[type[Checkpoint]] = FakeCheckpoint
    changes: ClassVar[dict[str, list[Change]]] = {}
    notes: ClassVar[dict[str, int]] = {}

    def __init__(self, config: FakeConfig) -> None:
        self.config = config

    def check(self) -> None:
        pass

    def sync(self, since: FakeCheckpoint | None) -> Generator[Change, None, FakeCheckpoint]:
        if self.config.scenario == "hang":
            time.sleep(3600)
        yield from FakeConnector.changes.get(self.config.scenario, [])
        return FakeCheckpoint()

    def list_ids(self) -> Iterator[DocRef]:
        return iter(())

    def sync_notes(self) -> dict[str, int]:
        return dict(FakeConnector.notes)


class _EntryPoint:
    def load(self) -> type[FakeConnector]:
        return FakeConnector


def register_fake() -> None:
    real = registry._entry_points()
    registry._entry_points = lambda: {**real, "fake": _EntryPoint()}  # type: ignore[assignment]


@pytest.fixture
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = registry._entry_points()
    monkeypatch.setattr(registry, "_entry_points", lambda: {**real, "fake": _EntryPoint()})
    FakeConnector.changes = {}
    FakeConnector.notes = {}
    yield


@pytest.fixture
def runtime(tmp_path: Path, fake_kind: None) -> Iterator[Runtime]:
    rt = Runtime(
        Settings(home=tmp_path / "home", parse_isolation=False), embedder=FakeHashEmbedder()
    )
    rt.add_source(SourceSpec(name="fake", kind="fake", config={}))
    yield rt
    rt.close()


def failures_of(rt: Runtime) -> dict[str, str]:
    return {f["external_id"]: f["reason"] for f in rt.failures("fake")}


def test_per_document_exceptions_are_failures_and_the_sync_goes_on(runtime: Runtime) -> None:
    FakeConnector.changes["docs"] = [
        doc("keep.md", "# Keep\n\nKept text."),
        doc("gone.md", "# Gone\n\nDeleted later."),
    ]
    (first,) = runtime.sync("fake")
    assert (first.report.upserted, first.report.failed) == (2, 0)

    def boom() -> bytes:
        raise RuntimeError("the disk fell off")

    FakeConnector.changes["docs"] = [
        doc("keep.md", "# Keep\n\nKept text.", acl=Acl.of(["group:other"])),  # ACL change
        Delete("gone.md"),
        doc("raises.md", boom),
        doc("surrogate-meta.md", "# Meta\n\nFine text.", metadata={"label": "bad \udcff"}),
        doc("surrogate-title.md", "# T\n\nFine text."),
        doc("after.md", "# After\n\nIndexed after the bad ones."),
    ]
    # a title with a lone surrogate (what a connector decoding with surrogateescape makes)
    bad = FakeConnector.changes["docs"][4]
    assert isinstance(bad, Upsert)
    object.__setattr__(bad.document, "title", "T \ud800")
    (second,) = runtime.sync("fake")
    assert second.status == "completed"
    r = second.report
    assert (r.acl_updated, r.deleted, r.upserted) == (1, 1, 1)
    reasons = failures_of(runtime)
    assert set(reasons) == {"raises.md", "surrogate-meta.md", "surrogate-title.md"}
    assert reasons["raises.md"] == "unreadable"
    assert all(reason != "empty" for reason in reasons.values())
    assert {h.title for h in runtime.search("after bad ones", "group:all", k=10)} == {"after.md"}
    # under its new ACL only; the deleted one is gone
    assert {h.title for h in runtime.search("kept text", "group:all", k=10)} == {"after.md"}
    assert [h.title for h in runtime.search("kept text", "group:other", k=10)] == ["keep.md"]


def test_lone_surrogates_in_extracted_text_do_not_fail_the_sync(runtime: Runtime) -> None:
    # b"\xed\xa0\x80" is a UTF-8-encoded lone surrogate: a decoder with surrogatepass or a
    # parser building text from code points can hand it on as "\ud800".
    FakeConnector.changes["docs"] = [
        doc(
            "weird.txt",
            lambda: "Text with a lone \ud800 surrogate.".encode("utf-8", "surrogatepass"),
        ),
        doc("fine.md", "# Fine\n\nFine text."),
    ]
    (run,) = runtime.sync("fake")
    assert run.status == "completed"
    assert run.report.upserted + run.report.failed == 2
    assert "fine.md" in {h.title for h in runtime.search("fine text", "group:all", k=10)}


def test_notes_reach_the_report_the_stored_run_and_the_status(
    runtime: Runtime, tmp_path: Path
) -> None:
    FakeConnector.changes["docs"] = [doc("a.md", "# A\n\nText.")]
    FakeConnector.notes = {"unmatched_acl_rule": 3}
    (run,) = runtime.sync("fake")
    assert run.report.notes == {"unmatched_acl_rule": 3}
    out = run.to_json()
    assert out["unmatched_acl_rule"] == 3 and out["notes"] == {"unmatched_acl_rule": 3}
    with runtime.sessions() as s:
        stored = s.scalars(select(SyncRun)).one()
        assert stored.counts["notes"] == {"unmatched_acl_rule": 3}
    last = runtime.source_info("fake").last_sync
    assert last is not None and last["notes"] == {"unmatched_acl_rule": 3}
    runtime.close()
    env = {"CONTEXT_SERVER_HOME": str(tmp_path / "home"), "CONTEXT_SERVER_PARSE_ISOLATION": "0"}
    listed = CliRunner().invoke(app, ["sources", "status", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["sources"][0]["last_sync"]["notes"] == {
        "unmatched_acl_rule": 3
    }
    table = CliRunner().invoke(app, ["sources", "status"], env={**env, "COLUMNS": "200"})
    assert "unmatched_acl_rule 3" in table.output, table.output


HANG = """
import sys
from tests.security.test_sync_robustness import register_fake
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.specs import SourceSpec
from indexing.embed import FakeHashEmbedder
register_fake()
rt = Runtime(Settings(home=sys.argv[1], parse_isolation=False), embedder=FakeHashEmbedder())
rt.add_source(SourceSpec(name="fake", kind="fake", config={"scenario": "hang"}))
rt.sync("fake")
"""


def test_a_sync_whose_process_was_killed_is_marked_interrupted_at_start_up(
    tmp_path: Path, fake_kind: None
) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HANG, str(home)], env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "the syncing process ended by itself"
            assert time.monotonic() < deadline, "the sync never started"
            if (home / "store.sqlite3").exists():
                rt = Runtime(
                    Settings(home=home, parse_isolation=False), embedder=FakeHashEmbedder()
                )
                try:
                    last = rt.source_info("fake").last_sync if rt.list_sources() else None
                finally:
                    rt.close()
                if last and last["status"] == "running":
                    break  # a live process owns it: opening the store did not touch it
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rt = Runtime(Settings(home=home, parse_isolation=False), embedder=FakeHashEmbedder())
    try:
        last = rt.source_info("fake").last_sync
        assert last is not None and last["status"] == "interrupted"
        assert str(proc.pid) in (last["error"] or "")
    finally:
        rt.close()
    status = CliRunner().invoke(
        app,
        ["sources", "status"],
        env={
            "CONTEXT_SERVER_HOME": str(home),
            "COLUMNS": "200",
            "CONTEXT_SERVER_PARSE_ISOLATION": "0",
        },
    )
    assert "interrupted" in status.output, status.output
