"""The running system: store, index and embedder wired together, and what one can do with it.

The CLI (when no server runs) and the API both drive a ``Runtime``. It is built from
``Settings`` by the caller; nothing here runs at import time. The embedded vector index is
opened on first use and owned by this process until ``close()``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psutil
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from connectors import registry
from connectors.base import Checkpoint, GroupSource, SyncNotes, check_principal
from context_server import audit, keys
from context_server.agents import AgentCatalog
from context_server.errors import ConflictError, NotFoundError, SpecError
from context_server.keys import Caller, KeyKind
from context_server.results import SearchResult, SourceInfo, SyncResult, run_json
from context_server.schedules import Due, Scheduler, next_run
from context_server.settings import Settings
from context_server.specs import PrincipalsSpec, SourceSpec, resolve_paths
from context_server.store.db import make_engine, migrate, secure_data_dir, session_factory
from context_server.store.models import (
    Chunk,
    Document,
    GroupMembership,
    Principal,
    Source,
    SyncFailure,
    SyncRun,
    as_utc,
)
from context_server.store.sync_store import SqlSyncStore
from indexing.embed import Embedder, MiniLMEmbedder
from indexing.errors import IndexingError
from indexing.index import AccessFilter, Hit, VectorIndex, open_index
from indexing.isolate import ParserConfig, ParserPool
from indexing.keyword import KeywordEncoder
from indexing.parse import ParseLimits
from indexing.pipeline import Pipeline, PipelineOptions, SyncReport
from policies.access import Directory, PolicyFile, PolicyFileError, read_policy_file

log = logging.getLogger(__name__)


ProgressFn = Callable[[str, SyncReport], None]

#: The origin of memberships loaded from the principals file (vs ``source:<name>``).
PRINCIPALS = "principals"

SearchMode = Literal["dense", "keyword", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = ("dense", "keyword", "hybrid")


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        index: VectorIndex | None = None,
        pipeline_options: PipelineOptions | None = None,
        parsers: ParserPool | None = None,
    ) -> None:
        self.settings = settings
        if settings.database_url is None or settings.qdrant_url is None:
            secure_data_dir(settings.home)  # 0700, its files 0600; refuses another's
        self.engine = make_engine(settings.sqlalchemy_url)
        migrate(self.engine)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.interrupted_at_start = self._mark_interrupted_syncs()
        self._embedder = embedder
        self._index = index
        self._index_checked = False
        self.pipeline_options = pipeline_options or PipelineOptions(
            max_document_bytes=settings.max_document_bytes,
            chunk_tokens=settings.chunk_tokens,
            chunk_overlap_tokens=settings.chunk_overlap_tokens,
        )
        self._directory: Directory | None = None
        self._directory_stamp: tuple[int, int] | None = None
        self.agents = AgentCatalog(settings.agents_path)
        self.keywords = KeywordEncoder()
        self._lock = threading.Lock()
        self._syncing: set[str] = set()
        self.parsers = parsers or ParserPool(parser_config(settings, self.pipeline_options))

    # -- components, built on first use -------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = MiniLMEmbedder(
                backend=self.settings.embed_backend, batch_size=self.settings.embed_batch_size
            )
        return self._embedder

    @property
    def index(self) -> VectorIndex:
        with self._lock:
            if self._index is None:
                key = self.settings.qdrant_api_key
                self._index = open_index(
                    path=None if self.settings.qdrant_url else self.settings.index_path,
                    url=self.settings.qdrant_url,
                    api_key=key.get_secret_value() if key else None,
                )
            return self._index

    def open_index(self) -> VectorIndex:
        """The index, opened (and owned) and checked against the embedder once per process:
        ``ensure`` reads files or makes server round trips, too costly for every query."""
        index = self.index
        if not self._index_checked:
            index.ensure(self.embedder.identity)
            self._index_checked = True
        return index

    @property
    def directory(self) -> Directory:
        """Group memberships from the store plus the policy file, rebuilt when either
        changes (principals loaded; the policy file edited)."""
        stamp = self._policy_stamp()
        with self._lock:
            if self._directory is None or stamp != self._directory_stamp:
                policy = self._read_policy() if stamp is not None else None
                with self.sessions() as session:
                    rows = session.execute(select(GroupMembership.member, GroupMembership.group))
                    memberships = [(m, g) for m, g in rows]
                if policy is not None:
                    memberships += policy.memberships
                self._directory = Directory(
                    memberships, rules=policy.rules if policy is not None else None
                )
                self._directory_stamp = stamp
            return self._directory

    def _policy_stamp(self) -> tuple[int, int] | None:
        path = self.settings.policy_path
        try:
            stat = path.stat()
        except FileNotFoundError:
            if self.settings.policy_file is not None:
                raise SpecError(
                    f"the policy file {path} (CONTEXT_SERVER_POLICY_FILE) does not exist"
                ) from None
            return None
        except OSError as exc:
            raise SpecError(f"cannot read the policy file {path}: {exc}") from exc
        return (stat.st_mtime_ns, stat.st_size)

    def _read_policy(self) -> PolicyFile:
        try:
            return read_policy_file(self.settings.policy_path)
        except PolicyFileError as exc:
            raise SpecError(str(exc)) from exc

    def close(self) -> None:
        self.parsers.close()
        if self._index is not None:
            self._index.close()
            self._index = None
            self._index_checked = False
        self.engine.dispose()

    # -- sources --------------------------------------------------------------------------

    def add_source(self, spec: SourceSpec, base_dir: Path | None = None) -> SourceInfo:
        """Create or replace the source ``spec.name``; its config is validated first."""
        cls = registry.connector_class(spec.kind)
        config = dict(spec.config)
        if base_dir is not None:
            resolve_paths(cls.config_model, config, base_dir)
        registry.build(spec.kind, config)  # raises ConfigError with the validation message
        with self.sessions() as session:
            row = session.scalar(select(Source).where(Source.name == spec.name))
            if row is None:
                row = Source(
                    name=spec.name,
                    kind=spec.kind,
                    config=config,
                    checkpoint=None,
                    schedule=spec.schedule,
                )
                session.add(row)
            else:
                if row.kind != spec.kind:
                    raise SpecError(
                        f"source {spec.name!r} exists with kind {row.kind!r}; "
                        f"remove it before adding a {spec.kind!r} source of that name"
                    )
                if row.config != config:
                    row.config = config
                    row.checkpoint = None  # new config: the next sync lists everything again
                row.schedule = spec.schedule
            session.commit()
        return self.source_info(spec.name)

    def source_info(self, name: str) -> SourceInfo:
        for info in self.list_sources():
            if info.name == name:
                return info
        raise _missing(name)

    def list_sources(self) -> list[SourceInfo]:
        with self.sessions() as session:
            sources = session.scalars(select(Source).order_by(Source.name)).all()
            docs = dict(
                session.execute(
                    select(Document.source_id, func.count())
                    .where(Document.deleted_at.is_(None))
                    .group_by(Document.source_id)
                ).all()
            )
            chunks = dict(
                session.execute(
                    select(Document.source_id, func.count(Chunk.id))
                    .join(Chunk, Chunk.document_id == Document.id)
                    .group_by(Document.source_id)
                ).all()
            )
            out = []
            for source in sources:
                run = session.scalar(
                    select(SyncRun)
                    .where(SyncRun.source_id == source.id)
                    .order_by(SyncRun.id.desc())
                    .limit(1)
                )
                due = None
                if source.schedule:
                    due = next_run(
                        source.schedule,
                        as_utc(run.started_at) if run else None,
                        as_utc(source.created_at),
                    )
                out.append(
                    SourceInfo(
                        name=source.name,
                        kind=source.kind,
                        documents=docs.get(source.id, 0),
                        chunks=chunks.get(source.id, 0),
                        last_sync=run_json(run) if run else None,
                        schedule=source.schedule,
                        next_run=due,
                    )
                )
            return out

    # -- sync -----------------------------------------------------------------------------

    def sync(self, name: str | None = None, progress: ProgressFn | None = None) -> list[SyncResult]:
        """Sync one source (its errors are raised), or all of them in name order: then a
        source that cannot sync is reported as failed and the others still sync."""
        if name is not None:
            self.source_info(name)  # NotFoundError for an unknown source
            return [self._sync_one(name, progress)]
        with self.sessions() as session:
            names = list(session.scalars(select(Source.name).order_by(Source.name)))
        results = []
        for each in names:
            try:
                results.append(self._sync_one(each, progress))
            except IndexingError:
                raise  # the index itself is unusable: no other source can sync either
            except Exception as exc:
                last = self.source_info(each).last_sync
                results.append(
                    SyncResult(
                        source=each,
                        run_id=last["run_id"] if last else None,
                        status="failed",
                        report=SyncReport(),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                )
        return results

    def _sync_one(self, name: str, progress: ProgressFn | None) -> SyncResult:
        with self._lock:
            if name in self._syncing:
                raise ConflictError(f"source {name!r} is already syncing")
            self._syncing.add(name)
        try:
            return self._run_sync(name, progress)
        finally:
            with self._lock:
                self._syncing.discard(name)

    # -- sync runs whose process died -------------------------------------------------------

    def _mark_interrupted_syncs(self, source_id: int | None = None) -> list[int]:
        """Mark ``interrupted`` every running sync run no live process can own: its owner
        ran on this host and is gone (or is another process under a reused pid), or it ran
        elsewhere and sent no heartbeat for ``sync_lease_seconds``; a run from before owners
        were recorded counts as silent since it started. Returns the ids marked."""
        now = datetime.now(UTC)
        lease = timedelta(seconds=self.settings.sync_lease_seconds)
        marked = []
        with self.sessions() as session:
            query = select(SyncRun).where(SyncRun.status == "running")
            if source_id is not None:
                query = query.where(SyncRun.source_id == source_id)
            for run in session.scalars(query):
                why = _dead_owner(run, now, lease)
                if why is None:
                    continue
                run.status = "interrupted"
                run.finished_at = now
                run.error = f"interrupted: {why}; the next sync redoes what it did not finish"
                marked.append(run.id)
            session.commit()
        for run_id in marked:
            log.warning("sync run %s was interrupted (its process is gone)", run_id)
        return marked

    def _heartbeat(self, run_id: int, stop: threading.Event) -> None:
        """Renew the run's heartbeat in its own session until ``stop``."""
        every = self.settings.sync_lease_seconds / 4
        while not stop.wait(every):
            try:
                with self.sessions() as session:
                    session.execute(
                        update(SyncRun)
                        .where(SyncRun.id == run_id, SyncRun.status == "running")
                        .values(heartbeat_at=datetime.now(UTC))
                    )
                    session.commit()
            except Exception as exc:  # a busy store: the next beat tries again
                log.warning("heartbeat of sync run %s: %s", run_id, exc)

    def _run_sync(self, name: str, progress: ProgressFn | None) -> SyncResult:
        index = self.index  # fail early (locked, unreachable) before a run is recorded
        with self.sessions() as session:
            source_id = session.scalar(select(Source.id).where(Source.name == name))
        assert source_id is not None
        self._mark_interrupted_syncs(source_id)
        with self.sessions() as session:
            busy = session.scalar(
                select(SyncRun).where(SyncRun.source_id == source_id, SyncRun.status == "running")
            )
            if busy is not None:
                raise ConflictError(
                    f"source {name!r} is being synced by another process ({busy.owner}, "
                    f"run {busy.id})"
                )
        with self.parsers.lease() as parser:
            pipeline = Pipeline(index, self.embedder, self.pipeline_options, parser)
            return self._run_pipeline(name, pipeline, progress)

    def _run_pipeline(
        self, name: str, pipeline: Pipeline, progress: ProgressFn | None
    ) -> SyncResult:
        with self.sessions() as session:
            source = session.scalar(select(Source).where(Source.name == name))
            assert source is not None
            connector = registry.build(source.kind, source.config)
            checkpoint: Checkpoint | None = None
            if source.checkpoint is not None:
                checkpoint = registry.checkpoint_model(source.kind).model_validate(
                    source.checkpoint
                )
            run = SyncRun(
                source_id=source.id,
                status="running",
                counts={},
                owner=OWNER,
                heartbeat_at=datetime.now(UTC),
            )
            session.add(run)
            session.commit()
            store = SqlSyncStore(session, source.id, run)
            stage = ""
            beating = threading.Event()
            heart = threading.Thread(
                target=self._heartbeat, args=(run.id, beating), name=f"sync-heartbeat-{name}"
            )
            heart.daemon = True
            heart.start()
            try:
                report, next_checkpoint = pipeline.sync(
                    name,
                    connector.sync(checkpoint),
                    store,
                    full=checkpoint is None,
                    progress=(lambda r: progress(name, r)) if progress else None,
                )
                report.notes = _notes(connector, name)
                counts = report.counts()
                if isinstance(connector, GroupSource):
                    stage = "group sync: "
                    counts["memberships"] = self._replace_synced_memberships(
                        session, name, connector.memberships()
                    )
            except Exception as exc:
                session.rollback()
                run.status = "failed"
                run.error = f"{stage}{type(exc).__name__}: {exc}"
                run.finished_at = datetime.now(UTC)
                session.commit()
                raise
            finally:
                beating.set()
            run.status = "completed"
            run.counts = counts
            run.finished_at = datetime.now(UTC)
            run.checkpoint = next_checkpoint.model_dump(mode="json")
            source.checkpoint = run.checkpoint
            session.commit()
            started = as_utc(run.started_at)
            run_id = run.id
        # Agents triggered by this source's new and changed documents (one run per version).
        from context_server.worker import enqueue_events  # the runner builds on the runtime

        try:
            queued = enqueue_events(self, name, started)
        except SpecError as exc:  # an agent that cannot run; the sync itself is done
            log.warning("event runs after syncing %s: %s", name, exc)
            queued = []
        return SyncResult(
            source=name, run_id=run_id, status="completed", report=report, runs_queued=len(queued)
        )

    # -- principals -----------------------------------------------------------------------

    def load_principals(self, spec: PrincipalsSpec) -> dict[str, int]:
        """Replace every group membership with the file's; principals are kept and added."""
        with self.sessions() as session:
            existing = set(session.scalars(select(Principal.name)))
            session.add_all(Principal(name=p) for p in sorted(spec.principals() - existing))
            session.execute(delete(GroupMembership).where(GroupMembership.origin == PRINCIPALS))
            session.flush()
            memberships = sorted(set(spec.memberships()))
            session.add_all(
                GroupMembership(member=m, group=g, origin=PRINCIPALS) for m, g in memberships
            )
            session.commit()
        with self._lock:
            self._directory = None
        return {"groups": len(spec.groups), "memberships": len(memberships)}

    def _replace_synced_memberships(
        self, session: Session, source: str, pairs: Iterable[tuple[str, str]]
    ) -> int:
        """The source's memberships become ``pairs`` (others' are untouched)."""
        origin = f"source:{source}"
        clean = sorted({(check_principal(m), check_principal(g)) for m, g in pairs})
        names = {p for pair in clean for p in pair}
        existing = set(session.scalars(select(Principal.name).where(Principal.name.in_(names))))
        session.add_all(Principal(name=p) for p in sorted(names - existing))
        session.execute(delete(GroupMembership).where(GroupMembership.origin == origin))
        session.flush()
        session.add_all(GroupMembership(member=m, group=g, origin=origin) for m, g in clean)
        with self._lock:
            self._directory = None
        return len(clean)

    def principals_for(self, principal: str) -> frozenset[str]:
        return self.directory.principals_for(principal)

    # -- search ---------------------------------------------------------------------------

    def search(
        self,
        query: str,
        principal: str,
        k: int = 10,
        sources: list[str] | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[SearchResult]:
        """Top ``k`` chunks ``principal`` may read; the ACL is a filter inside the query.

        ``mode``: ``dense`` (the embedding model), ``keyword`` (BM25), or ``hybrid`` (both,
        fused by reciprocal rank)."""
        if not query.strip():
            raise SpecError("the query is empty")
        if mode not in SEARCH_MODES:
            raise SpecError(f"unknown search mode {mode!r}; choose {', '.join(SEARCH_MODES)}")
        access = AccessFilter(
            principals=self.principals_for(principal),
            sources=frozenset(sources) if sources else None,
        )
        hits = self.search_hits(query, access, k, mode)
        return [
            SearchResult(
                document_id=h.payload.document_id,
                title=h.payload.title,
                source=h.payload.source,
                url=h.payload.url,
                chunk_id=h.payload.chunk_id,
                text=h.payload.text,
                score=h.score,
                section=h.payload.section,
                version=h.payload.version,
            )
            for h in hits
        ]

    def search_hits(
        self, query: str, access: AccessFilter, k: int, mode: SearchMode = "hybrid"
    ) -> list[Hit]:
        """The index's top ``k`` for ``query`` under ``access`` (inside the query)."""
        index = self.open_index()
        vector = self.embedder.embed([query])[0].tolist() if mode != "keyword" else None
        sparse = self.keywords.query(query) if mode != "dense" else None
        return index.search(vector, access, k, sparse=sparse)

    def due(self, now: datetime) -> tuple[list[Due], datetime | None]:
        """Scheduled sources due at ``now`` (not already syncing), and the next time any
        other one falls due."""
        due, upcoming = [], None
        with self._lock:
            busy = set(self._syncing)
        # Only schedules and last run starts: the loop asks every few seconds, so no counts.
        last_start = (
            select(SyncRun.source_id, func.max(SyncRun.started_at).label("started"))
            .group_by(SyncRun.source_id)
            .subquery()
        )
        with self.sessions() as session:
            rows = session.execute(
                select(Source.name, Source.schedule, Source.created_at, last_start.c.started)
                .outerjoin(last_start, last_start.c.source_id == Source.id)
                .where(Source.schedule.is_not(None))
                .order_by(Source.name)
            ).all()
        for name, schedule, created, started in rows:
            if name in busy:
                continue
            at = next_run(schedule, as_utc(started) if started else None, as_utc(created))
            if at <= now:
                due.append(Due(name, at))
            elif upcoming is None or at < upcoming:
                upcoming = at
        return due, upcoming

    def scheduler(self) -> Scheduler:
        return Scheduler(self.due, lambda name: self.sync(name))

    def failures(self, name: str) -> list[dict[str, str]]:
        """Failures of the source's last run."""
        self.source_info(name)  # NotFoundError for an unknown source
        with self.sessions() as session:
            run = session.scalar(
                select(SyncRun)
                .join(Source, Source.id == SyncRun.source_id)
                .where(Source.name == name)
                .order_by(SyncRun.id.desc())
                .limit(1)
            )
            if run is None:
                return []
            rows = session.scalars(select(SyncFailure).where(SyncFailure.run_id == run.id))
            return [
                {"external_id": f.external_id, "reason": f.reason, "detail": f.detail} for f in rows
            ]

    # -- keys -------------------------------------------------------------------------------

    def create_key(self, kind: KeyKind, subject: str, label: str = "") -> dict[str, Any]:
        """A new API key for an agent (which must be declared) or a user; shown once."""
        if kind == "agent":
            self.agents.get(subject)  # NotFoundError / SpecError for an unusable agent
        with self.sessions() as session:
            return keys.create_key(session, kind, subject, label)

    def list_keys(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return keys.list_keys(session)

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        with self.sessions() as session:
            return keys.revoke_key(session, key_id)

    def authenticate(self, token: str) -> Caller | None:
        with self.sessions() as session:
            return keys.authenticate(session, token)

    # -- agents and audit -----------------------------------------------------------------

    def list_agents(self) -> dict[str, Any]:
        valid, invalid = self.agents.scan()
        return {
            "directory": str(self.agents.directory),
            "agents": [a.to_json() for a in valid],
            "invalid": [i.to_json() for i in invalid],
        }

    def audit_export(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[dict[str, object]]:
        with self.sessions() as session:
            yield from audit.export(session, since, until)


def _process_owner() -> str:
    """This process as a sync run's owner: host, pid and start time (pids are reused)."""
    started = psutil.Process().create_time()
    return f"{socket.gethostname()}:{os.getpid()}:{started:.2f}"


OWNER = _process_owner()


def _dead_owner(run: SyncRun, now: datetime, lease: timedelta) -> str | None:
    """Why no live process can own ``run`` (``None``: one may)."""
    if run.owner is not None and run.owner.count(":") >= 2:
        host, pid_text, started_text = run.owner.rsplit(":", 2)
        if host == socket.gethostname():
            pid, started = int(pid_text), float(started_text)
            if run.owner == OWNER:
                return None  # ours: the in-process guard (_syncing) decides
            try:
                alive = abs(psutil.Process(pid).create_time() - started) < 1
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                alive = False
            return None if alive else f"its process (pid {pid} on {host}) is gone"
    beat = run.heartbeat_at or run.started_at
    if beat is not None and now - as_utc(beat) > lease:
        return f"no heartbeat from {run.owner or 'its process'} since {as_utc(beat).isoformat()}"
    return None


def _notes(connector: object, source: str) -> dict[str, int]:
    """What the connector noted about the sync that just finished (SyncNotes), as counts;
    a connector that cannot say is logged, not a failed sync."""
    if not isinstance(connector, SyncNotes):
        return {}
    try:
        notes = connector.sync_notes()
        return {str(k): int(v) for k, v in dict(notes).items()}
    except Exception as exc:
        log.warning("sync notes of %s: %s", source, exc)
        return {}


def parser_config(settings: Settings, options: PipelineOptions) -> ParserConfig:
    return ParserConfig(
        max_bytes=options.max_document_bytes,
        limits=ParseLimits(
            max_inflated_bytes=settings.max_inflated_bytes,
            max_compression_ratio=settings.max_compression_ratio,
            max_archive_members=settings.max_archive_members,
            max_archive_depth=settings.max_archive_depth,
            max_email_parts=settings.max_email_parts,
            max_text_chars=settings.max_text_chars,
        ),
        isolate=settings.parse_isolation,
        timeout_seconds=settings.parse_timeout_seconds,
        memory_bytes=settings.parse_memory_bytes,
        target=settings.parse_target,
    )


def _missing(name: str) -> NotFoundError:
    return NotFoundError(f"no source named {name!r} (add one with `sources add FILE.yaml`)")
