"""Command-line side of the runner and the review queue: `agents run`, `runs …`, `review …`.

These commands work on the store alone (runs and reviews never touch the vector index), so
they run beside a `serve` as well as without one. The command line is trusted like the
admin token: it names the deciding user with ``--as``, and that user must be an approver.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from context_server.audit import parse_time
from context_server.console import JsonOpt, domain_errors, err, fail, out, print_json
from context_server.durations import parse_duration
from context_server.errors import SpecError
from context_server.keys import ADMIN
from context_server.review import ReviewDesk
from context_server.runs import RUN_STATES, RunQueue, manual_run
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.viewer import Viewer, Views

runs_app = typer.Typer(no_args_is_help=True, help="Agent runs: the queue and its records.")
review_app = typer.Typer(no_args_is_help=True, help="The review queue: look, decide, ship.")

AsOpt = Annotated[str, typer.Option("--as", help="The deciding user: user:NAME.")]
ViewAs = Annotated[
    str | None,
    typer.Option("--as", help="Show it as this user (user:NAME) would see it."),
]
CommentOpt = Annotated[str, typer.Option(help="A note kept with the decision.")]


@contextmanager
def store_session(as_json: bool) -> Iterator[Runtime]:
    """The store (no index); errors as ``console.domain_errors``."""
    runtime: Runtime | None = None
    with domain_errors(as_json):
        try:
            runtime = Runtime(Settings())
            yield runtime
        finally:
            if runtime is not None:
                runtime.close()


def agents_run(
    name: Annotated[str, typer.Argument(help="The agent.")],
    on_behalf_of: Annotated[
        str | None, typer.Option(help="The user it acts for (default: its owner).")
    ] = None,
    input_: Annotated[
        str | None, typer.Option("--input", help='JSON object, e.g. \'{"question": "..."}\'.')
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a manual run; a worker (`worker`, or `serve`) does it, and its output waits
    in the review queue."""
    data: dict[str, Any] = {}
    if input_ is not None:
        try:
            data = json.loads(input_)
        except json.JSONDecodeError as exc:
            fail(f"--input is not JSON: {exc}", as_json)
        if not isinstance(data, dict):
            fail("--input must be a JSON object", as_json)
    with store_session(as_json) as runtime:
        queued = manual_run(runtime, ADMIN, name, on_behalf_of, data)
    if as_json:
        print_json({"run_id": queued["run_id"]})
    else:
        out.print(f"run {queued['run_id']} queued; `context-server worker --until-idle` runs it")


# -- runs ----------------------------------------------------------------------------------


@runs_app.command("list")
def runs_list(
    state: Annotated[str | None, typer.Option(help="queued, running, succeeded…")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_: ViewAs = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent runs, newest first."""
    with store_session(as_json) as runtime:
        if state is not None and state not in RUN_STATES:
            raise SpecError(f"unknown run state {state!r}; known: {', '.join(RUN_STATES)}")
        runs = Views(runtime).list_runs(Viewer.parse(as_), state, agent, limit)
    if as_json:
        print_json({"runs": runs})
        return
    table = Table("run", "agent", "state", "trigger", "for", "attempts", "created", "error")
    for r in runs:
        table.add_row(
            r["run_id"][:8],
            r["agent"],
            r["state"],
            r["trigger_kind"],
            r["on_behalf_of"] or "",
            f"{r['attempts']}/{r['max_attempts']}",
            (r["created_at"] or "")[:19],
            escape((r["error"] or "")[:60]),
        )
    out.print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    as_: ViewAs = None,
    as_json: JsonOpt = False,
) -> None:
    """One run: trigger, input, query, bundle, harness input and output, attempts."""
    with store_session(as_json) as runtime:
        run = Views(runtime).show_run(run_id, Viewer.parse(as_))
    if as_json:
        print_json(run)
        return
    out.print(f"run {run['run_id']} · {run['agent']} · [bold]{run['state']}[/bold]")
    out.print(
        f"trigger {run['trigger_kind']} · for {run['on_behalf_of']} · bundle {run['bundle_id']}"
    )
    if run["withheld"]:
        out.print(f"withheld: {escape(run['withheld'])}")
    out.print(f"query: {escape(run['query'] or '')}")
    for attempt in run["history"]:
        out.print(
            f"  attempt {attempt.get('attempt')}: {attempt.get('outcome')} "
            + escape(str(attempt.get("error") or ""))
        )


@runs_app.command("cancel")
def runs_cancel(
    run_id: Annotated[str, typer.Argument(help="The run id.")], as_json: JsonOpt = False
) -> None:
    """Cancel a queued run, or ask a running one to stop."""
    with store_session(as_json) as runtime:
        run = RunQueue(runtime.sessions).cancel(run_id)
    if as_json:
        print_json(run)
    else:
        out.print(
            f"run {run_id}: {run['state']}"
            + (" (stop requested)" if run["state"] == "running" else "")
        )


# -- review --------------------------------------------------------------------------------


@review_app.command("list")
def review_list(
    state: Annotated[str | None, typer.Option(help="pending, approved, shipped…")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's.")] = None,
    older_than: Annotated[
        str | None, typer.Option(help="Created at least this long ago (2d).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_: ViewAs = None,
    as_json: JsonOpt = False,
) -> None:
    """Reviews, newest first, with counts per state."""
    with store_session(as_json) as runtime:
        age = parse_duration(older_than) if older_than else None
        desk, viewer = ReviewDesk(runtime), Viewer.parse(as_)
        listing = desk.list_reviews(state, agent, age, limit, viewer=viewer)
        if viewer.kind != "admin":
            listing["reviews"] = [r for r in listing["reviews"] if desk.visible(viewer, r)]
    if as_json:
        print_json(listing)
        return
    table = Table("review", "agent", "state", "title", "for", "created", "approvals")
    for r in listing["reviews"]:
        table.add_row(
            r["id"][:8],
            r["agent"],
            r["state"],
            escape(r["title"][:50]),
            r["on_behalf_of"] or "",
            (r["created_at"] or "")[:19],
            f"need {r['required']}",
        )
    out.print(table)
    out.print(" · ".join(f"{k} {v}" for k, v in listing["counts"].items() if v) or "no reviews")


@review_app.command("show")
def review_show(
    review_id: Annotated[str, typer.Argument(help="The review id.")],
    as_: Annotated[
        str | None, typer.Option("--as", help="Show as this user (redacts what they may not read).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The artifact, its evidence (cited items, their check), revisions and decisions."""
    with store_session(as_json) as runtime:
        review = ReviewDesk(runtime).show(review_id, Viewer.parse(as_))
    if as_json:
        print_json(review)
        return
    out.print(
        f"review {review['id']} · {review['agent']} · [bold]{review['state']}[/bold] · "
        f"revision {review['revision']}"
    )
    out.print(escape(review["content"] or review["content_withheld"] or ""))
    evidence = review["evidence"]
    out.print(
        f"evidence: bundle {evidence['bundle_id']} · {'STALE' if evidence['stale'] else 'current'}"
    )
    for item in evidence["items"]:
        if item["redacted"]:
            out.print(
                f"  [{item['n']}] (redacted: you may not read it) "
                f"{item['source']} · {item['status']}"
            )
        else:
            out.print(
                f"  [{item['n']}] {escape(item['title'])} ({item['source']} "
                f"v{item['version']}) {item['status']} {item['url'] or ''}"
            )
    for event in review["events"]:
        out.print(
            f"  {event['at'][:19]} {event['actor']} {event['action']} "
            + escape(event["comment"] or "")
        )


def _decided(review: dict[str, Any], as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if extra:
        review = {**review, **extra}
    if as_json:
        print_json(review)
        return
    line = f"review {review['id']}: {review['state']}"
    if review.get("ship_error"):
        line += f" ({review['ship_error']})"
    elif review.get("ship_result"):
        line += f" → {review['ship_result']}"
    out.print(line)


@review_app.command("approve")
def review_approve(
    review_id: Annotated[str, typer.Argument(help="The review id.")],
    as_: AsOpt,
    comment: CommentOpt = "",
    override_stale: Annotated[
        bool, typer.Option("--override-stale", help="Approve although cited documents changed.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Approve; with enough approvals the artifact ships (once)."""
    with store_session(as_json) as runtime:
        review = ReviewDesk(runtime).approve(
            review_id, as_, comment=comment, override_stale=override_stale
        )
    _decided(review, as_json)
    if review["state"] == "ship_failed":
        raise typer.Exit(1)


@review_app.command("reject")
def review_reject(
    review_id: Annotated[str, typer.Argument(help="The review id.")],
    as_: AsOpt,
    comment: CommentOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Reject: nothing ships."""
    with store_session(as_json) as runtime:
        review = ReviewDesk(runtime).reject(review_id, as_, comment=comment)
    _decided(review, as_json)


@review_app.command("request-changes")
def review_request_changes(
    review_id: Annotated[str, typer.Argument(help="The review id.")],
    as_: AsOpt,
    comment: Annotated[str, typer.Option(help="What should change (given to the re-run).")],
    as_json: JsonOpt = False,
) -> None:
    """Close this review and run the agent again with the comment as extra input."""
    with store_session(as_json) as runtime:
        review = ReviewDesk(runtime).request_changes(review_id, as_, comment=comment)
    _decided(review, as_json)


@review_app.command("comment")
def review_comment(
    review_id: Annotated[str, typer.Argument(help="The review id.")],
    as_: AsOpt,
    comment: Annotated[str, typer.Option(help="The comment.")],
    as_json: JsonOpt = False,
) -> None:
    """Add a comment without deciding."""
    with store_session(as_json) as runtime:
        review = ReviewDesk(runtime).comment(review_id, as_, comment=comment)
    _decided(review, as_json)


@review_app.command("defer")
def review_defer(
    review_id: Annotated[str, typer.Argument(help="The review id.")],
    as_: AsOpt,
    until: Annotated[
        str | None, typer.Option(help="ISO time, or a duration from now (2d).")
    ] = None,
    comment: CommentOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Leave it pending, marked deferred."""
    with store_session(as_json) as runtime:
        when = None
        if until is not None:
            try:
                when = datetime.now(UTC) + parse_duration(until)
            except ValueError:
                when = parse_time(until)
        review = ReviewDesk(runtime).defer(review_id, as_, until=when, comment=comment)
    _decided(review, as_json)


@review_app.command("edit")
def review_edit(
    review_id: Annotated[str, typer.Argument(help="The review id.")],
    as_: AsOpt,
    file: Annotated[Path, typer.Option(help="The artifact's new text (markdown file).")],
    comment: CommentOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Replace the artifact with a new revision (the diff is kept); approvals restart."""
    try:
        content = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}", as_json)
    with store_session(as_json) as runtime:
        review = ReviewDesk(runtime).edit(review_id, as_, content=content, comment=comment)
    _decided(review, as_json)


@review_app.command("retry-ship")
def review_retry_ship(
    review_id: Annotated[str, typer.Argument(help="The review id.")],
    as_: AsOpt,
    as_json: JsonOpt = False,
) -> None:
    """Ship a review whose shipping failed, again (idempotent at the destination)."""
    with store_session(as_json) as runtime:
        review = ReviewDesk(runtime).retry_ship(review_id, as_)
    _decided(review, as_json)
    if review["state"] == "ship_failed":
        raise typer.Exit(1)


def progress_line(state: dict[str, Any]) -> None:
    err.print(f"worker: {state['processed']} runs done, {state['pending']} pending")
