"""`context-server demo`: ingest the fictional organization in demo/ and say what to try."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from context_server.agents import load_agent_file
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
    agents = install_agents(directory / "agents", settings.agents_path)
    backend = connect(settings)
    try:
        counts = backend.load_principals(load_principals_spec(principals))
        for path in sources:
            backend.add_source(load_source_spec(path), path.resolve().parent)
        runs = backend.sync(None, progress)
    finally:
        backend.close()
    return {"principals": counts, "agents": agents, "runs": runs}


def install_agents(source: Path, target: Path) -> list[str]:
    """Copy the demo's agent files into the agents directory (replacing same-named ones,
    which keeps the demo reproducible); other files there are left alone."""
    names = []
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yaml")):
        load_agent_file(path)  # a broken demo agent is a bug: fail loudly
        shutil.copyfile(path, target / path.name)
        names.append(path.stem)
    return names


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
    console.print("\n  Context for an agent run, cited and packed into its token budget:\n")
    for line in (
        f"{command} context 'What is the 2027 marketing budget?' "
        "--agent finance-assistant --on-behalf-of user:alice",
        f"{command} context 'What is the 2027 marketing budget?' "
        "--agent finance-assistant --on-behalf-of user:dana",
        f"{command} keys create --agent helpdesk   # then POST /v1/context with the key",
    ):
        console.print(f"  [cyan]{escape(line)}[/cyan]")
    console.print("\n  An agent run, reviewed by a human before its answer ships:\n")
    question = json.dumps({"question": "How many vacation days do I get?"})
    for line in (
        f"{command} agents run policy-answerer --on-behalf-of user:carol --input '{question}'",
        f"{command} worker --until-idle   # `serve` works through runs by itself",
        f"{command} review list --state pending",
        f"{command} review show REVIEW_ID --as user:dan",
        f"{command} review approve REVIEW_ID --as user:dan   # writes <data dir>/outbox/",
    ):
        console.print(f"  [cyan]{escape(line)}[/cyan]")
    console.print(
        f"\n  Data dir: {settings.home.resolve()}  ·  "
        f"add --json to any command for machine-readable output"
    )
    if serving:
        console.print(
            f"\n  API: {url}/healthz  ·  OpenAPI: {url}/docs  ·  MCP: {url}/mcp\n"
            f"  Review pages: {url}/ui (log in with a key from "
            f"`{command} keys create --user user:dan`)\n"
            f"  CLI commands go through the server while it runs (Ctrl-C to stop)\n"
        )
