"""BEIR evaluation: the metrics by hand, the folder loader, and a tiny end-to-end run.

The end-to-end dataset is invented here (twelve short documents on distinct topics); the
embedder is the bag-of-words fake, which finds documents sharing a query's exact words.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from context_server import eval_cli
from context_server.eval_cli import ModeChoice, eval_app
from context_server.evaluation import (
    EvalError,
    evaluate,
    load_beir,
    ndcg_at_k,
    percentile,
    rank_documents,
    recall_at_k,
)
from context_server.runtime import SEARCH_MODES, Runtime
from context_server.settings import Settings
from context_server.specs import SourceSpec
from indexing.embed import FakeHashEmbedder

# -- metrics --------------------------------------------------------------------------------


def test_a_perfect_ranking_scores_one() -> None:
    qrels = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b", "c"], qrels) == pytest.approx(1.0)
    assert recall_at_k(["a", "b", "c"], qrels) == 1.0


def test_ndcg_of_a_small_binary_case() -> None:
    # Relevant at ranks 2 and 4: (1/log2 3 + 1/log2 5) / (1 + 1/log2 3).
    assert ndcg_at_k(["x", "a", "y", "b"], {"a": 1, "b": 1}) == pytest.approx(0.6509209298)


def test_ndcg_uses_the_grade_as_gain() -> None:
    # The grade-1 document ahead of the grade-2 one: (1 + 2/log2 3) / (2 + 1/log2 3).
    assert ndcg_at_k(["b", "a"], {"a": 2, "b": 1}) == pytest.approx(0.8597186999)


def test_ndcg_counts_only_the_top_k_and_ignores_non_relevant_judgements() -> None:
    ranking = [f"x{i}" for i in range(10)] + ["a"]
    assert ndcg_at_k(ranking, {"a": 1}) == 0.0
    assert ndcg_at_k(["a"], {"a": 1, "z": 0}) == pytest.approx(1.0)  # a 0 adds no ideal gain


def test_nothing_relevant_retrieved_scores_zero() -> None:
    assert ndcg_at_k(["x", "y"], {"a": 1}) == 0.0
    assert recall_at_k(["x", "y"], {"a": 1}) == 0.0
    assert ndcg_at_k([], {"a": 1}) == 0.0
    assert ndcg_at_k(["a"], {"a": 0}) == 0.0  # no relevant document at all


def test_recall_at_k() -> None:
    qrels = {"a": 1, "b": 2, "c": 1, "d": 0}
    assert recall_at_k(["a", "x", "c", "d"], qrels) == pytest.approx(2 / 3)
    assert recall_at_k(["x", "a", "c"], qrels, k=2) == pytest.approx(1 / 3)


def test_chunks_become_a_document_ranking() -> None:
    by_uuid = {"u1": "d1", "u2": "d2", "u3": "d3"}
    hits = ["u2", "u2", "zz", "u1", "u3", "u2"]
    assert rank_documents(hits, by_uuid) == ["d2", "d1", "d3"]
    assert rank_documents(hits, by_uuid, exclude="d1") == ["d2", "d3"]


def test_percentile_interpolates() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) == 0.0


# -- loading --------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _beir(
    folder: Path,
    corpus: list[dict[str, Any]],
    queries: list[dict[str, Any]],
    qrels: list[tuple[str, str, int]],
) -> Path:
    (folder / "qrels").mkdir(parents=True)
    _jsonl(folder / "corpus.jsonl", corpus)
    _jsonl(folder / "queries.jsonl", queries)
    rows = "".join(f"{q}\t{c}\t{s}\n" for q, c, s in qrels)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return _beir(
        tmp_path / "tiny",
        [{"_id": "d1", "title": "One", "text": "first"}, {"_id": 2, "text": "second"}],
        [
            {"_id": "q1", "text": "first?"},
            {"_id": "q2", "text": "unjudged"},
            {"_id": 3, "text": "x"},
        ],
        [("q1", "d1", 1), ("3", "2", 2), ("3", "d1", 0)],
    )


def test_load_a_beir_folder(tiny: Path) -> None:
    dataset = load_beir(tiny)
    assert dataset.name == "tiny"
    assert dataset.corpus == (tiny / "corpus.jsonl").resolve()
    assert dataset.corpus_ids == ("d1", "2")
    assert [(q.id, q.text, dict(q.qrels)) for q in dataset.queries] == [
        ("q1", "first?", {"d1": 1}),
        ("3", "x", {"2": 2, "d1": 0}),
    ]  # q2 has no qrels: not evaluated


def test_a_malformed_qrels_line_is_a_clear_error(tiny: Path) -> None:
    with (tiny / "qrels" / "test.tsv").open("a") as f:
        f.write("q1\td1\thigh\n")
    with pytest.raises(EvalError, match=r"test\.tsv:5: score 'high' is not an integer"):
        load_beir(tiny)
    (tiny / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1 d1 1\n")
    with pytest.raises(EvalError, match=r"test\.tsv:2: expected 3 tab-separated columns"):
        load_beir(tiny)


def test_other_bad_folders_are_clear_errors(tiny: Path) -> None:
    with pytest.raises(EvalError, match="not a folder"):
        load_beir(tiny / "nope")
    qrels = tiny / "qrels" / "test.tsv"
    judged = qrels.read_text()
    qrels.write_text(judged + "q9\td1\t1\n")
    with pytest.raises(EvalError, match=r"query ids not in queries\.jsonl: 'q9'"):
        load_beir(tiny)
    qrels.write_text(judged)
    with (tiny / "corpus.jsonl").open("a") as f:
        f.write('{"_id": "d3", "text": "broken"\n')
    with pytest.raises(EvalError, match=r"corpus\.jsonl:3: not valid JSON"):
        load_beir(tiny)
    (tiny / "queries.jsonl").unlink()
    with pytest.raises(EvalError, match=r"missing .*queries\.jsonl"):
        load_beir(tiny)


# -- end to end -----------------------------------------------------------------------------

CORPUS = {
    "volcano": ("Volcanoes", "magma rises through the crust and erupts as lava and ash"),
    "bread": ("Sourdough", "a starter of wild yeast leavens the dough before baking the loaf"),
    "chess": ("Chess openings", "the queen gambit offers a pawn for control of the centre"),
    "bees": ("Honeybees", "worker bees gather nectar and pollen and make honey in the hive"),
    "tides": ("Tides", "the moon pulls the oceans so the sea rises and falls twice daily"),
    "violin": ("Violins", "a bow of horsehair draws sound from four strings of the violin"),
    "glacier": ("Glaciers", "compacted snow turns to ice that flows slowly down the valley"),
    "compost": ("Compost", "kitchen scraps and leaves rot into rich soil for the garden"),
    "comet": ("Comets", "an icy nucleus grows a glowing tail near the sun"),
    "origami": ("Origami", "folding paper squares into cranes without cuts or glue"),
    "coffee": ("Coffee roasting", "green beans roasted until the first crack release aroma"),
    "lighthouse": ("Lighthouses", "a rotating lamp and lens warn ships away from rocks"),
}
QUERIES = {
    "q-lava": ("magma erupts as lava", {"volcano": 1}),
    "q-honey": ("bees make honey", {"bees": 2, "compost": 1}),
    "q-violin": ("strings of the violin bow", {"violin": 1}),
    "q-paper": ("folding paper cranes", {"origami": 1}),
}


@pytest.fixture
def fictional(tmp_path: Path) -> Path:
    return _beir(
        tmp_path / "fictional",
        [{"_id": k, "title": t, "text": x} for k, (t, x) in CORPUS.items()],
        [{"_id": q, "text": t} for q, (t, _) in QUERIES.items()],
        [(q, doc, score) for q, (_, rel) in QUERIES.items() for doc, score in rel.items()],
    )


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(Settings(home=tmp_path / "home"), embedder=FakeHashEmbedder())
    yield rt
    rt.close()


def test_end_to_end_on_a_fictional_dataset(runtime: Runtime, fictional: Path) -> None:
    report = evaluate(runtime, fictional, "dense")
    assert (report.dataset, report.mode, report.queries) == ("fictional", "dense", 4)
    assert report.documents == 12 and report.chunks >= 12 and report.failed_documents == 0
    assert 0.5 < report.ndcg_at_10 <= 1.0
    assert 0.0 <= report.recall_at_100 <= 1.0
    assert report.ingest_seconds > 0 and 0 < report.query_p50_ms <= report.query_p95_ms
    data = report.to_json()
    assert set(data) >= {"ndcg@10", "recall@100", "query_p50_ms", "query_p95_ms"}

    # Another mode reuses the ingest: nothing is embedded again.
    seen: list[int] = []
    again = evaluate(runtime, fictional, "keyword", progress=lambda _s, r: seen.append(r.upserted))
    assert seen and seen[-1] == 0
    assert again.mode == "keyword" and again.documents == 12
    assert 0.0 <= again.ndcg_at_10 <= 1.0


def test_limit_queries(runtime: Runtime, fictional: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = evaluate(
        runtime, fictional, "dense", limit_queries=2, on_query=lambda d, t: calls.append((d, t))
    )
    assert report.queries == 2 and calls == [(1, 2), (2, 2)]
    with pytest.raises(EvalError, match="at least 1"):
        evaluate(runtime, fictional, "dense", limit_queries=0)


def test_a_home_with_other_sources_is_refused(runtime: Runtime, fictional: Path) -> None:
    runtime.add_source(SourceSpec(name="drive", kind="filesystem", config={"root": str(fictional)}))
    with pytest.raises(EvalError, match="other sources"):
        evaluate(runtime, fictional, "dense")


# -- the command ----------------------------------------------------------------------------


def test_the_mode_choices_are_the_runtime_modes() -> None:
    assert tuple(ModeChoice) == SEARCH_MODES


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(eval_app, name="eval")
    return app


def test_eval_beir_command(
    fictional: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        eval_cli,
        "_open_runtime",
        lambda home: Runtime(Settings(home=home), embedder=FakeHashEmbedder()),
    )
    home = tmp_path / "kept"
    args = ["eval", "beir", str(fictional), "--json", "--mode", "dense", "--home", str(home)]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dataset"] == "fictional" and data["mode"] == "dense" and data["queries"] == 4
    assert data["ndcg@10"] > 0.5 and (home / "store.sqlite3").exists()

    human = CliRunner().invoke(_cli(), ["eval", "beir", str(fictional), "--limit-queries", "1"])
    assert human.exit_code == 0, human.output
    assert "nDCG@10" in human.stdout and "over 1 queries" in human.stdout


def test_eval_beir_errors_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), ["eval", "beir", str(tmp_path / "nope"), "--json"])
    assert result.exit_code == 1
    assert "not a folder" in json.loads(result.stdout)["error"]
