"""What the runtime reports: a source with its counts and last run, one sync's result, one
search hit. Plain values with ``to_json`` for the CLI and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from context_server.store.models import SyncRun
from indexing.pipeline import SyncReport


@dataclass(frozen=True)
class SourceInfo:
    name: str
    kind: str
    documents: int
    chunks: int
    last_sync: dict[str, Any] | None
    schedule: str | None = None
    next_run: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "documents": self.documents,
            "chunks": self.chunks,
            "last_sync": self.last_sync,
            "schedule": self.schedule,
            "next_run": self.next_run.isoformat() if self.next_run else None,
        }


@dataclass(frozen=True)
class SyncResult:
    source: str
    run_id: int | None
    status: str  # completed | failed (notes: report.notes, also in report.counts())
    report: SyncReport
    error: str | None = None
    runs_queued: int = 0  # agent runs its new and changed documents triggered

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "run_id": self.run_id,
            "status": self.status,
            "error": self.error,
            "runs_queued": self.runs_queued,
            **self.report.counts(),
            "failures": [
                {"external_id": e, "reason": r, "detail": d} for e, r, d in self.report.failures
            ],
        }


@dataclass(frozen=True)
class SearchResult:
    document_id: str
    title: str
    source: str
    url: str | None
    chunk_id: str
    text: str
    score: float
    section: str | None
    version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "title": self.title,
            "source": self.source,
            "url": self.url,
            "chunk_id": self.chunk_id,
            "text": self.text,
            "score": round(self.score, 6),
            "section": self.section,
            "version": self.version,
        }


def run_json(run: SyncRun) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "status": run.status,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "counts": run.counts,
        # what the connector noted (connectors.base.SyncNotes), e.g. {"unmatched_acl_rule": 3}
        "notes": dict((run.counts or {}).get("notes") or {}),
        "error": run.error,
        "owner": run.owner,
        "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
    }
