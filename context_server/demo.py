"""`context-server demo`: ingest the fictional organization in demo/ and say what to try."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from context_server.client import ProgressFn, connect
from context_server.errors import SpecError
from context_server.settings import Settings
from context_server.specs import load_principals_spec, load_source_spec, read_yaml


def run_demo(settings: Settings, directory: Path, progress: ProgressFn | None) -> dict[str, Any]:
    """Load the demo's principals and sources and sync them (through a server if one runs)."""
    principals = directory / "principals.yaml"
    sources = sorted((directory / "sources").glob("*.yaml"))
    if not principals.exists() or not sources:
        raise SpecError(f"{directory} is not a demo organization (principals.yaml, sources/)")
    backend = connect(settings)
    try:
        counts = backend.load_principals(load_principals_spec(principals))
        for path in sources:
            backend.add_source(load_source_spec(path), path.resolve().parent)
        runs = backend.sync(None, progress)
    finally:
        backend.close()
    return {"principals": counts, "runs": runs}


def questions(directory: Path) -> list[dict[str, Any]]:
    path = directory / "questions.yaml"
    data = read_yaml(path) if path.exists() else []
    items = data.get("questions", data) if isinstance(data, dict) else data
    return [q for q in items if isinstance(q, dict) and "query" in q and "as" in q]


def _command() -> str:
    """How the user should type our command: bare when it is on PATH, else its path."""
    ours = Path(sys.argv[0]).resolve()
    found = shutil.which("context-server")
    if found and Path(found).resolve() == ours:
        return "context-server"
    try:
        return str(ours.relative_to(Path.cwd()))
    except ValueError:
        return str(ours)


def print_try(console: Console, settings: Settings, directory: Path, serving: bool) -> None:
    url = f"http://{settings.host}:{settings.port}"
    command = _command()
    console.print("\n[bold green]The demo organization is indexed.[/bold green] Try:\n")
    for q in questions(directory)[:8]:
        line = f"{command} search {q['query']!r} --as {q['as']}"
        console.print(f"  [cyan]{escape(line)}[/cyan]")
        if q.get("why"):
            console.print(f"      [dim]{escape(str(q['why']))}[/dim]")
    console.print(
        f"\n  Data dir: {settings.home.resolve()}  ·  "
        f"add --json to any command for machine-readable output"
    )
    if serving:
        console.print(
            f"\n  API: {url}/healthz  ·  OpenAPI: {url}/docs  ·  "
            f"CLI commands go through the server while it runs (Ctrl-C to stop)\n"
        )
