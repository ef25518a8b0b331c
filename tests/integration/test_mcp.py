"""The MCP interface at /mcp, through the official MCP client against a real server: uvicorn
in a thread on a free port, over the org of test_context_api.py (a filesystem source with
ACL rules, principals, agents), a real store (SQLite and PostgreSQL) and the embedded
index. The embedder is the fake hashing one (named so): ranking is not under test, only
that MCP answers exactly as REST does and refuses what REST refuses."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult
from typer.testing import CliRunner

from context_server.api.app import create_app
from context_server.cli import app as cli
from context_server.review import ReviewDesk
from context_server.runtime import Runtime
from context_server.settings import Settings
from indexing.embed import FakeHashEmbedder
from tests.fakes.uvicorn_server import serving as serve_app
from tests.integration.test_context_api import AGENTS, FILES, PRINCIPALS, RULES
from tests.integration.test_context_properties import PROPERTY_SETTINGS, SCRATCH
from tests.orgs import org_settings, seed, write_files

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REVIEWED = {
    "name": "drafter",
    "description": "An external agent whose drafts need a lead's approval",
    "sources": ["drive"],
    "serves": ["group:everyone"],
    "review": {"approvers": ["group:finance"], "required": 1},
}


@dataclass
class Live:
    """A running server: REST through httpx, MCP through the official client."""

    url: str
    rest: httpx.Client
    runtime: Runtime
    settings: Settings
    share: Path

    def key(self, **body: str) -> str:
        r = self.rest.post("/v1/keys", json=body, headers=ADMIN)
        assert r.status_code == 200, r.text
        key: str = r.json()["key"]
        return key

    def context(self, key: str, **body: Any) -> httpx.Response:
        return self.rest.post("/v1/context", json=body, headers=bearer(key))

    def sync(self) -> None:
        (run,) = self.rest.post("/v1/sync", json={}, headers=ADMIN).json()["runs"]
        assert run["status"] == "completed", run

    def write_agent(self, spec: dict[str, Any]) -> None:
        path = self.settings.agents_path / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))

    def tools(self, key: str) -> Any:
        async def go() -> Any:
            async with self.client(key) as client:
                return (await client.list_tools()).tools

        return anyio.run(go)

    def call(self, key: str | None, tool: str, **arguments: Any) -> CallToolResult:
        async def go() -> CallToolResult:
            async with self.client(key) as client:
                return await client.call_tool(tool, arguments)

        return anyio.run(go)

    @asynccontextmanager
    async def client(self, key: str | None) -> AsyncIterator[Client]:
        """The official client, sending ``key`` as a bearer key (none: no header)."""
        headers = bearer(key) if key is not None else {}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            transport = streamable_http_client(f"{self.url}/mcp", http_client=http)
            async with Client(transport) as client:
                yield client


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def serving(settings: Settings, runtime: Runtime) -> AbstractContextManager[str]:
    """The app over ``runtime`` served by uvicorn on a free port, stopped on exit."""
    return serve_app(create_app(settings, runtime=runtime, admin_token=ADMIN_TOKEN))


@pytest.fixture
def live(tmp_path: Path, database_url: str) -> Iterator[Live]:
    share = write_files(tmp_path / "share", FILES)
    settings = org_settings(tmp_path, database_url)
    runtime = Runtime(settings, embedder=FakeHashEmbedder())
    try:
        with serving(settings, runtime) as url, httpx.Client(base_url=url, timeout=60) as rest:
            o = Live(url, rest, runtime, settings, share)
            for spec in [*AGENTS.values(), REVIEWED]:
                o.write_agent(spec)
            seed(rest, ADMIN, principals=PRINCIPALS, share=share, rules=RULES)
            yield o
    finally:
        runtime.close()


def served(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """What a bundle served, without its id and time: (document, chunk, text) in order."""
    return [
        (i["citation"]["document_id"], i["citation"]["chunk_id"], i["text"]) for i in body["items"]
    ]


def refusal(result: CallToolResult) -> str:
    assert result.is_error, result
    assert result.structured_content is not None
    detail: str = result.structured_content["detail"]
    assert result.content[0].text == detail  # type: ignore[union-attr]
    return detail


# -- tools -----------------------------------------------------------------------------------


def test_lists_the_four_tools_with_input_schemas(live: Live) -> None:
    tools = {t.name: t for t in live.tools(live.key(agent="helpdesk"))}
    assert set(tools) == {"search_context", "get_document", "submit_for_review", "get_review"}
    search = tools["search_context"].input_schema
    assert set(search["properties"]) == {
        "query",
        "on_behalf_of",
        "sources",
        "budget_tokens",
        "agent",
    }
    assert set(search["required"]) == {"query", "on_behalf_of"}
    assert set(tools["get_document"].input_schema["required"]) == {"document_id", "on_behalf_of"}
    submit = tools["submit_for_review"].input_schema
    assert set(submit["properties"]) == {"bundle_id", "content", "title"}
    assert set(submit["required"]) == {"bundle_id", "content"}
    assert "bundle_id" in (tools["search_context"].output_schema or {})["properties"]
    assert tools["get_review"].input_schema["required"] == ["review_id"]


def test_search_context_returns_what_rest_returns(live: Live) -> None:
    key = live.key(agent="helpdesk")
    ask = {"query": "budget", "on_behalf_of": "user:alice", "budget_tokens": 500}
    rest = live.context(key, agent="helpdesk", **ask)
    assert rest.status_code == 200, rest.text
    result = live.call(key, "search_context", **ask)
    assert not result.is_error, result
    mcp = result.structured_content
    assert mcp is not None
    assert served(mcp) == served(rest.json()) and served(mcp)
    assert mcp["bundle_id"] != rest.json()["bundle_id"]
    drop = {"bundle_id", "created_at", "items"}
    assert {k: v for k, v in mcp.items() if k not in drop} == {
        k: v for k, v in rest.json().items() if k not in drop
    }
    assert [i["citation"] for i in mcp["items"]] == [i["citation"] for i in rest.json()["items"]]
    # the text rendering cites each item and names the bundle
    text = result.content[0].text  # type: ignore[union-attr]
    assert mcp["bundle_id"] in text and mcp["items"][0]["citation"]["document_id"] in text
    # the bundle is stored like REST's, and visible to the same key
    assert live.rest.get(f"/v1/bundles/{mcp['bundle_id']}", headers=bearer(key)).is_success
    # sources narrow, as in REST filters
    narrowed = live.call(key, "search_context", sources=["drive"], **ask)
    assert served(narrowed.structured_content or {}) == served(mcp)


def test_a_user_key_names_the_agent_and_acts_only_for_its_user(live: Live) -> None:
    key = live.key(user="user:alice")
    detail = refusal(live.call(key, "search_context", query="budget", on_behalf_of="user:alice"))
    assert "name the agent" in detail
    ask = {"query": "budget", "on_behalf_of": "user:alice", "agent": "helpdesk"}
    result = live.call(key, "search_context", **ask)
    assert not result.is_error and result.structured_content is not None
    assert served(result.structured_content) == served(live.context(key, **ask).json())
    other = {**ask, "on_behalf_of": "user:carol"}
    assert (
        refusal(live.call(key, "search_context", **other))
        == live.context(key, **other).json()["detail"]
    )
    # the admin token works too, naming the agent
    admin = live.call(ADMIN_TOKEN, "search_context", **ask)
    assert not admin.is_error and admin.structured_content is not None
    assert served(admin.structured_content) == served(result.structured_content)


# -- refusals ------------------------------------------------------------------------------


def test_no_key_a_bad_key_or_a_revoked_key_is_refused_before_mcp(live: Live) -> None:
    key = live.key(agent="helpdesk")
    key_id = key.split("_")[1]
    assert live.rest.delete(f"/v1/keys/{key_id}", headers=ADMIN).is_success
    for token, detail in [
        (None, "missing bearer key"),
        ("csk_nope_nope", "unknown or revoked key"),
        (key, "unknown or revoked key"),
    ]:
        # what the wire says: HTTP 401 with the REST detail, before any MCP message is read
        headers = {"Accept": "application/json, text/event-stream"}
        headers.update(bearer(token) if token else {})
        r = live.rest.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers
        )
        assert r.status_code == 401 and detail in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        # what the official client sees: it cannot connect, and is told why
        with pytest.raises(Exception) as raised:
            live.tools(token)  # type: ignore[arg-type]
        errors = list(_leaves(raised.value))
        assert [type(e).__name__ for e in errors] == ["MCPError"], errors
        assert detail in str(errors[0]) and errors[0].code == -32001  # type: ignore[attr-defined]


def test_refusals_carry_the_rest_message(live: Live) -> None:
    key = live.key(agent="helpdesk")
    # acting as another agent
    ask = {"query": "budget", "on_behalf_of": "user:alice", "agent": "finance-bot"}
    detail = refusal(live.call(key, "search_context", **ask))
    assert detail == live.context(key, **ask).json()["detail"]
    assert "belongs to agent 'helpdesk'" in detail
    # a user the agent does not serve
    carol_only = live.key(agent="notice-board")
    ask = {"query": "budget", "on_behalf_of": "user:alice"}
    detail = refusal(live.call(carol_only, "search_context", **ask))
    assert detail == live.context(carol_only, agent="notice-board", **ask).json()["detail"]
    assert "does not serve user:alice" in detail
    # a source outside the agent's
    detail = refusal(live.call(key, "search_context", sources=["wiki"], **ask))
    assert "may not draw from source 'wiki'" in detail
    # arguments outside the schema never reach the router
    assert live.call(key, "search_context", budget_tokens=0, **ask).is_error


def test_the_dns_rebinding_guard_stays_on(live: Live) -> None:
    headers = {**bearer(live.key(agent="helpdesk")), "Host": "evil.example"}
    headers["Accept"] = "application/json, text/event-stream"
    r = live.rest.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers)
    assert r.status_code == 421, r.text


# -- documents ------------------------------------------------------------------------------


def test_get_document_is_scoped_like_rest(live: Live) -> None:
    key = live.key(agent="helpdesk")
    found = live.call(
        ADMIN_TOKEN, "search_context", query="payroll", on_behalf_of="user:alice", agent="helpdesk"
    )
    (payroll,) = {
        i["citation"]["document_id"]
        for i in (found.structured_content or {})["items"]
        if "Payroll is paid" in i["text"]
    }
    ok = live.call(key, "get_document", document_id=payroll, on_behalf_of="user:alice")
    assert not ok.is_error and ok.structured_content is not None
    rest = live.rest.get(
        f"/v1/documents/{payroll}", params={"on_behalf_of": "user:alice"}, headers=bearer(key)
    )
    assert ok.structured_content == rest.json()
    assert "Payroll is paid on the 25th" in ok.content[0].text  # type: ignore[union-attr]
    # bob is denied payroll; carol is not in finance: "not found", as in REST
    for user in ("user:bob", "user:carol"):
        detail = refusal(live.call(key, "get_document", document_id=payroll, on_behalf_of=user))
        assert detail == f"no document {payroll!r} readable here"
        r = live.rest.get(
            f"/v1/documents/{payroll}", params={"on_behalf_of": user}, headers=bearer(key)
        )
        assert r.status_code == 404 and r.json()["detail"] == detail


# -- submit_for_review ---------------------------------------------------------------------


def test_submit_for_review_enters_the_review_queue_with_the_bundle_as_evidence(live: Live) -> None:
    key = live.key(agent="drafter")
    found = live.call(key, "search_context", query="leave days", on_behalf_of="user:zoe")
    bundle = (found.structured_content or {})["bundle_id"]
    done = live.call(
        key,
        "submit_for_review",
        bundle_id=bundle,
        content="# Leave\n27 days.",
        title="Leave answer",
    )
    assert not done.is_error, done
    out = done.structured_content or {}
    assert out["state"] == "pending" and set(out) == {"review_id", "run_id", "state"}
    desk = ReviewDesk(live.runtime)
    (listed,) = desk.list_reviews(state="pending", agent="drafter")["reviews"]
    assert listed["id"] == out["review_id"]
    shown = desk.show(out["review_id"])
    assert shown["content"] == "# Leave\n27 days." and shown["title"] == "Leave answer"
    assert shown["run"]["run_id"] == out["run_id"] and shown["run"]["query"] == "leave days"
    assert shown["bundle_id"] == bundle and shown["on_behalf_of"] == "user:zoe"
    cited = {i["document_id"] for i in shown["evidence"]["items"]}
    served_ids = {i["citation"]["document_id"] for i in (found.structured_content or {})["items"]}
    assert cited == served_ids and cited
    assert [e["action"] for e in shown["events"]] == ["submit"]
    # a second submission of the same bundle is refused
    again = live.call(key, "submit_for_review", bundle_id=bundle, content="other")
    assert "already submitted" in refusal(again)
    # the run is on record, like a worker's
    run = live.rest.get(f"/v1/runs/{out['run_id']}", headers=ADMIN)
    assert run.status_code == 200, run.text
    assert run.json()["state"] == "succeeded" and run.json()["trigger_kind"] == "external"
    # changes requested on an external submission: no re-run (no harness); the agent reads
    # the comment back with get_review
    changed = desk.request_changes(out["review_id"], "user:alice", comment="cite the handbook")
    assert changed["state"] == "changes_requested" and changed["rerun_id"] is None
    seen = live.call(key, "get_review", review_id=out["review_id"])
    assert not seen.is_error, seen
    review = seen.structured_content or {}
    assert review["state"] == "changes_requested" and review["content"] == "# Leave\n27 days."
    assert review["decisions"][-1]["comment"] == "cite the handbook"
    assert "changes asked: cite the handbook" in str(seen.content)
    # only the agent's own reviews, and only with an agent key
    other = live.call(live.key(agent="helpdesk"), "get_review", review_id=out["review_id"])
    assert "no review" in refusal(other)
    assert "agent key" in refusal(live.call(ADMIN_TOKEN, "get_review", review_id=out["review_id"]))


def test_submit_for_review_refuses_what_is_not_the_agents_to_submit(live: Live) -> None:
    drafter = live.key(agent="drafter")
    helpdesk = live.key(agent="helpdesk")
    theirs = live.call(helpdesk, "search_context", query="leave", on_behalf_of="user:zoe")
    bundle = (theirs.structured_content or {})["bundle_id"]
    # another agent's bundle: not found, as bundles are
    detail = refusal(live.call(drafter, "submit_for_review", bundle_id=bundle, content="x"))
    assert detail == f"no bundle {bundle!r} served to agent 'drafter'"
    # an agent without review
    detail = refusal(live.call(helpdesk, "submit_for_review", bundle_id=bundle, content="x"))
    assert detail == "agent helpdesk declares no review: add review: {approvers: [...]}"
    # a user key, or the admin token: agent keys only
    for key in (live.key(user="user:zoe"), ADMIN_TOKEN):
        detail = refusal(live.call(key, "submit_for_review", bundle_id=bundle, content="x"))
        assert "takes an agent key" in detail
    mine = live.call(drafter, "search_context", query="leave", on_behalf_of="user:zoe")
    empty = live.call(
        drafter,
        "submit_for_review",
        bundle_id=(mine.structured_content or {})["bundle_id"],
        content="  ",
    )
    assert refusal(empty) == "the content is empty"
    assert ReviewDesk(live.runtime).list_reviews(state="pending")["reviews"] == []


# -- the permission property ----------------------------------------------------------------

USERS = ("user:alice", "user:bob", "user:carol", "user:zoe", "user:nobody")
QUERIES = ("budget", "payroll", "leave", "office snack", "deploy tuesday", "paid")


def chunk_ids(body: dict[str, Any]) -> set[tuple[str, str]]:
    return {(i["citation"]["document_id"], i["citation"]["chunk_id"]) for i in body["items"]}


def same_answer(o: Live, keys: dict[str, str], agent: str, user: str, query: str) -> None:
    """MCP and REST give the same items, or refuse with the same message."""
    ask = {"query": query, "on_behalf_of": user, "agent": agent}
    rest = o.context(keys[agent], **ask)
    result = o.call(keys[agent], "search_context", **ask)
    if rest.status_code == 200:
        assert not result.is_error, (ask, result)
        assert chunk_ids(result.structured_content or {}) == chunk_ids(rest.json()), ask
    else:
        assert refusal(result) == rest.json()["detail"], ask


@contextmanager
def scratch_server() -> Iterator[tuple[Live, dict[str, str]]]:
    """One server for the property (hypothesis runs examples inside a test, not per fixture)."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        root = Path(tmp)
        share = root / "share"
        for rel, body in FILES.items():
            (share / rel).parent.mkdir(parents=True, exist_ok=True)
            (share / rel).write_text(body)
        settings = Settings(home=root / "home", database_url=f"sqlite:///{root / 'store.db'}")
        settings.agents_path.mkdir(parents=True)
        runtime = Runtime(settings, embedder=FakeHashEmbedder())
        try:
            with serving(settings, runtime) as url, httpx.Client(base_url=url, timeout=60) as rest:
                o = Live(url, rest, runtime, settings, share)
                for spec in AGENTS.values():
                    o.write_agent(spec)
                assert rest.put("/v1/principals", json=PRINCIPALS, headers=ADMIN).is_success
                source = {
                    "name": "drive",
                    "kind": "filesystem",
                    "config": {"root": str(share), "acl_rules": RULES},
                }
                assert rest.post("/v1/sources", json=source, headers=ADMIN).is_success
                o.sync()
                yield o, {name: o.key(agent=name) for name in AGENTS}
        finally:
            runtime.close()


def test_mcp_search_serves_exactly_what_rest_serves_through_acl_and_membership_changes() -> None:
    with scratch_server() as (o, keys):

        @PROPERTY_SETTINGS
        @given(
            agent=st.sampled_from(sorted(AGENTS)),
            user=st.sampled_from(USERS),
            query=st.sampled_from(QUERIES),
        )
        def check(agent: str, user: str, query: str) -> None:
            same_answer(o, keys, agent, user, query)

        check()
        # Narrow an ACL at the source (handbook for finance only) and re-sync ...
        rules = [{"glob": "handbook/**", "allow": ["group:finance"]}, *RULES]
        source = {
            "name": "drive",
            "kind": "filesystem",
            "config": {"root": str(o.share), "acl_rules": rules},
        }
        assert o.rest.post("/v1/sources", json=source, headers=ADMIN).is_success
        o.sync()
        check()
        # ... and remove a membership (alice leaves finance): no sync, resolved per request.
        groups = {**PRINCIPALS["groups"], "finance": ["user:bob"]}
        assert o.rest.put("/v1/principals", json={"groups": groups}, headers=ADMIN).is_success
        check()


# -- mcp-config -----------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["claude-desktop", "cursor", "vscode", "generic"])
def test_mcp_config_prints_json_naming_the_url(
    client: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTEXT_SERVER_HOME", str(tmp_path))
    monkeypatch.setenv("CONTEXT_SERVER_PORT", "9123")
    runner = CliRunner()
    r = runner.invoke(cli, ["mcp-config", "--client", client, "--key", "csk_a_b", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["client"] == client and report["url"] == "http://127.0.0.1:9123/mcp"
    text = json.dumps(report["config"])
    assert report["url"] in text and "Bearer csk_a_b" in text
    plain = runner.invoke(cli, ["mcp-config", "--client", client])
    placeholder = (
        "${input:context-server-key}" if client == "vscode" else "<YOUR_CONTEXT_SERVER_KEY>"
    )
    assert plain.exit_code == 0 and placeholder in plain.stdout
    assert json.loads(plain.stdout)
    bad = runner.invoke(cli, ["mcp-config", "--client", "emacs", "--json"])
    assert bad.exit_code == 1 and "unknown client" in json.loads(bad.stdout)["error"]
