"""Terminal output shared by the command-line modules: consoles, errors, JSON, progress text.

Human output goes to stdout, progress and errors to stderr, so ``--json`` output stays clean.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from indexing.pipeline import SyncReport

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
