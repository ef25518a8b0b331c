"""Command-line side of context routing: agents, keys, context, bundles, documents, audit."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from context_server.agents import agent_schema, load_agent_file
from context_server.console import JsonOpt, backend_session, err, fail, out, print_json
from context_server.errors import SpecError
from context_server.settings import Settings

agents_app = typer.Typer(no_args_is_help=True, help="Declared agents (one YAML file each).")
keys_app = typer.Typer(no_args_is_help=True, help="API keys for agents and users.")
bundles_app = typer.Typer(no_args_is_help=True, help="Served context bundles (provenance).")
documents_app = typer.Typer(no_args_is_help=True, help="Indexed documents.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit log of context requests.")


# -- agents --------------------------------------------------------------------------------


@agents_app.command("list")
def agents_list(as_json: JsonOpt = False) -> None:
    """Agents in the agents directory, with versions; files that do not validate."""
    with backend_session(as_json) as backend:
        listing = backend.list_agents()
    if as_json:
        print_json(listing)
        return
    out.print(f"agents in {listing['directory']}")
    table = Table("name", "acting as", "sources", "serves", "budget", "version")
    for a in listing["agents"]:
        table.add_row(
            a["name"],
            a["acting_as"],
            ", ".join(a["sources"]),
            ", ".join(a["serves"]),
            str(a["budget_tokens"]),
            a["version"][:12],
        )
    out.print(table)
    for bad in listing["invalid"]:
        err.print(f"[red]invalid[/red] {escape(bad['error'])}")
    if listing["invalid"]:
        raise typer.Exit(1)


@agents_app.command("validate")
def agents_validate(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Agent files; the agents directory if none.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate agent files; exit 1 if any is invalid."""
    if not files:
        try:
            directory = Settings().agents_path
        except ValueError as exc:
            fail(f"bad setting: {exc}", as_json)
        files = sorted(p for p in directory.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
        if not files:
            fail(f"no agent files (*.yaml) in {directory}", as_json)
    results: list[dict[str, Any]] = []
    for path in files:
        try:
            agent = load_agent_file(path)
            results.append({"path": str(path), "valid": True, "name": agent.spec.name})
        except SpecError as exc:
            results.append({"path": str(path), "valid": False, "error": str(exc)})
    if as_json:
        print_json({"files": results})
    else:
        for r in results:
            if r["valid"]:
                out.print(f"[green]ok[/green] {r['path']} ({r['name']})")
            else:
                err.print(f"[red]invalid[/red] {escape(r['error'])}")
    if not all(r["valid"] for r in results):
        raise typer.Exit(1)


@agents_app.command("schema")
def agents_schema() -> None:
    """Print the agent file's JSON Schema."""
    print_json(agent_schema())


# -- keys ----------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    agent: Annotated[str | None, typer.Option(help="The agent the key acts as.")] = None,
    user: Annotated[str | None, typer.Option(help="The user it acts for: user:NAME.")] = None,
    label: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a key for an agent or a user. The key is printed once; store it now."""
    if (agent is None) == (user is None):
        fail("give exactly one of --agent NAME or --user user:NAME", as_json)
    with backend_session(as_json) as backend:
        if agent is not None:
            created = backend.create_key("agent", agent, label)
        else:
            assert user is not None
            created = backend.create_key("user", user, label)
    if as_json:
        print_json(created)
        return
    out.print(f"key {created['id']} for {created['kind']} {created['subject']}:")
    out.print(created["key"])
    err.print("it is shown only this once; `keys revoke ID` disables it")


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """Keys (never their secrets), with last use and revocation."""
    with backend_session(as_json) as backend:
        keys = backend.list_keys()
    if as_json:
        print_json({"keys": keys})
        return
    table = Table("id", "kind", "subject", "label", "created", "last used", "revoked")
    for k in keys:
        table.add_row(
            k["id"],
            k["kind"],
            k["subject"],
            k["label"],
            k["created_at"][:19],
            (k["last_used_at"] or "")[:19],
            (k["revoked_at"] or "")[:19],
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (`keys list`).")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key: it is refused from the next request on."""
    with backend_session(as_json) as backend:
        revoked = backend.revoke_key(key_id)
    if as_json:
        print_json(revoked)
    else:
        out.print(f"key {revoked['id']} revoked at {revoked['revoked_at']}")


# -- context, bundles, documents -----------------------------------------------------------


def context(
    query: Annotated[str, typer.Argument(help="What the agent needs context for.")],
    agent: Annotated[str, typer.Option(help="The declared agent.")],
    on_behalf_of: Annotated[str, typer.Option(help="The user it acts for: user:NAME.")],
    budget: Annotated[
        int | None, typer.Option(min=1, help="Token budget (default: the agent's).")
    ] = None,
    source: Annotated[
        list[str] | None, typer.Option(help="Narrow to this source (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Assemble cited context for an agent run, as the admin; the bundle is stored."""
    with backend_session(as_json) as backend:
        bundle = backend.context(agent, on_behalf_of, query, budget, source)
    if as_json:
        print_json(bundle)
        return
    out.print(
        f"bundle [bold]{bundle['bundle_id']}[/bold]: {len(bundle['items'])} items, "
        f"{bundle['used_tokens']}/{bundle['budget_tokens']} tokens"
    )
    for i, item in enumerate(bundle["items"], 1):
        c = item["citation"]
        out.print(
            f"[bold][{i}] {escape(c['title'])}[/bold] ({c['source']} v{c['version']}, "
            f"{item['tokens']} tokens) {c['url'] or ''}"
        )
        text = " ".join(item["text"].split())
        out.print(f"    {escape(text[:240])}{'…' if len(text) > 240 else ''}")


AsViewer = Annotated[
    str | None,
    typer.Option(
        "--as", help="Show it as this user (user:NAME) would: what they may not read is left out."
    ),
]


@bundles_app.command("show")
def bundles_show(
    bundle_id: Annotated[str, typer.Argument(help="The bundle id.")],
    as_: AsViewer = None,
    as_json: JsonOpt = False,
) -> None:
    """A stored bundle: items, versions, ACLs, principals, agent version."""
    with backend_session(as_json) as backend:
        bundle = backend.bundle(bundle_id, as_)
    if as_json:
        print_json(bundle)
        return
    out.print(
        f"bundle {bundle['bundle_id']} · agent {bundle['agent']} "
        f"({bundle['agent_version'][:12]}) for {bundle['on_behalf_of']} · {bundle['created_at']}"
    )
    out.print(f"query: {escape(bundle['query'] or '(withheld)')}")
    if bundle["withheld_items"]:
        out.print(f"{bundle['withheld_items']} item(s) withheld: not readable by the viewer")
    for i, item in enumerate(bundle["items"], 1):
        c = item["citation"]
        out.print(f"[{i}] {escape(c['title'])} v{c['version']} · {c['document_id']}")


@bundles_app.command("check")
def bundles_check(
    bundle_id: Annotated[str, typer.Argument(help="The bundle id.")],
    as_: AsViewer = None,
    as_json: JsonOpt = False,
) -> None:
    """Whether each served item changed, was deleted or lost its access since."""
    with backend_session(as_json) as backend:
        report = backend.check_bundle(bundle_id, as_)
    if as_json:
        print_json(report)
    else:
        for item in report["items"]:
            colour = "green" if item["status"] == "unchanged" else "yellow"
            title = "(redacted)" if item["redacted"] else item["title"]
            out.print(f"[{colour}]{item['status']}[/{colour}] {escape(title)}")
        out.print("stale" if report["stale"] else "all items current")


@documents_app.command("show")
def documents_show(
    document_id: Annotated[str, typer.Argument(help="The document id.")],
    agent: Annotated[str | None, typer.Option(help="Read through this agent.")] = None,
    on_behalf_of: Annotated[str | None, typer.Option(help="Read as this user.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A document and its chunks, scoped like context when --agent/--on-behalf-of given."""
    with backend_session(as_json) as backend:
        document = backend.document(document_id, agent, on_behalf_of)
    if as_json:
        print_json(document)
        return
    out.print(f"[bold]{escape(document['title'])}[/bold] ({document['source']})")
    out.print(f"version {document['version']} · updated {document['updated_at']}")
    for chunk in document["chunks"]:
        out.print(f"--- chunk {chunk['ordinal']} · {chunk['section'] or ''}")
        out.print(escape(chunk["text"]))


# -- audit ---------------------------------------------------------------------------------


@audit_app.command("export")
def audit_export(
    since: Annotated[
        str | None, typer.Option(help="ISO date/time, or a duration back from now (7d).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="ISO date/time, or a duration.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write audit events as JSON lines, oldest first. With --output and --json, print a
    summary object."""
    count = 0
    with backend_session(as_json) as backend:
        target = output.open("w", encoding="utf-8") if output else sys.stdout
        try:
            for event in backend.audit_export(since, until):
                target.write(json.dumps(event) + "\n")
                count += 1
        finally:
            if output:
                target.close()
    if output is not None:
        if as_json:
            print_json({"events": count, "path": str(output)})
        else:
            err.print(f"{count} events written to {output}")


# -- connectors ----------------------------------------------------------------------------

connectors_app = typer.Typer(no_args_is_help=True, help="Connector kinds.")


@connectors_app.command("list")
def connectors_list(as_json: JsonOpt = False) -> None:
    """Every registered connector kind, with its config's JSON Schema."""
    from connectors import registry
    from connectors.errors import ConnectorError

    kinds = []
    for kind in registry.kinds():
        try:
            cls = registry.connector_class(kind)
            schema = cls.config_model.model_json_schema()
            kinds.append(
                {"kind": kind, "config_schema": schema, "doc": (cls.__doc__ or "").strip()}
            )
        except (ConnectorError, ImportError, AttributeError) as exc:
            kinds.append({"kind": kind, "error": f"cannot load: {exc}"})
    if as_json:
        print_json({"connectors": kinds})
        return
    for k in kinds:
        if "error" in k:
            err.print(f"[red]{k['kind']}[/red]: {escape(k['error'])}")
            continue
        options = ", ".join(k["config_schema"].get("properties", {}))
        out.print(f"[bold]{k['kind']}[/bold]: {options}")
