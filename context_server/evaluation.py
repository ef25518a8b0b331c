"""Retrieval quality on BEIR-format benchmarks: load a dataset folder, ingest its corpus into
a ``Runtime`` through the ``jsonl`` connector, search every judged query, score the rankings.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (header ``query-id corpus-id score``, then
tab-separated rows). Only queries that have qrels are evaluated.

Metrics follow trec_eval (as BEIR reports them through pytrec_eval): nDCG@k with the graded
relevance as the gain and a log2(rank + 1) discount, the ideal DCG from that query's qrels;
recall@k over the documents judged relevant (score > 0). The metric functions are pure.

``evaluate`` drives a Runtime the caller built on a scratch data directory: it replaces the
group memberships with its own (``user:eval`` in ``group:eval``) and owns the ``beir`` source.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

from context_server.errors import ContextServerError
from context_server.runtime import ProgressFn, Runtime, SearchMode
from context_server.specs import PrincipalsSpec, SourceSpec
from indexing.pipeline import document_id

SOURCE = "beir"
GROUP = "eval"
PRINCIPAL = "user:eval"
NDCG_AT = 10
RECALL_AT = 100
#: Chunks asked of the index per query; several chunks of one document count once.
CHUNKS_PER_QUERY = 100

QueryProgressFn = Callable[[int, int], None]
"""Called after each query with (done, total)."""


class EvalError(ContextServerError):
    """A benchmark folder lacks a file or holds a malformed line; or the home is not scratch."""


# -- metrics --------------------------------------------------------------------------------


def dcg(gains: Iterable[float]) -> float:
    """Discounted cumulative gain: the gain at rank r (from 1) counts 1 / log2(r + 1)."""
    return sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int = NDCG_AT) -> float:
    """nDCG@k of a ranking (document ids, best first, no repeats) against graded qrels.

    0.0 when the query has no document judged relevant (trec_eval does the same).
    """
    ideal = dcg(sorted((r for r in qrels.values() if r > 0), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    return dcg(max(qrels.get(doc, 0), 0) for doc in ranking[:k]) / ideal


def recall_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int = RECALL_AT) -> float:
    """Share of the documents judged relevant (score > 0) found in the top ``k``."""
    relevant = {doc for doc, r in qrels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def rank_documents(
    document_ids: Iterable[str], corpus_ids: Mapping[str, str], exclude: str | None = None
) -> list[str]:
    """Chunk hits (their document uuids, best first) → corpus ids, each at its best rank.

    Hits of documents outside ``corpus_ids`` are dropped, and so is ``exclude``.
    """
    ranking: list[str] = []
    seen: set[str] = set()
    for uuid in document_ids:
        corpus_id = corpus_ids.get(uuid)
        if corpus_id is None or corpus_id == exclude or corpus_id in seen:
            continue
        seen.add(corpus_id)
        ranking.append(corpus_id)
    return ranking


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1), linearly interpolated between the closest ranks."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# -- the dataset ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    qrels: Mapping[str, int]  # corpus id → graded relevance


@dataclass(frozen=True)
class BeirDataset:
    name: str
    corpus: Path
    corpus_ids: tuple[str, ...]
    queries: tuple[Query, ...]  # the judged ones, in queries.jsonl order


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a malformed line is an ``EvalError``."""
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
                except ValueError as exc:
                    raise EvalError(f"{path}:{number}: not valid JSON: {exc}") from None
                if not isinstance(obj, dict):
                    raise EvalError(f"{path}:{number}: expected a JSON object")
                yield number, obj
    except OSError as exc:
        raise EvalError(f"cannot read {path}: {exc}") from exc


def _string_id(obj: Mapping[str, Any], path: Path, number: int) -> str:
    value = obj.get("_id")
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise EvalError(f"{path}:{number}: no usable '_id'")
    return str(value)


def _corpus_ids(path: Path) -> tuple[str, ...]:
    """The corpus ids, checked as the jsonl connector reads them, before anything is indexed."""
    ids: dict[str, int] = {}
    for number, obj in _json_lines(path):
        corpus_id = _string_id(obj, path, number)
        if corpus_id in ids:
            raise EvalError(f"{path}:{number}: duplicate _id {corpus_id!r} (line {ids[corpus_id]})")
        for field in ("title", "text"):
            if obj.get(field) is not None and not isinstance(obj[field], str):
                raise EvalError(f"{path}:{number}: '{field}' is not a string")
        ids[corpus_id] = number
    if not ids:
        raise EvalError(f"{path}: no documents")
    return tuple(ids)


def _queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for number, obj in _json_lines(path):
        query_id = _string_id(obj, path, number)
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise EvalError(f"{path}:{number}: query {query_id!r} has no text")
        if query_id in queries:
            raise EvalError(f"{path}:{number}: duplicate _id {query_id!r}")
        queries[query_id] = text
    return queries


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    """query id → {corpus id → score}. The header line is recognised by its non-numeric score."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 3:
            raise EvalError(
                f"{path}:{number}: expected 3 tab-separated columns "
                f"(query-id, corpus-id, score), got {len(columns)}: {line!r}"
            )
        query_id, corpus_id, score = (c.strip() for c in columns)
        try:
            relevance = int(score)
        except ValueError:
            if number == 1:
                continue  # the header
            raise EvalError(f"{path}:{number}: score {score!r} is not an integer") from None
        if not query_id or not corpus_id:
            raise EvalError(f"{path}:{number}: empty query-id or corpus-id")
        qrels.setdefault(query_id, {})[corpus_id] = relevance
    return qrels


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    """Read and check a BEIR folder (the corpus is only scanned for its ids)."""
    if not folder.is_dir():
        raise EvalError(f"{folder} is not a folder")
    files = {
        "corpus": folder / "corpus.jsonl",
        "queries": folder / "queries.jsonl",
        "qrels": folder / "qrels" / f"{split}.tsv",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise EvalError(f"not a BEIR folder: missing {', '.join(missing)}")
    queries = _queries(files["queries"])
    qrels = _qrels(files["qrels"])
    unknown = sorted(qrels.keys() - queries.keys())
    if unknown:
        shown = ", ".join(repr(q) for q in unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise EvalError(f"{files['qrels']}: {len(unknown)} query ids not in queries.jsonl: {shown}")
    judged = tuple(Query(q, text, qrels[q]) for q, text in queries.items() if q in qrels)
    if not judged:
        raise EvalError(f"{files['qrels']}: no query has qrels")
    return BeirDataset(
        name=folder.resolve().name,
        corpus=files["corpus"].resolve(),
        corpus_ids=_corpus_ids(files["corpus"]),
        queries=judged,
    )


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalReport:
    dataset: str
    mode: SearchMode
    queries: int
    documents: int
    chunks: int
    failed_documents: int
    ndcg_at_10: float
    recall_at_100: float
    ingest_seconds: float
    query_p50_ms: float
    query_p95_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "mode": self.mode,
            "queries": self.queries,
            "documents": self.documents,
            "chunks": self.chunks,
            "failed_documents": self.failed_documents,
            "ndcg@10": round(self.ndcg_at_10, 4),
            "recall@100": round(self.recall_at_100, 4),
            "ingest_seconds": round(self.ingest_seconds, 3),
            "query_p50_ms": round(self.query_p50_ms, 2),
            "query_p95_ms": round(self.query_p95_ms, 2),
        }


def _refuse_a_real_home(runtime: Runtime) -> None:
    others = [s.name for s in runtime.list_sources() if s.name != SOURCE]
    if others:
        raise EvalError(
            f"{runtime.settings.home} holds other sources ({', '.join(others)}): an evaluation "
            "replaces the group memberships, so it runs only in a scratch data directory"
        )


def evaluate(
    runtime: Runtime,
    folder: Path,
    mode: SearchMode = "hybrid",
    *,
    limit_queries: int | None = None,
    split: str = "test",
    ignore_identical_ids: bool = True,
    progress: ProgressFn | None = None,
    on_query: QueryProgressFn | None = None,
) -> EvalReport:
    """Ingest ``folder``'s corpus (a no-op for documents already indexed unchanged), search
    each judged query as a user who may read the whole corpus, and score the rankings.

    ``ignore_identical_ids``: drop a retrieved document whose id is the query's, as BEIR
    does by default (in ArguAna and Quora the queries are corpus documents too).
    """
    if limit_queries is not None and limit_queries < 1:
        raise EvalError("limit_queries must be at least 1")
    dataset = load_beir(folder, split)
    queries = dataset.queries[:limit_queries] if limit_queries is not None else dataset.queries
    _refuse_a_real_home(runtime)
    runtime.load_principals(PrincipalsSpec(groups={GROUP: [PRINCIPAL]}))
    config = {"path": str(dataset.corpus), "acl": {"allow": [f"group:{GROUP}"]}}
    started = perf_counter()
    # The same config keeps the checkpoint: a second run only re-reads and re-hashes.
    runtime.add_source(SourceSpec(name=SOURCE, kind="jsonl", config=config))
    (result,) = runtime.sync(SOURCE, progress)
    ingest_seconds = perf_counter() - started
    info = runtime.source_info(SOURCE)
    corpus_ids = {document_id(SOURCE, c): c for c in dataset.corpus_ids}

    # Untimed: the first search may load the model (a re-run's sync embeds nothing).
    runtime.search(queries[0].text, PRINCIPAL, k=1, mode=mode)
    ndcgs: list[float] = []
    recalls: list[float] = []
    latencies: list[float] = []
    for done, query in enumerate(queries, start=1):
        t = perf_counter()
        hits = runtime.search(query.text, PRINCIPAL, k=CHUNKS_PER_QUERY, mode=mode)
        latencies.append(perf_counter() - t)
        ranking = rank_documents(
            (h.document_id for h in hits),
            corpus_ids,
            exclude=query.id if ignore_identical_ids else None,
        )
        ndcgs.append(ndcg_at_k(ranking, query.qrels, NDCG_AT))
        recalls.append(recall_at_k(ranking, query.qrels, RECALL_AT))
        if on_query:
            on_query(done, len(queries))
    return EvalReport(
        dataset=dataset.name,
        mode=mode,
        queries=len(queries),
        documents=info.documents,
        chunks=info.chunks,
        failed_documents=result.report.failed,
        ndcg_at_10=sum(ndcgs) / len(ndcgs),
        recall_at_100=sum(recalls) / len(recalls),
        ingest_seconds=ingest_seconds,
        query_p50_ms=percentile(latencies, 0.50) * 1000,
        query_p95_ms=percentile(latencies, 0.95) * 1000,
    )
