"""Terminal output shared by the command-line modules: consoles, errors, JSON, progress text.

Human output goes to stdout, progress and errors to stderr, so ``--json`` output stays clean.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from connectors.errors import ConnectorError
from context_server.client import Backend, connect
from context_server.errors import ContextServerError
from context_server.settings import Settings
from indexing.errors import IndexingError
from indexing.pipeline import SyncReport

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str, as_json: bool) -> NoReturn:
    """Report ``message`` (as ``{"error": …}`` for scripts) and exit with status 1."""
    if as_json:
        print(json.dumps({"error": message}))
    else:
        err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def sync_status(r: SyncReport) -> str:
    """One line of sync progress."""
    return (
        f"seen {r.documents_seen} · new/changed {r.upserted} · unchanged {r.unchanged} · "
        f"deleted {r.deleted} · failed {r.failed} · chunks {r.chunks_embedded}"
    )


@contextmanager
def domain_errors(as_json: bool) -> Iterator[None]:
    """Turn every domain error into a clear message and exit status 1."""
    try:
        yield
    except (ContextServerError, ConnectorError, IndexingError) as exc:
        fail(str(exc), as_json)
    except ValueError as exc:  # settings from the environment, bad input
        fail(f"bad setting or input: {exc}", as_json)


@contextmanager
def backend_session(as_json: bool) -> Iterator[Backend]:
    """Connect (through a running `serve`, else in-process); errors as ``domain_errors``."""
    backend: Backend | None = None
    with domain_errors(as_json):
        try:
            backend = connect(Settings())
            yield backend
        finally:
            if backend is not None:
                backend.close()
