"""``context-server eval``: retrieval quality on public benchmarks (``eval beir DIR``).

``eval_app`` is added to the main command line in cli.py. Each run ingests the benchmark into
a data directory of its own — a temporary one, or ``--home`` to keep the index so that
several modes reuse one ingest — never the configured server's.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from connectors.errors import ConnectorError
from context_server.console import err, fail, out, sync_status
from context_server.errors import ContextServerError
from context_server.settings import Settings
from indexing.errors import IndexingError
from indexing.pipeline import SyncReport

if TYPE_CHECKING:
    from context_server.evaluation import EvalReport
    from context_server.runtime import Runtime

eval_app = typer.Typer(no_args_is_help=True, help="Measure retrieval quality on benchmarks.")


class ModeChoice(StrEnum):
    """``runtime.SEARCH_MODES`` as command-line choices."""

    dense = "dense"
    keyword = "keyword"
    hybrid = "hybrid"


@dataclass(frozen=True)
class _Reporters:
    sync: Callable[[str, SyncReport], None] | None = None
    query: Callable[[int, int], None] | None = None


@contextmanager
def _progress(enabled: bool) -> Iterator[_Reporters]:
    """Ingest and query progress on stderr (stdout stays clean for --json)."""
    if not enabled:
        yield _Reporters()
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
    ) as bar:
        tasks: dict[str, Any] = {}

        def sync(source: str, r: SyncReport) -> None:
            if "ingest" not in tasks:
                tasks["ingest"] = bar.add_task(f"ingest {source}", total=None, status="")
            bar.update(
                tasks["ingest"],
                status=sync_status(r),
            )

        def query(done: int, total: int) -> None:
            if "queries" not in tasks:
                tasks["queries"] = bar.add_task("queries", total=total, status="")
            bar.update(tasks["queries"], completed=done, status=f"{done}/{total}")

        yield _Reporters(sync, query)


def _open_runtime(home: Path) -> Runtime:
    from context_server.runtime import Runtime

    # Arguments beat the environment: an evaluation replaces group memberships, so it must
    # never reach a store or index that CONTEXT_SERVER_DATABASE_URL / _QDRANT_URL name.
    # Model, batch and chunking settings still come from the environment, to be compared.
    settings = Settings(home=home, database_url=None, qdrant_url=None, qdrant_api_key=None)
    return Runtime(settings)


def _summary(report: EvalReport) -> str:
    return (
        f"[bold]{escape(report.dataset)}[/bold] ({report.mode}): "
        f"nDCG@10 [bold]{report.ndcg_at_10:.4f}[/bold] · "
        f"recall@100 [bold]{report.recall_at_100:.4f}[/bold] over {report.queries} queries\n"
        f"{report.documents} documents, {report.chunks} chunks"
        + (f", {report.failed_documents} failed" if report.failed_documents else "")
        + f"; ingest {report.ingest_seconds:.1f}s; "
        f"query p50 {report.query_p50_ms:.1f} ms, p95 {report.query_p95_ms:.1f} ms"
    )


@eval_app.command("beir")
def beir(
    directory: Annotated[
        Path,
        typer.Argument(help="A BEIR dataset folder: corpus.jsonl, queries.jsonl, qrels/test.tsv."),
    ],
    mode: Annotated[
        ModeChoice, typer.Option(help="dense (embeddings), keyword (BM25) or hybrid (both).")
    ] = ModeChoice.hybrid,
    limit_queries: Annotated[
        int | None, typer.Option("--limit-queries", min=1, help="Only the first N judged queries.")
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(
            help="Data directory kept between runs, so that other modes reuse the ingest "
            "(default: a temporary one). Not a server's: its groups are replaced."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object for scripts.")
    ] = False,
) -> None:
    """nDCG@10 and recall@100 of search over a BEIR dataset, with ingest and query timings."""
    from context_server.evaluation import evaluate

    kept = home
    try:
        with ExitStack() as stack:
            if home is None:
                home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cs-eval-")))
            runtime = _open_runtime(home)
            stack.callback(runtime.close)  # before the temporary folder goes (LIFO)
            reporters = stack.enter_context(_progress(sys.stderr.isatty()))
            report = evaluate(
                runtime,
                directory,
                mode.value,
                limit_queries=limit_queries,
                progress=reporters.sync,
                on_query=reporters.query,
            )
    except (ContextServerError, ConnectorError, IndexingError) as exc:
        fail(str(exc), as_json)
    except ValueError as exc:  # settings from the environment
        fail(f"bad setting: {exc}", as_json)
    if report.failed_documents:
        hint = f" (CONTEXT_SERVER_HOME={kept} context-server sources failures beir)" if kept else ""
        err.print(
            f"[yellow]warning:[/yellow] {report.failed_documents} corpus documents could not "
            f"be indexed{escape(hint)}"
        )
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        out.print(_summary(report))
