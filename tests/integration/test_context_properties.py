"""The no-leak promise as properties, through the real HTTP API.

Hypothesis draws a small organisation: users, groups nested at random (cycles allowed),
documents with random ACLs (allow, deny, public, groups nobody is in) and queries. It is
built through the API only (principals, a jsonl source with a per-line ACL, a sync) and
checked against a reference model written here, independent of ``policies.access``:

- every item ``POST /v1/context`` returns is readable by the user it was asked for;
- a query every document matches returns exactly the user's readable set, so the union
  over users is exactly the set of documents someone may read;
- ``GET /v1/documents/{id}`` through the agent answers 200 exactly when readable, else 404;
- the same holds after ACLs are narrowed and re-synced (revocation) and after group
  memberships are removed (no sync: closures are resolved per request).

A real SQLite store and the embedded index; the embedder is the fake hashing one (named
so): ranking is not under test, only who sees what. Worlds stay far below the router's 50
candidates and the agent's token budget, so "exactly the readable set" is well defined.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from context_server.api.app import create_app
from context_server.routing import CANDIDATES
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.store.models import Document
from indexing.embed import FakeHashEmbedder

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
AGENT = "assistant"
SOURCE = "docs"
#: Every text contains it, so it matches every document.
COMMON = "memo"
VOCAB = ("budget", "payroll", "leave", "office", "deploy", "travel")
MAX_DOCUMENTS = 20
assert MAX_DOCUMENTS <= CANDIDATES  # every readable chunk can come back at once

#: Every example builds a store and an index from nothing, and SQLite and the embedded index
#: sync to disk on every commit: a RAM disk, where there is one, keeps that from dominating.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

PROPERTY_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the world and its reference model -----------------------------------------------------


@dataclass(frozen=True)
class Doc:
    id: str
    words: tuple[str, ...]
    allow: frozenset[str]
    deny: frozenset[str]
    public: bool

    @property
    def text(self) -> str:
        # At most four words with the id among them: no two texts share a word 4-gram,
        # so the router's near-duplicate filter never drops one.
        return " ".join((COMMON, *self.words, self.id))

    def line(self) -> str:
        acl = {"allow": sorted(self.allow), "deny": sorted(self.deny), "public": self.public}
        return json.dumps({"_id": self.id, "title": self.id, "text": self.text, "acl": acl})

    def readable_by(self, closure: frozenset[str]) -> bool:
        return (self.public or bool(self.allow & closure)) and not self.deny & closure


@dataclass(frozen=True)
class World:
    users: tuple[str, ...]
    #: group → its direct members (users or groups)
    groups: Mapping[str, frozenset[str]]
    docs: tuple[Doc, ...]

    def closure(self, user: str) -> frozenset[str]:
        """The user plus every group reachable through memberships (a plain BFS)."""
        seen = {user}
        frontier = [user]
        while frontier:
            member = frontier.pop()
            for group, members in self.groups.items():
                if member in members and group not in seen:
                    seen.add(group)
                    frontier.append(group)
        return frozenset(seen)

    def readable(self, user: str) -> set[str]:
        closure = self.closure(user)
        return {d.id for d in self.docs if d.readable_by(closure)}

    def principals_json(self) -> dict[str, Any]:
        return {
            "groups": {g.removeprefix("group:"): sorted(m) for g, m in self.groups.items()},
            "users": list(self.users),
        }

    def edges(self) -> list[tuple[str, str]]:
        return sorted((g, m) for g, members in self.groups.items() for m in members)


@dataclass(frozen=True)
class Scenario:
    world: World
    queries: tuple[str, ...]
    #: the same documents with narrower ACLs: an allow dropped, a deny added, public off
    revoked: tuple[Doc, ...]
    #: (group, member) memberships removed after the revocation
    removed: frozenset[tuple[str, str]]


def _narrow(draw: st.DrawFn, doc: Doc, principals: list[str]) -> Doc:
    change = draw(st.sampled_from(["keep", "drop_allow", "add_deny", "unpublic"]))
    if change == "drop_allow" and doc.allow:
        dropped = draw(st.sampled_from(sorted(doc.allow)))
        return replace(doc, allow=doc.allow - {dropped})
    if change == "add_deny":
        return replace(doc, deny=doc.deny | {draw(st.sampled_from(principals))})
    if change == "unpublic":
        return replace(doc, public=False)
    return doc


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    users = [f"user:u{i}" for i in range(draw(st.integers(3, 6)))]
    groups = [f"group:g{i}" for i in range(draw(st.integers(2, 5)))]
    principals = users + groups
    # Members may be users or groups, the group itself included: cycles are allowed.
    members = {g: draw(st.frozensets(st.sampled_from(principals), max_size=4)) for g in groups}
    docs = []
    for i in range(draw(st.integers(1, MAX_DOCUMENTS))):
        allow = set(draw(st.frozensets(st.sampled_from(principals), max_size=3)))
        if draw(st.integers(0, 3)) == 0:
            allow.add(f"group:ghost-{i}")  # a group nobody was ever put in
        docs.append(
            Doc(
                id=f"d{i}",
                words=tuple(draw(st.lists(st.sampled_from(VOCAB), max_size=2, unique=True))),
                allow=frozenset(allow),
                deny=draw(st.frozensets(st.sampled_from(principals), max_size=2)),
                public=draw(st.integers(0, 4)) == 0,
            )
        )
    world = World(tuple(users), members, tuple(docs))
    queries = tuple(
        " ".join(q)
        for q in draw(
            st.lists(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=3), max_size=3)
        )
    )
    revoked = tuple(_narrow(draw, d, principals) for d in docs)
    edges = world.edges()
    removed = (
        draw(st.frozensets(st.sampled_from(edges), min_size=1, max_size=3))
        if edges
        else frozenset()
    )
    return Scenario(world, queries, revoked, removed)


# -- the server, built through its API ---------------------------------------------------


@dataclass
class Server:
    client: TestClient
    runtime: Runtime
    jsonl: Path
    key: str

    def load(self, world: World) -> None:
        r = self.client.put("/v1/principals", json=world.principals_json(), headers=ADMIN)
        assert r.status_code == 200, r.text

    def sync(self, docs: tuple[Doc, ...]) -> None:
        self.jsonl.write_text("".join(d.line() + "\n" for d in docs))
        (run,) = self.client.post("/v1/sync", json={}, headers=ADMIN).json()["runs"]
        assert run["status"] == "completed", run
        assert run["failures"] == [], run

    def document_ids(self) -> dict[str, str]:
        """External id → the store's document id, for documents nobody may read too."""
        with self.runtime.sessions() as s:
            rows = s.execute(
                select(Document.external_id, Document.id).where(Document.deleted_at.is_(None))
            ).all()
        return {external: doc_id for external, doc_id in rows}

    def context(self, user: str, query: str) -> dict[str, str]:
        """Title (= the generated id) → document id of every item served."""
        body = {"agent": AGENT, "on_behalf_of": user, "query": query}
        r = self.client.post(
            "/v1/context", json=body, headers={"Authorization": f"Bearer {self.key}"}
        )
        assert r.status_code == 200, r.text
        served: dict[str, str] = {}
        for item in r.json()["items"]:
            citation = item["citation"]
            served[citation["title"]] = citation["document_id"]
        return served

    def document_status(self, user: str, doc_id: str) -> int:
        r = self.client.get(
            f"/v1/documents/{doc_id}",
            params={"on_behalf_of": user},
            headers={"Authorization": f"Bearer {self.key}"},
        )
        return r.status_code


@contextmanager
def server(world: World) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        home = Path(tmp)
        settings_ = Settings(home=home / "home", database_url=f"sqlite:///{home / 'store.db'}")
        settings_.agents_path.mkdir(parents=True)
        agent = {
            "name": AGENT,
            "sources": [SOURCE],
            "acting_as": "on_behalf_of",
            "serves": list(world.users),
            "budget_tokens": 100_000,
        }
        (settings_.agents_path / f"{AGENT}.yaml").write_text(yaml.safe_dump(agent))
        jsonl = home / "docs.jsonl"
        jsonl.write_text("")
        runtime = Runtime(settings_, embedder=FakeHashEmbedder())
        try:
            app = create_app(settings_, runtime=runtime, admin_token=ADMIN_TOKEN)
            with TestClient(app) as client:
                source = {
                    "name": SOURCE,
                    "kind": "jsonl",
                    "config": {"path": str(jsonl), "acl": {"allow": []}, "acl_field": "acl"},
                }
                r = client.post("/v1/sources", json=source, headers=ADMIN)
                assert r.status_code == 200, r.text
                r = client.post("/v1/keys", json={"agent": AGENT}, headers=ADMIN)
                assert r.status_code == 200, r.text
                yield Server(client, runtime, jsonl, r.json()["key"])
        finally:
            runtime.close()


# -- the properties ----------------------------------------------------------------------


def assert_no_leak(
    srv: Server,
    world: World,
    queries: tuple[str, ...],
    stage: str,
    before: World | None = None,
) -> None:
    """The properties for every user of ``world``. Documents are fetched one at a time for
    every (user, document) pair, or with ``before`` only for the pairs whose answer changed
    since (those were all fetched already; this keeps the run short)."""
    ids = srv.document_ids()
    assert set(ids) == {d.id for d in world.docs}, stage
    everyone: set[str] = set()
    for user in world.users:
        readable = world.readable(user)
        where = f"{stage}: {user} (closure {sorted(world.closure(user))})"
        # With a query every text matches, the user gets exactly what they may read.
        served = srv.context(user, COMMON)
        assert set(served) == readable, where
        assert all(served[title] == ids[title] for title in served), where
        everyone |= set(served)
        # Any query: nothing served that the user may not read.
        for query in queries:
            leaked = set(srv.context(user, query)) - readable
            assert not leaked, f"{where}, query {query!r}: leaked {sorted(leaked)}"
        # One document at a time: 200 when readable, 404 (existence not disclosed) else.
        was = before.readable(user) if before is not None else None
        for doc in world.docs:
            if was is not None and (doc.id in was) == (doc.id in readable):
                continue
            expected = 200 if doc.id in readable else 404
            assert srv.document_status(user, ids[doc.id]) == expected, f"{where}, {doc}"
    assert everyone == set().union(*(world.readable(u) for u in world.users)), stage


@PROPERTY_SETTINGS
@given(scenarios())
def test_only_readable_documents_are_served_through_revocation_and_group_changes(
    scenario: Scenario,
) -> None:
    world = scenario.world
    with server(world) as srv:
        srv.load(world)
        srv.sync(world.docs)
        assert_no_leak(srv, world, scenario.queries, "initial")

        # Narrower ACLs at the source: after a sync the old grants are gone.
        before, world = world, replace(world, docs=scenario.revoked)
        srv.sync(world.docs)
        assert_no_leak(srv, world, scenario.queries, "after revocation", before)

        # Memberships removed: no sync, closures are resolved per request.
        groups = {
            g: frozenset(m for m in members if (g, m) not in scenario.removed)
            for g, members in world.groups.items()
        }
        before, world = world, replace(world, groups=groups)
        srv.load(world)
        assert_no_leak(srv, world, scenario.queries, "after membership removal", before)
