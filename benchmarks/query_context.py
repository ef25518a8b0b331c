"""Section ``context`` of ``benchmarks/query.py``: ``POST /v1/context`` end to end.

A world of ``points`` chunks is written straight into a real store (SQLite in a scratch
data dir) and the embedded index (synthetic clustered vectors from ``query.make_corpus``,
BM25 keyword vectors of each chunk's text), so no document has to be embedded. The query
side is all real: an agent file, an API key, the app (FastAPI in-process), the embedding
model for the query, the planner, the store check, token counting, de-duplication, packing,
and the bundle and audit writes. Per selectivity it prints p50/p95 of the whole request
and of the raw filtered search (``Runtime.search_hits``) under the same principal, and the
time from an ACL revocation (a re-sync applying an ACL-only change) to the document no
longer being served.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import insert

from connectors.base import PUBLIC
from context_server.api.app import create_app
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.specs import PrincipalsSpec
from context_server.store.models import Chunk, Document, Source
from indexing.index import ChunkPayload, IndexPoint
from indexing.keyword import KeywordEncoder

ADMIN_TOKEN = "bench-admin-token"
WORDS_PER_CHUNK = 60
SYLLABLES = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "an", "is", "ur", "pe", "qui"]


@dataclass
class ContextRow:
    points: int
    selectivity: float
    admitted: int
    context_p50_ms: float
    context_p95_ms: float
    search_p50_ms: float
    search_p95_ms: float
    items_mean: float
    used_tokens_mean: float


def vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        n = int(rng.integers(2, 5))  # 13^2 + 13^3 + 13^4 possible words
        words.add("".join(rng.choice(SYLLABLES, n)))
    return sorted(words)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.array(seconds) * 1000.0, q))


def load_world(runtime: Runtime, corpus: Any, words: list[str], seed: int) -> None:
    """Store rows and index points for every chunk of ``corpus`` (see ``query.make_corpus``)."""
    from query import group_token  # the raw section's ACL naming

    rng = np.random.default_rng(seed)
    keywords = KeywordEncoder()
    index = runtime.open_index()
    n = len(corpus.vectors)
    doc_ids = [
        str(uuid.UUID(int=int(x))) for x in rng.integers(1, 2**62, int(corpus.document.max()) + 1)
    ]
    now = datetime.now(UTC)
    with runtime.sessions() as session:
        source_ids = {}
        for name in ("drive", "wiki", "tickets"):
            row = Source(name=name, kind="jsonl", config={}, checkpoint=None)
            session.add(row)
            session.flush()
            source_ids[name] = row.id
        docs = []
        for d, doc_id in enumerate(doc_ids):
            chunk_idx = np.flatnonzero(corpus.document == d)
            if len(chunk_idx) == 0:
                continue
            i = int(chunk_idx[0])
            allow = [group_token(int(corpus.group[i])), f"user:u{d}"]
            docs.append(
                {
                    "id": doc_id,
                    "source_id": source_ids[("drive", "wiki", "tickets")[d % 3]],
                    "external_id": f"doc-{d}",
                    "title": f"Document {d}",
                    "url": f"https://example.test/doc-{d}",
                    "content_hash": f"h{d}",
                    "version": 1,
                    "acl": {
                        "users": [f"user:u{d}"],
                        "groups": [allow[0]],
                        "public": bool(corpus.public[i]),
                        "deny": ["user:q"] if corpus.denies_user[i] else [],
                    },
                    "doc_metadata": {},
                    "updated_at": now,
                    "indexed_at": now,
                }
            )
        for start in range(0, len(docs), 5000):
            session.execute(insert(Document), docs[start : start + 5000])
        session.commit()
        for start in range(0, n, 5000):
            chunks, points = [], []
            for i in range(start, min(n, start + 5000)):
                d = int(corpus.document[i])
                topic = corpus.topic_terms[corpus.doc_topic[d]]
                picks = np.where(
                    rng.random(WORDS_PER_CHUNK) < 0.8,
                    topic[rng.integers(0, len(topic), WORDS_PER_CHUNK)] % len(words),
                    rng.integers(0, len(words), WORDS_PER_CHUNK),
                )
                text = " ".join(words[int(w)] for w in picks)
                chunk_id = corpus.ids[i]
                chunks.append(
                    {
                        "id": chunk_id,
                        "document_id": doc_ids[d],
                        "ordinal": i,
                        "text": text,
                        "span_start": 0,
                        "span_end": len(text),
                        "section": None,
                        "page": None,
                        "tokens": 0,  # counted below, by the model's tokenizer
                    }
                )
                acl = docs_acl(corpus, i, d, group_token)
                points.append(
                    IndexPoint(
                        id=chunk_id,
                        vector=corpus.vectors[i].tolist(),
                        sparse=keywords.document(text),
                        payload=ChunkPayload(
                            document_id=doc_ids[d],
                            source=("drive", "wiki", "tickets")[d % 3],
                            chunk_id=chunk_id,
                            ordinal=i,
                            title=f"Document {d}",
                            url=f"https://example.test/doc-{d}",
                            version="1",
                            span_start=0,
                            span_end=len(text),
                            text=text,
                            acl_allow=acl[0],
                            acl_deny=acl[1],
                            updated_at=now.timestamp(),
                        ),
                    )
                )
            counts = runtime.embedder.counter.encode_batch(  # type: ignore[attr-defined]
                [c["text"] for c in chunks], add_special_tokens=False
            )
            for c, encoding in zip(chunks, counts, strict=True):
                c["tokens"] = len(encoding.ids)
            session.execute(insert(Chunk), chunks)
            session.commit()
            index.upsert(points)
    index.optimize()


def docs_acl(
    corpus: Any, i: int, d: int, group_token: Any
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    allow = [group_token(int(corpus.group[i])), f"user:u{d}"]
    if corpus.public[i]:
        allow.append(PUBLIC)
    deny = ("user:q",) if corpus.denies_user[i] else ()
    return tuple(allow), deny


def run_context(
    points: int, selectivities: list[float], count: int, seed: int
) -> tuple[list[ContextRow], dict[str, float]]:
    from query import group_token, make_corpus, principal

    corpus = make_corpus(points, seed)
    rng = np.random.default_rng(seed + 1)
    corpus.ids = [str(uuid.UUID(int=int(x))) for x in rng.integers(1, 2**62, points)]
    words = vocabulary(5000, rng)
    rows: list[ContextRow] = []
    with tempfile.TemporaryDirectory(prefix="bench-context-") as tmp:
        settings = Settings(home=Path(tmp))
        runtime = Runtime(settings)
        try:
            started = time.perf_counter()
            load_world(runtime, corpus, words, seed)
            build_s = time.perf_counter() - started
            settings.agents_path.mkdir(parents=True, exist_ok=True)
            (settings.agents_path / "bench.yaml").write_text(
                "name: bench\nsources: [drive, wiki, tickets]\nserves: ['user:q']\n"
                "budget_tokens: 2000\n"
            )
            app = create_app(settings, runtime=runtime, admin_token=ADMIN_TOKEN)
            with TestClient(app) as client:
                admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
                key = client.post("/v1/keys", json={"agent": "bench"}, headers=admin).json()["key"]
                auth = {"Authorization": f"Bearer {key}"}
                qrng = np.random.default_rng(seed + 2)
                texts = [
                    " ".join(words[int(w)] for w in qrng.integers(0, len(words), 6))
                    for _ in range(count)
                ]
                for selectivity in selectivities:
                    access, mask = principal(corpus, selectivity)
                    groups = sorted(
                        p.removeprefix("group:")
                        for p in access.principals
                        if p.startswith("group:")
                    )
                    runtime.load_principals(PrincipalsSpec(groups={g: ["user:q"] for g in groups}))
                    user = runtime.principals_for("user:q")
                    from indexing.index import AccessFilter

                    search_access = AccessFilter(
                        principals=user, sources=frozenset({"drive", "wiki", "tickets"})
                    )
                    for text in texts[:3]:  # warm-up: model, planner caches
                        client.post(
                            "/v1/context",
                            headers=auth,
                            json={"agent": "bench", "on_behalf_of": "user:q", "query": text},
                        )
                    ctx, raw, items, used = [], [], [], []
                    for text in texts:
                        t0 = time.perf_counter()
                        r = client.post(
                            "/v1/context",
                            headers=auth,
                            json={"agent": "bench", "on_behalf_of": "user:q", "query": text},
                        )
                        ctx.append(time.perf_counter() - t0)
                        assert r.status_code == 200, r.text
                        body = r.json()
                        items.append(len(body["items"]))
                        used.append(body["used_tokens"])
                        t0 = time.perf_counter()
                        runtime.search_hits(text, search_access, 50)
                        raw.append(time.perf_counter() - t0)
                    rows.append(
                        ContextRow(
                            points=points,
                            selectivity=selectivity,
                            admitted=int(mask.sum()),
                            context_p50_ms=round(percentile_ms(ctx, 50), 2),
                            context_p95_ms=round(percentile_ms(ctx, 95), 2),
                            search_p50_ms=round(percentile_ms(raw, 50), 2),
                            search_p95_ms=round(percentile_ms(raw, 95), 2),
                            items_mean=round(statistics.mean(items), 1),
                            used_tokens_mean=round(statistics.mean(used), 1),
                        )
                    )
                revocation = measure_revocation(client, runtime, auth, corpus, group_token)
        finally:
            runtime.close()
    return rows, {"build_s": round(build_s, 1), **revocation}


def measure_revocation(
    client: TestClient, runtime: Runtime, auth: dict[str, str], corpus: Any, group_token: Any
) -> dict[str, float]:
    """An ACL-only change reaching the index (what a sync does for it: ``set_acl``), then
    the next request: the revoked document must be gone from it."""
    body = {"agent": "bench", "on_behalf_of": "user:q", "query": "ka lo mi"}
    served = client.post("/v1/context", headers=auth, json=body).json()["items"]
    if not served:
        return {}
    doc = served[0]["citation"]["document_id"]
    started = time.perf_counter()
    runtime.open_index().set_acl(doc, allow=["group:nobody"], deny=[])
    applied = time.perf_counter()
    again = client.post("/v1/context", headers=auth, json=body).json()["items"]
    done = time.perf_counter()
    gone = all(i["citation"]["document_id"] != doc for i in again)
    return {
        "revocation_set_acl_ms": round((applied - started) * 1000, 2),
        "revocation_to_not_served_ms": round((done - started) * 1000, 2),
        "revoked_document_gone": float(gone),
    }
