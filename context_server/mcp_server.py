"""The MCP interface: the context API as tools for agents that speak the Model Context
Protocol, served at ``/mcp`` (streamable HTTP, stateless) inside the same FastAPI app.

Nothing here decides who may read what. A request carries the same bearer key as REST;
``BearerGate`` turns it into a ``Caller`` before the MCP layer sees the request (no key or
a bad one: HTTP 401, like REST), and each tool hands that caller to ``ContextRouter``
(``search_context``, ``get_document``: the same routing, permission rules and audit as
``/v1/context`` and ``/v1/documents``) or to ``submit_for_review`` (an external agent's
artifact enters the review queue, built by ``worker.new_review`` like a worker's).

Tools report a refused or invalid request as an MCP tool error (``isError``) whose text
is the REST ``detail`` and whose structured content is ``{"error", "detail"}``.

May import the rest of ``context_server`` and the MCP SDK; only ``api.app`` imports it.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.errors import ConnectorError
from context_server import __version__, deadline
from context_server.agents import MAX_BUDGET_TOKENS
from context_server.api.deps import authenticate
from context_server.api.schemas import (
    Artifact,
    ContextResponse,
    DocumentResponse,
    Label,
    Name,
    PrincipalText,
    QueryText,
    SourceNames,
    check_artifact,
)
from context_server.errors import (
    ConflictError,
    ContextServerError,
    ForbiddenError,
    NotFoundError,
    SpecError,
)
from context_server.keys import Caller
from context_server.review import ReviewDesk
from context_server.routing import ContextFilters, ContextRouter
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.store.models import AgentRun, Bundle
from context_server.viewer import Viewer
from context_server.worker import new_review
from indexing.errors import IndexingError

#: Where ``BearerGate`` leaves the authenticated caller in the ASGI scope for the tools.
CALLER_KEY = "context_server.caller"
#: The path the endpoint is served at, in the API's app.
MCP_PATH = "/mcp"

INSTRUCTIONS = (
    "Organizational context, permission-filtered for the user you act for. "
    "search_context returns cited items packed into a token budget and stores them as a "
    "bundle; get_document reads one cited document; submit_for_review hands in what you "
    "made from a bundle: it waits for a human's approval before it ships."
)

#: Domain errors a tool reports to the client as a tool error with their message.
REPORTED = (ContextServerError, ConnectorError, IndexingError)


# -- authentication ---------------------------------------------------------------------


#: The JSON-RPC error code of a refused key (the range -32000..-32099 is the server's own).
UNAUTHORIZED = -32001


def _unauthorized(detail: str) -> JSONResponse:
    """HTTP 401 whose body is a JSON-RPC error: MCP clients show its message (the REST
    ``detail``) instead of a bare "Server returned an error response"."""
    return JSONResponse(
        {"jsonrpc": "2.0", "id": None, "error": {"code": UNAUTHORIZED, "message": detail}},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


class BearerGate:
    """ASGI wrapper in front of the MCP endpoint: the same bearer rule as the REST API's
    ``get_caller`` (the server's admin token, or an API key), answered with HTTP 401
    before any MCP message is read."""

    def __init__(
        self, inner: ASGIApp, admin_token: Callable[[], str], runtime: Callable[[], Runtime]
    ):
        self.inner = inner
        self.admin_token = admin_token
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            response = _unauthorized(
                "missing bearer key: send `Authorization: Bearer <key>` "
                "(create one with `context-server keys create`)"
            )
            await response(scope, receive, send)
            return
        caller = await anyio.to_thread.run_sync(self._authenticate, token.strip())
        if caller is None:
            await _unauthorized("unknown or revoked key")(scope, receive, send)
            return
        await self.inner({**scope, CALLER_KEY: caller}, receive, send)

    def _authenticate(self, token: str) -> Caller | None:
        return authenticate(self.runtime(), self.admin_token(), token)


def _caller(ctx: Context) -> Caller:
    request = ctx.request_context.request
    caller = request.scope.get(CALLER_KEY) if isinstance(request, Request) else None
    if not isinstance(caller, Caller):  # only reachable if the gate were bypassed
        raise ForbiddenError("no authenticated caller: send `Authorization: Bearer <key>`")
    return caller


def _agent_for(caller: Caller, agent: str | None) -> str:
    """The agent a tool acts through: the one named, else the key's own agent."""
    if agent:
        return agent
    if caller.kind == "agent":
        return caller.subject
    raise SpecError(
        f"name the agent: {caller.label}'s key is not an agent key, so pass `agent` "
        "(a declared agent that serves the user)"
    )


def allowed_hosts(settings: Settings) -> TransportSecuritySettings:
    """DNS-rebinding protection stays on; besides localhost, the Host (and browser Origin)
    the server is reached by is the address it serves on: ``settings.host:settings.port``,
    or this machine's names when it binds every interface."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    names: list[str] = []
    if settings.host in ("0.0.0.0", "::", ""):
        names = sorted({socket.gethostname(), socket.getfqdn()})
    elif settings.host not in ("127.0.0.1", "localhost", "::1"):
        names = [settings.host]
    for name in names:
        bracketed = f"[{name}]" if ":" in name else name
        hosts += [bracketed, f"{bracketed}:{settings.port}"]
    origins = [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


# -- results ----------------------------------------------------------------------------


class SubmitResponse(BaseModel):
    review_id: str
    run_id: str
    state: str


class ReviewDecision(BaseModel):
    at: str | None
    actor: str
    action: str
    revision: int
    comment: str | None = Field(description="Withheld (null) with the draft.")


class ReviewResponse(BaseModel):
    review_id: str
    state: str
    revision: int
    content: str | None = Field(
        description="The current revision (a reviewer may have edited it); null when it was "
        "made from a document the agent may no longer read for the run's user."
    )
    withheld: str | None = Field(default=None, description="Why content is withheld, if it is.")
    decisions: list[ReviewDecision]
    shipped_at: str | None
    ship_result: dict[str, Any] | None


def review_for_agent(runtime: Runtime, caller: Caller, review_id: str) -> dict[str, Any]:
    """An agent's view of one of its reviews: state, current revision, and the reviewers'
    decisions and comments (how an external agent learns that changes were requested)."""
    if caller.kind != "agent":
        raise ForbiddenError(f"get_review takes an agent key, not {caller.label}'s")
    shown = ReviewDesk(runtime).show(review_id, Viewer.of(caller))
    if shown["agent"] != caller.subject:
        raise NotFoundError(f"no review {review_id!r} of agent {caller.subject!r}")
    return {
        "review_id": shown["id"],
        "state": shown["state"],
        "revision": shown["revision"],
        "content": shown["content"],
        "withheld": shown["withheld"],
        "decisions": [
            {k: e[k] for k in ("at", "actor", "action", "revision", "comment")}
            for e in shown["events"]
        ],
        "shipped_at": shown["shipped_at"],
        "ship_result": shown["ship_result"],
    }


def _error(exc: Exception) -> CallToolResult:
    """A refusal as the client sees it: the REST ``detail`` as text, and structured."""
    return CallToolResult(
        content=[TextContent(type="text", text=str(exc))],
        structured_content={"error": type(exc).__name__, "detail": str(exc)},
        is_error=True,
    )


def _result(data: dict[str, Any], text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def render_bundle(bundle: dict[str, Any]) -> str:
    """The bundle as text for models that read only text content: each item with its
    citation, then the bundle id to cite or hand in."""
    lines = [
        f"bundle {bundle['bundle_id']}: {len(bundle['items'])} items, "
        f"{bundle['used_tokens']}/{bundle['budget_tokens']} tokens"
    ]
    for n, item in enumerate(bundle["items"], 1):
        c = item["citation"]
        where = " · ".join(str(x) for x in (c["source"], c["title"], c["section"]) if x)
        lines.append(f"\n[{n}] {where} (document {c['document_id']}, v{c['version']})")
        if c.get("url"):
            lines.append(str(c["url"]))
        lines.append(str(item["text"]))
    return "\n".join(lines)


def render_document(document: dict[str, Any]) -> str:
    head = f"{document['title']} ({document['source']}, v{document['version']})"
    if document.get("url"):
        head += f"\n{document['url']}"
    return "\n\n".join([head, *(str(c["text"]) for c in document["chunks"])])


# -- submit_for_review ------------------------------------------------------------------


def submit_for_review(
    runtime: Runtime,
    caller: Caller,
    bundle_id: str,
    content: str,
    title: str | None = None,
    now: datetime | None = None,
) -> dict[str, str]:
    """An external agent hands in an artifact made from one of its bundles: a succeeded
    ``external`` run and a pending review, in one transaction, so it waits in the same
    queue, for the same approvers, as a worker's output. One submission per bundle."""
    if caller.kind != "agent":
        raise ForbiddenError(
            f"submit_for_review takes an agent key: {caller.label} cannot hand in an "
            "agent's work (create one with `context-server keys create --agent NAME`)"
        )
    if not content.strip():
        raise SpecError("the content is empty")
    check_artifact(content, runtime.settings.max_artifact_chars)
    name = caller.subject
    agent = runtime.agents.get(name)
    if agent.spec.review is None:
        raise SpecError(f"agent {name} declares no review: add review: {{approvers: [...]}}")
    now = now or datetime.now(UTC)
    trigger_key = f"external:{bundle_id}"
    with runtime.sessions() as session:
        bundle = session.get(Bundle, bundle_id)
        if bundle is None or bundle.agent != name:
            # The same answer whether it does not exist or is another agent's.
            raise NotFoundError(f"no bundle {bundle_id!r} served to agent {name!r}")
        taken = session.scalar(
            select(AgentRun.id).where(AgentRun.agent == name, AgentRun.trigger_key == trigger_key)
        )
        if taken is not None:
            raise ConflictError(
                f"bundle {bundle_id!r} was already submitted for review (run {taken}); "
                "ask for context again to submit new work"
            )
        run = AgentRun(
            id=str(uuid.uuid4()),
            agent=name,
            agent_version=agent.version,
            trigger_kind="external",
            trigger_key=trigger_key,
            trigger={"kind": "external", "bundle_id": bundle_id},
            on_behalf_of=bundle.on_behalf_of,
            input={},
            requested_by=f"agent:{name}",
            state="succeeded",
            attempts=1,
            max_attempts=1,
            available_at=now,
            cancel_requested=False,
            query=bundle.query,
            bundle_id=bundle_id,
            harness_output={"content": content, "title": title},
            history=[{"attempt": 1, "outcome": "succeeded", "submitted_by": f"agent:{name}"}],
            created_at=now,
            started_at=now,
            finished_at=now,
        )
        review = new_review(session, run, agent, content, title, now)
        session.add(run)
        session.add(review)
        try:
            session.commit()
        except IntegrityError as exc:  # a concurrent submission of the same bundle won
            session.rollback()
            raise ConflictError(f"bundle {bundle_id!r} was already submitted for review") from exc
        return {"review_id": review.id, "run_id": run.id, "state": review.state}


# -- the server -------------------------------------------------------------------------

# Every argument is capped like the REST request models' fields (api.schemas).
Query = Annotated[QueryText, Field(description="What the agent needs context for.")]
OnBehalfOf = Annotated[
    PrincipalText, Field(description="The user the agent acts for, e.g. user:alice.")
]
AgentArg = Annotated[
    Name | None,
    Field(description="The declared agent; defaults to the key's agent (user keys must name it)."),
]
Id = Annotated[str, Field(max_length=255)]


def build_server(runtime: Callable[[], Runtime]) -> MCPServer[Any]:
    """The MCP server with its three tools; ``runtime`` is read per call (the app builds
    its runtime at start-up)."""
    mcp: MCPServer[Any] = MCPServer(
        "context-server", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )

    @mcp.tool(title="Search organizational context")
    def search_context(
        query: Query,
        on_behalf_of: OnBehalfOf,
        ctx: Context,
        sources: Annotated[
            SourceNames | None, Field(description="Narrow to these of the agent's sources.")
        ] = None,
        budget_tokens: Annotated[
            int | None, Field(ge=1, le=MAX_BUDGET_TOKENS, description="Token budget.")
        ] = None,
        agent: AgentArg = None,
    ) -> Annotated[CallToolResult, ContextResponse]:
        """Cited items the user may read, through the agent's sources and rules, packed into
        the token budget and stored as a bundle (what POST /v1/context returns)."""
        try:
            caller = _caller(ctx)
            filters = ContextFilters(sources=tuple(sources)) if sources is not None else None
            router = ContextRouter(runtime())
            with deadline.within(router.runtime.settings.context_deadline_seconds):
                bundle = router.route(
                    caller, _agent_for(caller, agent), on_behalf_of, query, budget_tokens, filters
                )
        except REPORTED as exc:
            return _error(exc)
        return _result(bundle, render_bundle(bundle))

    @mcp.tool(title="Read a cited document")
    def get_document(
        document_id: Annotated[Id, Field(description="A citation's document_id.")],
        on_behalf_of: OnBehalfOf,
        ctx: Context,
        agent: AgentArg = None,
    ) -> Annotated[CallToolResult, DocumentResponse]:
        """One document and its chunks, scoped like search_context; a document the user
        may not read through the agent is "not found" (GET /v1/documents/{id})."""
        try:
            caller = _caller(ctx)
            document = ContextRouter(runtime()).document(
                caller, document_id, _agent_for(caller, agent), on_behalf_of
            )
        except REPORTED as exc:
            return _error(exc)
        return _result(document, render_document(document))

    def submit(
        bundle_id: Annotated[Id, Field(description="The bundle the work was made from.")],
        content: Annotated[Artifact, Field(description="The artifact (markdown or text).")],
        ctx: Context,
        title: Annotated[Label | None, Field(description="A short title.")] = None,
    ) -> Annotated[CallToolResult, SubmitResponse]:
        """Hand in what the agent made from a bundle: it waits in the review queue for the
        agent's approvers and ships only after approval. Agent keys only; once per bundle."""
        try:
            done = submit_for_review(runtime(), _caller(ctx), bundle_id, content, title)
        except REPORTED as exc:
            return _error(exc)
        text = f"review {done['review_id']} is {done['state']} (run {done['run_id']})"
        return _result(done, text)

    # Registered by hand: the tool's name is the module function's it wraps.
    mcp.add_tool(submit, name="submit_for_review", title="Submit work for human review")

    @mcp.tool(title="Read a review of the agent's work")
    def get_review(
        review_id: Annotated[Id, Field(description="What submit_for_review returned.")],
        ctx: Context,
    ) -> Annotated[CallToolResult, ReviewResponse]:
        """The state of one of the agent's reviews, its current revision, and the reviewers'
        decisions and comments (e.g. the changes they asked for). Agent keys only."""
        try:
            review = review_for_agent(runtime(), _caller(ctx), review_id)
        except REPORTED as exc:
            return _error(exc)
        asked = [d["comment"] for d in review["decisions"] if d["action"] == "request_changes"]
        text = f"review {review_id} is {review['state']}" + (
            f"; changes asked: {asked[-1]}" if asked else ""
        )
        return _result(review, text)

    return mcp


class McpEndpoint:
    """``/mcp`` in the API's app. A fresh MCP session manager is built each time the app
    starts (the SDK's runs only once), behind the bearer gate."""

    def __init__(
        self, settings: Settings, admin_token: Callable[[], str], runtime: Callable[[], Runtime]
    ):
        self.settings = settings
        self.server = build_server(runtime)
        self._asgi: ASGIApp | None = None
        self.gate = BearerGate(self._dispatch, admin_token, runtime)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._asgi is None:
            response = JSONResponse({"detail": "the MCP endpoint is not running"}, 503)
            await response(scope, receive, send)
            return
        await self._asgi(scope, receive, send)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the MCP session manager for the app's lifetime (from its lifespan)."""
        self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            transport_security=allowed_hosts(self.settings),
        )
        manager = self.server.session_manager
        async with manager.run():
            self._asgi = manager.handle_request
            try:
                yield
            finally:
                self._asgi = None


def mount(app: Any, settings: Settings) -> McpEndpoint:
    """Serve ``/mcp`` from ``app`` (a route of its own, so later routes are not shadowed)."""
    from starlette.routing import Route

    endpoint = McpEndpoint(
        settings,
        admin_token=lambda: str(app.state.admin_token),
        runtime=lambda: app.state.runtime,
    )
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint.gate))
    return endpoint


# -- client configuration ---------------------------------------------------------------

Client = Literal["claude-desktop", "cursor", "vscode", "generic"]
CLIENTS: tuple[Client, ...] = ("claude-desktop", "cursor", "vscode", "generic")
SERVER_NAME = "context-server"
KEY_PLACEHOLDER = "<YOUR_CONTEXT_SERVER_KEY>"


def server_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind is reached here through loopback
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}{MCP_PATH}"


def client_config(client: str, url: str, key: str | None = None) -> dict[str, Any]:
    """A configuration snippet for ``client`` to reach ``url`` with a bearer key (or a
    placeholder). Shapes: Cursor's ``mcp.json`` (url + headers), VS Code's ``mcp.json``
    (``servers``, type http, the key as a password input unless given), Claude Desktop's
    ``claude_desktop_config.json`` (stdio only: through the ``mcp-remote`` bridge), and a
    generic ``mcpServers`` entry with type http (as Claude Code's ``.mcp.json``)."""
    secret = key or KEY_PLACEHOLDER
    headers = {"Authorization": f"Bearer {secret}"}
    if client == "cursor":
        return {"mcpServers": {SERVER_NAME: {"url": url, "headers": headers}}}
    if client == "vscode":
        if key is not None:
            return {"servers": {SERVER_NAME: {"type": "http", "url": url, "headers": headers}}}
        prompt = {
            "type": "promptString",
            "id": "context-server-key",
            "description": "context-server API key",
            "password": True,
        }
        entry = {
            "type": "http",
            "url": url,
            "headers": {"Authorization": "Bearer ${input:context-server-key}"},
        }
        return {"inputs": [prompt], "servers": {SERVER_NAME: entry}}
    if client == "claude-desktop":
        bridge = {
            "command": "npx",
            "args": ["-y", "mcp-remote", url, "--header", "Authorization:${AUTH_HEADER}"],
            "env": {"AUTH_HEADER": f"Bearer {secret}"},
        }
        return {"mcpServers": {SERVER_NAME: bridge}}
    if client == "generic":
        return {"mcpServers": {SERVER_NAME: {"type": "http", "url": url, "headers": headers}}}
    raise SpecError(f"unknown client {client!r}: one of {', '.join(CLIENTS)}")


def config_json(client: str, settings: Settings, key: str | None = None) -> dict[str, Any]:
    """What ``context-server mcp-config --json`` prints."""
    url = server_url(settings)
    return {"client": client, "url": url, "config": client_config(client, url, key)}
