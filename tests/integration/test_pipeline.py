"""The ingest pipeline end to end on the real embedded Qdrant engine and a real store.

The embedder is the fast fake (FakeHashEmbedder): these tests are about change handling,
ACLs and crash safety, not semantics. The real model is exercised in test_demo.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.specs import PrincipalsSpec, SourceSpec
from context_server.store.models import Chunk, Document
from indexing.embed import FakeHashEmbedder, Vectors
from indexing.index import AccessFilter
from indexing.pipeline import PipelineOptions

RULES = [
    {"glob": "finance/**", "allow": ["group:finance"], "deny": ["user:bob"]},
    {"glob": "**", "allow": ["group:everyone"]},
]


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    path.write_text(text)
    if existed:  # step past the file system's mtime granularity
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    write(root, "handbook/welcome.md", "# Welcome\n\nThe office opens at nine. Lunch is at noon.")
    write(root, "handbook/travel.txt", "Book trains for trips under four hours.")
    write(root, "finance/budget.md", "# Budget\n\nThe 2027 marketing budget is 42,000 EUR.")
    return root


@pytest.fixture(
    params=["embedded", pytest.param("scale-out", marks=pytest.mark.postgres)],
)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The same scenarios on the embedded default (SQLite + Qdrant's engine in-process) and,
    by settings only, on PostgreSQL + the Qdrant client (its in-process server stand-in)."""
    if request.param == "embedded":
        return Settings(home=tmp_path / "home")
    url = request.getfixturevalue("postgres_url")
    return Settings(home=tmp_path / "home", database_url=url, qdrant_url=":memory:")


@pytest.fixture
def runtime(settings: Settings, share: Path) -> Iterator[Runtime]:
    rt = Runtime(settings, embedder=FakeHashEmbedder())
    rt.load_principals(
        PrincipalsSpec(
            groups={
                "everyone": ["group:finance", "user:carol"],
                "finance": ["user:alice", "user:bob"],
            }
        )
    )
    rt.add_source(
        SourceSpec(name="drive", kind="filesystem", config={"root": str(share), "acl_rules": RULES})
    )
    yield rt
    rt.close()


def titles(rt: Runtime, query: str, who: str) -> list[str]:
    return sorted({r.title for r in rt.search(query, who, k=50)})


def index_points(rt: Runtime) -> int:
    return rt.index.count()


def store_chunks(rt: Runtime) -> int:
    with rt.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Chunk)) or 0)


def test_first_sync_then_unchanged_resync(runtime: Runtime) -> None:
    (first,) = runtime.sync("drive")
    r = first.report
    assert (r.documents_seen, r.upserted, r.unchanged, r.failed, r.deleted) == (3, 3, 0, 0, 0)
    assert r.chunks_embedded == store_chunks(runtime) == index_points(runtime) > 0
    (again,) = runtime.sync("drive")
    a = again.report
    assert (a.documents_seen, a.upserted, a.unchanged, a.chunks_embedded) == (3, 0, 3, 0)
    info = runtime.source_info("drive")
    assert info.documents == 3 and info.last_sync and info.last_sync["status"] == "completed"


def test_permissions_are_enforced_in_the_query(runtime: Runtime) -> None:
    runtime.sync("drive")
    assert "budget.md" in titles(runtime, "marketing budget", "user:alice")
    assert "budget.md" not in titles(runtime, "marketing budget", "user:carol")
    assert "budget.md" not in titles(runtime, "marketing budget", "user:bob")  # denied
    assert titles(runtime, "marketing budget", "user:stranger") == []  # in no group
    assert "welcome.md" in titles(runtime, "office", "user:carol")


def test_changed_document_replaces_its_chunks(runtime: Runtime, share: Path) -> None:
    runtime.sync("drive")
    before = index_points(runtime)
    write(share, "handbook/travel.txt", "Trains for trips under five hours. " * 3)
    (run,) = runtime.sync("drive")
    assert (run.report.upserted, run.report.unchanged) == (1, 2)
    assert index_points(runtime) == store_chunks(runtime) == before
    texts = [r.text for r in runtime.search("trains", "user:carol", k=50)]
    assert any("five hours" in t for t in texts)
    assert not any("four hours" in t for t in texts)
    with runtime.sessions() as s:
        doc = s.scalar(select(Document).where(Document.external_id == "handbook/travel.txt"))
        assert doc is not None and doc.version == 2


def test_deleted_document_leaves_index_and_store(runtime: Runtime, share: Path) -> None:
    runtime.sync("drive")
    (share / "finance" / "budget.md").unlink()
    (run,) = runtime.sync("drive")
    assert run.report.deleted == 1
    assert "budget.md" not in titles(runtime, "marketing budget", "user:alice")
    assert index_points(runtime) == store_chunks(runtime)
    assert runtime.source_info("drive").documents == 2


def test_acl_only_change_updates_payload_without_reembedding(runtime: Runtime, share: Path) -> None:
    runtime.sync("drive")
    assert "welcome.md" in titles(runtime, "office", "user:carol")
    rules = [{"glob": "handbook/welcome.md", "allow": ["user:alice"]}, *RULES]
    runtime.add_source(
        SourceSpec(name="drive", kind="filesystem", config={"root": str(share), "acl_rules": rules})
    )
    (run,) = runtime.sync("drive")
    assert run.report.acl_updated == 1 and run.report.chunks_embedded == 0
    assert "welcome.md" not in titles(runtime, "office", "user:carol")
    assert "welcome.md" in titles(runtime, "office", "user:alice")


def test_a_bad_document_is_recorded_and_the_rest_indexed(runtime: Runtime, share: Path) -> None:
    (share / "handbook" / "broken.docx").write_bytes(b"this is not a zip file at all")
    (share / "handbook" / "empty.txt").write_bytes(b"")
    (run,) = runtime.sync("drive")
    reasons = {f[0]: f[1] for f in run.report.failures}
    assert set(reasons) == {"handbook/broken.docx", "handbook/empty.txt"}
    assert reasons["handbook/empty.txt"] == "empty"
    assert run.report.upserted == 3 and run.status == "completed"
    assert {f["external_id"] for f in runtime.failures("drive")} == set(reasons)


def test_too_large_documents_are_refused(tmp_path: Path, share: Path) -> None:
    write(share, "handbook/huge.txt", "word " * 2000)
    rt = Runtime(
        Settings(home=tmp_path / "h2", max_document_bytes=5_000), embedder=FakeHashEmbedder()
    )
    rt.add_source(
        SourceSpec(name="drive", kind="filesystem", config={"root": str(share), "acl_rules": RULES})
    )
    (run,) = rt.sync("drive")
    assert [(f[0], f[1]) for f in run.report.failures] == [("handbook/huge.txt", "too_large")]
    rt.close()


class CrashingEmbedder(FakeHashEmbedder):
    """A fake that dies after ``after`` calls, like a process killed mid-sync."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.calls = 0
        self.after = after

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("killed")
        return super().embed(texts)


def test_a_crashed_sync_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    root = tmp_path / "many"
    for i in range(40):  # a few chunks each: several embedding batches of 64 chunks
        write(root, f"doc-{i:02d}.md", f"# Doc {i}\n\n" + f"sentence number {i} here. " * 150)
    settings = Settings(home=tmp_path / "home")
    small_batches = PipelineOptions(batch_chunks=64, min_batch_chunks=64)
    rt = Runtime(settings, embedder=CrashingEmbedder(after=2), pipeline_options=small_batches)
    rt.add_source(
        SourceSpec(name="drive", kind="filesystem", config={"root": str(root), "acl_rules": RULES})
    )
    with pytest.raises(RuntimeError, match="killed"):
        rt.sync("drive")
    info = rt.source_info("drive")
    assert info.last_sync and info.last_sync["status"] == "failed"
    assert 0 < info.documents < 40  # some batches were committed
    rt.close()

    rt = Runtime(settings, embedder=FakeHashEmbedder())
    (run,) = rt.sync("drive")
    assert run.report.upserted + run.report.unchanged == 40
    assert run.report.unchanged == info.documents
    assert rt.index.count() == store_chunks(rt)
    everyone = AccessFilter(principals=frozenset({"group:everyone"}))
    assert rt.index.count(everyone) == store_chunks(rt)
    rt.close()


def test_a_document_that_comes_back_gets_a_new_version(runtime: Runtime, share: Path) -> None:
    runtime.sync("drive")
    text = (share / "handbook" / "travel.txt").read_text()
    (share / "handbook" / "travel.txt").unlink()
    runtime.sync("drive")
    write(share, "handbook/travel.txt", text + " Updated.")
    (run,) = runtime.sync("drive")
    assert run.report.upserted == 1
    with runtime.sessions() as s:
        doc = s.scalar(select(Document).where(Document.external_id == "handbook/travel.txt"))
        assert doc is not None and doc.deleted_at is None and doc.version == 2


def test_a_failed_document_is_not_parsed_again_until_it_changes(
    runtime: Runtime, share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (share / "handbook" / "broken.docx").write_bytes(b"this is not a zip file at all")
    runtime.sync("drive")
    import indexing.isolate as isolate

    parsed: list[str] = []
    real = isolate.make_parser

    class Counting:
        """Records what the runtime's parser (the child process) is asked to parse."""

        def __init__(self, config: isolate.ParserConfig) -> None:
            self.inner = real(config)

        def parse(self, data: bytes, *, filename: str, mime_type: str | None) -> object:
            parsed.append(filename)
            return self.inner.parse(data, filename=filename, mime_type=mime_type)

        def close(self) -> None:
            self.inner.close()

    runtime.parsers.close()  # its idle parser: the next sync leases a counting one
    monkeypatch.setattr(isolate, "make_parser", Counting)
    (run,) = runtime.sync("drive")
    assert [f[:2] for f in run.report.failures] == [("handbook/broken.docx", "corrupt")]
    assert parsed == [] and run.report.known_failures == 1
    write(share, "handbook/broken.docx", "still not a zip file, but different")
    (run,) = runtime.sync("drive")
    assert parsed == ["broken.docx"] and run.report.failed == 1


@pytest.mark.shared_data
def test_real_office_documents_ingest_without_a_crash(tmp_path: Path, shared_data: Path) -> None:
    """~225 real third-party files, some deliberately awkward: every one is either indexed
    or recorded as a failure with a reason, and the sync completes."""
    root = shared_data / "drive-example-docs"
    rt = Runtime(Settings(home=tmp_path / "home"), embedder=FakeHashEmbedder())
    rt.add_source(
        SourceSpec(
            name="drive",
            kind="filesystem",
            config={"root": str(root), "acl_rules": [{"glob": "**", "allow": ["group:all"]}]},
        )
    )
    (run,) = rt.sync("drive")
    r = run.report
    assert run.status == "completed"
    assert r.documents_seen > 200
    assert r.upserted + r.failed == r.documents_seen
    assert r.upserted > 150
    assert all(reason and detail for _, reason, detail in r.failures)
    assert len(rt.failures("drive")) == r.failed
    assert rt.index.count() == store_chunks(rt)
    rt.close()


def test_a_large_index_is_optimized_after_a_sync_that_added_points(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import indexing.pipeline as pipeline

    monkeypatch.setattr(pipeline, "EXACT_SEARCH_MAX_POINTS", 1)  # "large" for this test
    index = runtime.index
    calls: list[bool] = []
    real = index.optimize
    monkeypatch.setattr(index, "optimize", lambda: calls.append(real()) or calls[-1])
    runtime.sync("drive")
    assert len(calls) == 1
    assert "budget.md" in titles(runtime, "marketing budget", "user:alice")
    runtime.sync("drive")  # nothing new: nothing to optimize
    assert len(calls) == 1


def test_one_broken_source_does_not_stop_the_others(runtime: Runtime, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    runtime.add_source(SourceSpec(name="a-gone", kind="filesystem", config={"root": str(gone)}))
    gone.rmdir()
    broken, drive = runtime.sync()
    assert (broken.source, broken.status) == ("a-gone", "failed")
    assert broken.error and "does not exist" in broken.error
    assert (drive.source, drive.status, drive.report.upserted) == ("drive", "completed", 3)
    from connectors.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        runtime.sync("a-gone")  # named: its error is raised


def test_a_folder_outage_during_a_full_sync_deletes_nothing(
    runtime: Runtime, share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.sync("drive")
    # a config change resets the checkpoint: the next sync is a full listing
    rules = [{"glob": "**", "allow": ["group:everyone"]}]
    runtime.add_source(
        SourceSpec(name="drive", kind="filesystem", config={"root": str(share), "acl_rules": rules})
    )
    real = os.scandir

    def scandir(path: object) -> object:  # a fake outage of one folder (we run as root here)
        if Path(str(path)).name == "finance":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", scandir)
    (run,) = runtime.sync("drive")
    assert run.report.deleted == 0
    assert [f[:2] for f in run.report.failures] == [("finance/", "unreadable")]
    assert runtime.source_info("drive").documents == 3


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_every_search_mode_is_permission_filtered(runtime: Runtime, mode: str) -> None:
    runtime.sync("drive")

    def found(who: str) -> set[str]:
        return {r.title for r in runtime.search("marketing budget", who, k=50, mode=mode)}  # type: ignore[arg-type]

    assert "budget.md" in found("user:alice")
    assert "budget.md" not in found("user:carol")
    assert "budget.md" not in found("user:bob")


def test_keyword_search_finds_exact_terms(runtime: Runtime) -> None:
    runtime.sync("drive")
    (top, *_) = runtime.search("trains", "user:carol", k=3, mode="keyword")
    assert top.title == "travel.txt"
    from context_server.errors import SpecError

    with pytest.raises(SpecError, match="mode"):
        runtime.search("trains", "user:carol", mode="fuzzy")  # type: ignore[arg-type]


def test_the_index_is_checked_once_not_on_every_query(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.sync("drive")
    runtime.search("office", "user:carol")
    index = runtime.index
    calls: list[object] = []
    real = index.ensure
    monkeypatch.setattr(index, "ensure", lambda identity: calls.append(identity) or real(identity))
    for _ in range(3):
        assert runtime.search("office", "user:carol")
    assert calls == []
