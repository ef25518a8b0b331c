"""The ``context-server`` command line. Every reporting command takes ``--json``.

Commands reach the system through a running `serve` when there is one (it owns the
embedded index), else they open it themselves (context_server/client.py).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from connectors.errors import ConnectorError
from context_server.client import RemoteBackend, ServerInfo, running_server, write_server_file
from context_server.console import (
    JsonOpt,
    backend_session,
    err,
    fail,
    out,
    print_json,
    sync_status,
)
from context_server.context_cli import (
    agents_app,
    audit_app,
    bundles_app,
    connectors_app,
    context,
    documents_app,
    keys_app,
)
from context_server.errors import ContextServerError
from context_server.eval_cli import eval_app
from context_server.review_cli import agents_run, progress_line, review_app, runs_app
from context_server.runtime import SEARCH_MODES
from context_server.settings import Settings
from context_server.specs import load_principals_spec, load_source_spec
from indexing.errors import IndexingError
from indexing.pipeline import SyncReport

app = typer.Typer(no_args_is_help=True, help="Organizational context server for AI agents.")
sources_app = typer.Typer(no_args_is_help=True, help="Configure sources.")
principals_app = typer.Typer(no_args_is_help=True, help="Users, groups and memberships.")
app.add_typer(sources_app, name="sources")
app.add_typer(principals_app, name="principals")
app.add_typer(eval_app, name="eval")
app.add_typer(agents_app, name="agents")
app.add_typer(keys_app, name="keys")
app.add_typer(bundles_app, name="bundles")
app.add_typer(documents_app, name="documents")
app.add_typer(audit_app, name="audit")
app.add_typer(connectors_app, name="connectors")
app.add_typer(runs_app, name="runs")
app.add_typer(review_app, name="review")
app.command()(context)
agents_app.command("run")(agents_run)


DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"


# -- sources -------------------------------------------------------------------------------


@sources_app.command("add")
def sources_add(
    file: Annotated[Path, typer.Argument(help="A source YAML file.")], as_json: JsonOpt = False
) -> None:
    """Add a source (or replace the one of the same name) from a YAML file."""
    with backend_session(as_json) as backend:
        spec = load_source_spec(file)
        info = backend.add_source(spec, file.resolve().parent)
    if as_json:
        print_json(info)
    else:
        out.print(f"source [bold]{info['name']}[/bold] ({info['kind']}) saved; run `sync`")


@sources_app.command("list")
def sources_list(as_json: JsonOpt = False) -> None:
    """List sources with document counts and their last sync."""
    with backend_session(as_json) as backend:
        sources = backend.list_sources()
    if as_json:
        print_json({"sources": sources})
        return
    table = Table("name", "kind", "documents", "chunks", "last sync", "failed")
    for s in sources:
        run = s["last_sync"] or {}
        counts = run.get("counts") or {}
        table.add_row(
            s["name"],
            s["kind"],
            str(s["documents"]),
            str(s["chunks"]),
            f"{run.get('status', 'never')} {run.get('finished_at') or ''}",
            str(counts.get("failed", "")),
        )
    out.print(table)


@sources_app.command("status")
def sources_status(as_json: JsonOpt = False) -> None:
    """Each source's last run, counts, failures and next scheduled run."""
    with backend_session(as_json) as backend:
        sources = backend.list_sources()
    if as_json:
        print_json({"sources": sources})
        return
    table = Table(
        "name", "kind", "documents", "last run", "failed", "notes", "schedule", "next run"
    )
    for s in sources:
        run = s["last_sync"] or {}
        counts = run.get("counts") or {}
        last = f"{run.get('status', 'never')} {(run.get('finished_at') or '')[:19]}"
        if run.get("status") in ("interrupted", "failed") and run.get("error"):
            last += f"\n{escape(str(run['error']))}"
        notes = run.get("notes") or {}
        table.add_row(
            s["name"],
            s["kind"],
            str(s["documents"]),
            last,
            str(counts.get("failed", "")),
            ", ".join(f"{k} {v}" for k, v in sorted(notes.items())),
            s["schedule"] or "on demand",
            (s["next_run"] or "")[:19],
        )
    out.print(table)


@sources_app.command("failures")
def sources_failures(
    name: Annotated[str, typer.Argument(help="The source.")],
    reason: Annotated[str | None, typer.Option(help="Only this reason, e.g. corrupt.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Documents the source's last sync could not ingest, and why."""
    with backend_session(as_json) as backend:
        failures = [f for f in backend.failures(name) if reason in (None, f["reason"])]
    if as_json:
        print_json({"source": name, "failures": failures})
        return
    if not failures:
        out.print(f"no failures in the last sync of {name}")
    table = Table("document", "reason", "detail")
    for f in failures:
        table.add_row(f["external_id"], f["reason"], f["detail"])
    if failures:
        out.print(table)


# -- sync ----------------------------------------------------------------------------------


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, SyncReport], None] | None]:
    if not enabled:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(source: str, r: SyncReport) -> None:
            if source not in tasks:
                tasks[source] = bar.add_task(source, total=None, status="")
            bar.update(
                tasks[source],
                status=sync_status(r),
            )

        yield update


@app.command()
def sync(
    name: Annotated[str | None, typer.Argument(help="One source; all when omitted.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sync sources: new and changed documents are indexed, deleted ones removed.

    Exits 0 when the sync completed, even if some documents failed (they are listed).
    """
    with backend_session(as_json) as backend, _progress(not as_json and sys.stderr.isatty()) as p:
        runs = backend.sync(name, p)
    if as_json:
        print_json(runs[0] if name is not None and len(runs) == 1 else {"runs": runs})
    else:
        _print_runs(runs)
    if any(run["status"] != "completed" for run in runs):
        raise typer.Exit(1)


def _print_runs(runs: list[dict[str, Any]]) -> None:
    for run in runs:
        if run["status"] != "completed":
            err.print(f"[red]{run['source']}: sync failed:[/red] {escape(str(run['error']))}")
            continue
        out.print(
            f"[bold]{run['source']}[/bold]: {run['documents_seen']} seen, "
            f"{run['upserted']} indexed, {run['unchanged']} unchanged, "
            f"{run['acl_updated']} ACL-only, {run['deleted']} deleted, {run['failed']} failed, "
            f"{run['chunks_embedded']} chunks embedded in {run['seconds']:.2f}s"
        )
        notes = run.get("notes") or {}
        if notes:
            out.print("  notes: " + ", ".join(f"{k} {v}" for k, v in sorted(notes.items())))
        for f in run["failures"]:
            out.print(f"  [yellow]failed[/yellow] {f['external_id']}: {f['reason']} {f['detail']}")


# -- search --------------------------------------------------------------------------------


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    as_: Annotated[str, typer.Option("--as", help="The principal searching: user:NAME.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many results.")] = 5,
    mode: Annotated[
        str, typer.Option(help="hybrid (default), dense (embeddings) or keyword (BM25).")
    ] = "hybrid",
    as_json: JsonOpt = False,
) -> None:
    """Search as a principal: only chunks its ACLs grant are considered."""
    if mode not in SEARCH_MODES:
        fail(f"unknown mode {mode!r}; choose {', '.join(SEARCH_MODES)}", as_json)
    with backend_session(as_json) as backend:
        results = backend.search(query, as_, k, mode)
    if as_json:
        print_json({"results": results})
        return
    if not results:
        out.print(f"nothing {as_} may read matches")
    for i, r in enumerate(results, 1):
        out.print(f"[bold]{i}. {r['title']}[/bold]  ({r['source']}, score {r['score']:.3f})")
        out.print(f"   {r['url']}")
        text = " ".join(r["text"].split())
        out.print(f"   {text[:300]}{'…' if len(text) > 300 else ''}")


# -- principals ----------------------------------------------------------------------------


@principals_app.command("load")
def principals_load(
    file: Annotated[Path, typer.Argument(help="A principals YAML file.")], as_json: JsonOpt = False
) -> None:
    """Replace group memberships with the file's (groups may contain groups)."""
    with backend_session(as_json) as backend:
        counts = backend.load_principals(load_principals_spec(file))
    if as_json:
        print_json(counts)
    else:
        out.print(f"loaded {counts['groups']} groups, {counts['memberships']} memberships")


# -- serve and demo ------------------------------------------------------------------------


def _serve(settings: Settings) -> None:
    import uvicorn

    from context_server.api.app import create_app
    from context_server.runtime import Runtime

    info = running_server(settings)
    if info is not None:
        raise ContextServerError(f"a server already runs for {settings.home} at {info.url}")
    runtime = Runtime(settings)
    try:
        runtime.open_index()  # take ownership of the embedded index now, or fail clearly
        token = secrets.token_urlsafe(32)
        url = f"http://{settings.host}:{settings.port}"
        app_ = create_app(settings, runtime=runtime, admin_token=token)
        write_server_file(settings.server_file, ServerInfo(url=url, pid=os.getpid(), token=token))
        # The server owns the index, so it also runs the source schedules.
        stop = threading.Event()
        scheduler = threading.Thread(
            target=runtime.scheduler().loop, args=(stop,), name="scheduler", daemon=True
        )
        scheduler.start()
        # ... and, unless told not to, works through agent runs too.
        from context_server.worker import Worker

        for n in range(settings.run_workers):
            runs = Worker(runtime, worker_id=f"serve:{os.getpid()}:{n}")
            threading.Thread(target=runs.loop, args=(stop,), name=f"runs-{n}", daemon=True).start()
        try:
            uvicorn.run(app_, host=settings.host, port=settings.port, log_level="info")
        finally:
            stop.set()
            settings.server_file.unlink(missing_ok=True)
    finally:
        runtime.close()


@app.command()
def worker(
    once: Annotated[
        bool,
        typer.Option("--once", help="Do what is due now (syncs, runs), then exit (cron)."),
    ] = False,
    until_idle: Annotated[
        bool,
        typer.Option("--until-idle", help="Process agent runs until none is queued or running."),
    ] = False,
    runs_only: Annotated[
        bool,
        typer.Option(
            "--runs-only",
            help="Only agent runs, never source syncs (a scaled-out worker beside an API "
            "process that syncs).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Process agent runs, and sync scheduled sources when they fall due, until
    interrupted. With a `serve` running, the server syncs the sources and answers the
    workers' context requests; start as many workers as you like (PostgreSQL)."""
    from context_server.runtime import Runtime
    from context_server.worker import Worker, local_context

    remote: RemoteBackend | None = None
    try:
        settings = Settings()
        info = running_server(settings)
        runtime = Runtime(settings)
    except (ContextServerError, IndexingError) as exc:
        fail(str(exc), as_json)
    except ValueError as exc:
        fail(f"bad setting: {exc}", as_json)
    if info is not None:
        remote = RemoteBackend(info)  # the server owns the index: context comes from it
        context = lambda agent, user, query, budget: remote.context(  # noqa: E731
            agent, user, query, budget, None
        )
        runs = Worker(runtime, context)
    else:
        runs = Worker(runtime, local_context(runtime))
    try:
        if once or until_idle:
            syncs = []
            if once and info is None and not runs_only:
                syncs = [
                    {"source": s, "status": "failed" if e else "completed", "error": e}
                    for s, e in runtime.scheduler().run_due()
                ]
            if until_idle:
                progress = None if as_json or not sys.stderr.isatty() else progress_line
                processed = runs.until_idle(progress)["processed"]
            else:
                processed = 0
                while runs.step():
                    processed += 1
            report = {"syncs": syncs, "processed": processed, "pending": runs.queue.pending()}
            if as_json:
                print_json(report)
            else:
                for r in syncs:
                    out.print(f"{r['source']}: {r['status']} {r['error'] or ''}")
                out.print(f"{processed} agent runs processed, {report['pending']} pending")
            if any(r["error"] for r in syncs):
                raise typer.Exit(1)
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        threads = [threading.Thread(target=runs.loop, args=(stop,), name="runs", daemon=True)]
        syncing = info is None and not runs_only
        if syncing:
            threads.append(
                threading.Thread(
                    target=runtime.scheduler().loop, args=(stop,), name="syncs", daemon=True
                )
            )
        err.print(
            "worker: processing agent runs"
            + (" and syncing scheduled sources" if syncing else "")
            + (f" (context from {info.url})" if info is not None else "")
            + " (Ctrl-C to stop)"
        )
        for thread in threads:
            thread.start()
        with suppress(KeyboardInterrupt):
            while not stop.wait(0.5):
                pass
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        if remote is not None:
            remote.close()
        runtime.close()


@app.command()
def serve() -> None:
    """Serve the API (and own the embedded index) until interrupted."""
    try:
        _serve(Settings())
    except (ContextServerError, IndexingError) as exc:
        fail(str(exc), False)


@app.command("mcp-config")
def mcp_config(
    client: Annotated[
        str,
        typer.Option(help="claude-desktop, cursor, vscode or generic (type http, url, headers)."),
    ] = "generic",
    key: Annotated[
        str | None, typer.Option(help="Put this API key in the snippet (default: a placeholder).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print an MCP client configuration for this server's /mcp endpoint (see docs/mcp.md)."""
    from context_server.mcp_server import CLIENTS, config_json

    if client not in CLIENTS:
        fail(f"unknown client {client!r}: one of {', '.join(CLIENTS)}", as_json)
    try:
        settings = Settings()
    except ValueError as exc:
        fail(f"bad setting: {exc}", as_json)
    report = config_json(client, settings, key)
    print_json(report if as_json else report["config"])


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="The demo organization.")] = DEMO_DIR,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Ingest, then exit.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest the fictional organization shipped in demo/, print what to try, and serve."""
    from context_server.demo import run_demo

    settings = Settings()
    try:
        with _progress(not as_json and sys.stderr.isatty()) as progress:
            report = run_demo(settings, directory, progress)
    except (ContextServerError, ConnectorError, IndexingError) as exc:
        fail(str(exc), as_json)
    if as_json:
        print_json(report)
    else:
        from context_server.demo import print_try

        _print_runs(report["runs"])
        print_try(out, settings, directory, serving=not no_serve)
    if not no_serve:
        serve()


def main() -> None:
    app()
