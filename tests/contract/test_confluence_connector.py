"""The confluence connector against the shared contract, plus its own API handling.

``FakeConfluence`` is a fake of the Confluence Cloud REST API (v2 spaces, permissions and
pages with cursor pagination; v1 restrictions, groups, members and users with start/limit
pagination), answering from mutable state with objects built on the recorded-shape JSON in
``fixtures/confluence/``. It serves ``httpx.MockTransport`` in unit tests and a real local
HTTP server (pytest-httpserver) in the end-to-end CLI test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from pydantic import ValidationError
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from connectors import registry
from connectors.base import Acl, Delete, Upsert
from connectors.confluence.acl import Level, account_principal, effective_acl, group_principal
from connectors.confluence.config import ConfluenceConfig
from connectors.confluence.connector import ConfluenceCheckpoint, ConfluenceConnector
from connectors.errors import ConfigError, CredentialError, SourceError
from tests.contract.connector_contract import ConnectorContract, deletes, failures, run, upserts

FIXTURES = Path(__file__).parent / "fixtures" / "confluence"
EMAIL = "bot@acme.example"
TOKEN = "conf-token-123"
TOKEN_ENV = "CONFLUENCE_TEST_TOKEN"


Answer = tuple[int, dict[str, str], Any]


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


class FakeConfluence:
    """A Confluence Cloud site in memory. Ids are strings, as the API sends them."""

    def __init__(self, base: str = "https://acme.atlassian.net", cap: int = 250) -> None:
        self.base = base
        self.cap = cap  # the site's own maximum page size
        self.spaces: dict[str, dict[str, str]] = {}  # key → {id, name}
        self.permissions: dict[str, list[tuple[str, str, str]]] = {}  # key → (type, id, op)
        self.groups: dict[str, str] = {}  # group id → name
        self.members: dict[str, list[str]] = {}  # group id → account ids
        self.users: dict[str, str] = {}  # account id → email ("" when hidden)
        self.pages: dict[str, dict[str, Any]] = {}  # page id → state
        self.restrictions: dict[str, tuple[list[str], list[str]]] = {}  # id → (users, groups)
        self.folders: dict[str, str | None] = {}  # folder id → parent id
        self.broken: set[str] = set()  # page ids whose body is refused (403)
        self.faults: list[tuple[str, int, dict[str, str]]] = []  # (path regex, status, headers)
        self.forbidden: set[str] = set()  # path regexes answered 403
        self.requests: list[str] = []
        self._next_id = 1000

    # -- state -----------------------------------------------------------------------------

    def add_space(self, key: str, read: list[tuple[str, str]]) -> str:
        space_id = str(90000 + len(self.spaces))
        self.spaces[key] = {"id": space_id, "name": key.title()}
        self.permissions[key] = [(t, i, "read") for t, i in read]
        # Space permissions list other operations too; they grant no reading.
        self.permissions[key].append(("group", "g-admins", "administer"))
        return space_id

    def add_group(self, group_id: str, name: str, members: list[str]) -> None:
        self.groups[group_id] = name
        self.members[group_id] = members
        for m in members:
            self.users.setdefault(m, f"{m}@acme.example")

    def add_page(
        self,
        space: str,
        title: str,
        body: str,
        parent: str | None = None,
        parent_type: str = "page",
        page_id: str | None = None,
    ) -> str:
        if page_id is None:
            self._next_id += 1
            page_id = str(self._next_id)
        self.pages[page_id] = {
            "space": space,
            "title": title,
            "body": body,
            "version": 1,
            "parent": parent,
            "parent_type": parent_type if parent else None,
            "status": "current",
            "author": "author-1",
            "edited": "2026-03-02T14:05:11.482Z",
        }
        return page_id

    def edit(self, page_id: str, body: str | None = None, title: str | None = None) -> None:
        page = self.pages[page_id]
        page["body"] = body if body is not None else page["body"]
        page["title"] = title if title is not None else page["title"]
        page["version"] += 1
        page["edited"] = f"2026-03-{page['version'] + 2:02d}T10:00:00.000Z"

    def restrict(self, content_id: str, users: list[str], groups: tuple[str, ...] = ()) -> None:
        self.restrictions[content_id] = (list(users), list(groups))

    # -- rendering -------------------------------------------------------------------------

    def _page(self, page_id: str, body: bool) -> dict[str, Any]:
        state = self.pages[page_id]
        page = fixture("page")
        page.update(
            id=page_id,
            status=state["status"],
            title=state["title"],
            spaceId=self.spaces[state["space"]]["id"],
            parentId=state["parent"],
            parentType=state["parent_type"],
            authorId=state["author"],
        )
        page["version"].update(number=state["version"], createdAt=state["edited"])
        page["_links"]["webui"] = f"/spaces/{state['space']}/pages/{page_id}"
        if body:
            page["body"]["storage"]["value"] = state["body"]
        else:
            page["body"] = {}
        return page

    def _user(self, account_id: str) -> dict[str, Any]:
        user = fixture("user")
        user.update(
            accountId=account_id,
            email=self.users.get(account_id, ""),
            publicName=account_id,
            displayName=account_id,
        )
        return user

    def _group(self, group_id: str) -> dict[str, Any]:
        group = fixture("group")
        group.update(id=group_id, name=self.groups[group_id])
        return group

    def _cursor(self, path: str, query: Mapping[str, str], items: list[Any]) -> Answer:
        limit = min(int(query.get("limit", 25)), self.cap)
        offset = int(base64.urlsafe_b64decode(query["cursor"]).decode()) if "cursor" in query else 0
        chunk = items[offset : offset + limit]
        links: dict[str, str] = {"base": f"{self.base}/wiki"}
        headers: dict[str, str] = {}
        if offset + limit < len(items):
            cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            rest = {k: v for k, v in query.items() if k != "cursor"}
            links["next"] = f"{path}?{urlencode({**rest, 'cursor': cursor})}"
            headers["Link"] = f'<{links["next"]}>; rel="next", <{self.base}/wiki>; rel="base"'
        return 200, headers, {"results": chunk, "_links": links}

    def _offset(self, path: str, query: Mapping[str, str], items: list[Any]) -> Answer:
        start, limit = int(query.get("start", 0)), min(int(query.get("limit", 25)), self.cap)
        chunk = items[start : start + limit]
        links = {"base": f"{self.base}/wiki", "context": "/wiki", "self": f"{self.base}{path}"}
        if start + limit < len(items):
            links["next"] = f"{path.removeprefix('/wiki')}?start={start + limit}&limit={limit}"
        return (
            200,
            {},
            {
                "results": chunk,
                "start": start,
                "limit": limit,
                "size": len(chunk),
                "_links": links,
            },
        )

    # -- the API ---------------------------------------------------------------------------

    def handle(self, path: str, query: Mapping[str, str], authorization: str) -> Answer:
        self.requests.append(path + ("?" + urlencode(query) if query else ""))
        expected = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
        if authorization != expected:
            return 401, {}, fixture("error_401")
        for i, (pattern, status, headers) in enumerate(self.faults):
            if re.search(pattern, path):
                del self.faults[i]
                return status, headers, {"message": "injected"}
        if any(re.search(p, path) for p in self.forbidden):
            return 403, {}, {"statusCode": 403, "message": "Forbidden"}
        return self._route(path, query)

    def _route(self, path: str, query: Mapping[str, str]) -> Answer:
        not_found: Answer = (404, {}, {"statusCode": 404, "message": "Not Found"})
        by_id = {s["id"]: k for k, s in self.spaces.items()}
        if path == "/wiki/api/v2/spaces":
            keys = query.get("keys", "").split(",")
            found = []
            for key in keys:
                if key in self.spaces:
                    space = fixture("space")
                    space.update(key=key, **self.spaces[key])
                    space["_links"]["webui"] = f"/spaces/{key}"
                    found.append(space)
            return self._cursor(path, query, found)
        if m := re.fullmatch(r"/wiki/api/v2/spaces/(\w+)/permissions", path):
            if m[1] not in by_id:
                return not_found
            perms = []
            for n, (kind, pid, op) in enumerate(self.permissions[by_id[m[1]]]):
                perm = fixture("space_permission")
                perm.update(id=str(n + 1), principal={"type": kind, "id": pid})
                perm["operation"]["key"] = op
                perms.append(perm)
            return self._cursor(path, query, perms)
        if m := re.fullmatch(r"/wiki/api/v2/spaces/(\w+)/pages", path):
            if m[1] not in by_id:
                return not_found
            statuses = query.get("status", "current,archived").split(",")
            ids = [
                i
                for i, p in self.pages.items()
                if p["space"] == by_id[m[1]] and p["status"] in statuses
            ]
            body = query.get("body-format") == "storage"
            return self._cursor(path, query, [self._page(i, body) for i in ids])
        if m := re.fullmatch(r"/wiki/api/v2/pages/(\w+)", path):
            status = self.pages[m[1]]["status"] if m[1] in self.pages else None
            if status not in query.get("status", "current").split(","):
                return not_found
            if m[1] in self.broken:
                return 403, {}, {"statusCode": 403, "message": "Forbidden"}
            return 200, {}, self._page(m[1], query.get("body-format") == "storage")
        if m := re.fullmatch(r"/wiki/api/v2/pages/(\w+)/ancestors", path):
            chain: list[dict[str, str]] = []
            parent = self.pages[m[1]]["parent"] if m[1] in self.pages else None
            while parent is not None:
                kind = "folder" if parent in self.folders else "page"
                chain.insert(0, {**fixture("ancestor"), "id": parent, "type": kind})
                parent = self.folders[parent] if kind == "folder" else self.pages[parent]["parent"]
            return self._cursor(path, query, chain)
        if m := re.fullmatch(r"/wiki/rest/api/content/(\w+)/restriction/byOperation/read", path):
            if m[1] not in self.pages and m[1] not in self.folders:
                return not_found
            users, groups = self.restrictions.get(m[1], ([], []))
            start, limit = int(query.get("start", 0)), min(int(query.get("limit", 100)), self.cap)
            restriction = fixture("restriction_read")
            restriction["content"]["id"] = m[1]
            for kind, items in (
                ("user", [self._user(u) for u in users]),
                ("group", [self._group(g) for g in groups]),
            ):
                chunk = items[start : start + limit]
                restriction["restrictions"][kind].update(
                    results=chunk, start=start, limit=limit, size=len(chunk)
                )
            return 200, {}, restriction
        if path == "/wiki/rest/api/group":
            return self._offset(path, query, [self._group(g) for g in self.groups])
        if m := re.fullmatch(r"/wiki/rest/api/group/([\w-]+)/membersByGroupId", path):
            if m[1] not in self.groups:
                return not_found
            return self._offset(path, query, [self._user(u) for u in self.members[m[1]]])
        if path == "/wiki/rest/api/user":
            if query.get("accountId") not in self.users:
                return not_found
            return 200, {}, self._user(query["accountId"])
        return not_found

    # -- transports ------------------------------------------------------------------------

    def mock_transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            query = dict(parse_qsl(request.url.query.decode()))
            status, headers, body = self.handle(
                request.url.path, query, request.headers.get("Authorization", "")
            )
            return httpx.Response(status, headers=headers, json=body)

        return httpx.MockTransport(handler)

    def werkzeug_handler(self, request: Request) -> Response:
        query = dict(parse_qsl(urlsplit(request.url).query))
        status, headers, body = self.handle(
            request.path, query, request.headers.get("Authorization", "")
        )
        return Response(
            json.dumps(body), status=status, headers=headers, content_type="application/json"
        )


def _config(base: str = "https://acme.atlassian.net", **extra: Any) -> ConfluenceConfig:
    data: dict[str, Any] = {
        "base_url": base,
        "email": EMAIL,
        "api_token": {"env": TOKEN_ENV},
        "spaces": ["DOCS"],
        **extra,
    }
    return ConfluenceConfig.model_validate(data)


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _connector(fake: FakeConfluence, sleeps: Sleeps | None = None, **extra: Any) -> Any:
    return ConfluenceConnector(
        _config(fake.base, **extra),
        transport=fake.mock_transport(),
        sleep=sleeps if sleeps is not None else Sleeps(),
    )


def _site() -> FakeConfluence:
    """A space readable by group staff (alice, bob, zoe) and by user carol directly."""
    fake = FakeConfluence()
    fake.add_group("g-staff", "staff", ["alice", "bob", "zoe"])
    fake.add_group("g-eng", "Engineering Team", ["alice", "dave"])
    fake.add_group("g-admins", "site-admins", ["root"])
    fake.add_space("DOCS", [("group", "g-staff"), ("user", "carol"), ("role", "r-viewer")])
    fake.users["carol"] = "carol@acme.example"
    return fake


STAFF = "group:confluence-staff"
ENG = "group:confluence-engineering-team"


class TestConfluenceContract(ConnectorContract):
    @pytest.fixture(autouse=True)
    def _site(self) -> None:
        self.fake = _site()
        self.ids: dict[str, str] = {}

    def connector(self) -> Any:
        return _connector(self.fake)

    def external_id(self, name: str) -> str:
        return f"DOCS/{self.ids[name]}"

    def add(self, name: str, text: str) -> None:
        self.ids[name] = self.fake.add_page("DOCS", name.upper(), f"<p>{text}</p>")

    def change(self, name: str, text: str) -> None:
        self.fake.edit(self.ids[name], body=f"<p>{text}</p>")

    def remove(self, name: str) -> None:
        self.fake.pages[self.ids[name]]["status"] = "trashed"

    def restrict(self, name: str, principal: str) -> Any:
        self.fake.restrict(self.ids[name], [principal.removeprefix("user:")])
        return self.connector()

    def break_(self, name: str) -> None:
        self.fake.broken.add(self.ids[name])


# -- documents ---------------------------------------------------------------------------


def test_the_kind_is_registered() -> None:
    assert registry.connector_class("confluence") is ConfluenceConnector


def test_a_page_becomes_an_html_document() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "Travel & Expenses", "<h2>Trains</h2><p>Second class.</p>")
    changes, checkpoint = run(_connector(fake), None)
    doc = upserts(changes)[f"DOCS/{page}"]
    assert doc.title == "Travel & Expenses"
    assert doc.filename == f"{page}.html" and doc.mime_type == "text/html"
    html = doc.read().decode()
    assert "<title>Travel &amp; Expenses</title>" in html
    assert "<h2>Trains</h2><p>Second class.</p>" in html
    assert doc.url == f"https://acme.atlassian.net/wiki/spaces/DOCS/pages/{page}"
    assert doc.version == "1" and doc.author == "author-1"
    assert (
        doc.updated_at is not None
        and doc.updated_at.isoformat() == "2026-03-02T14:05:11.482000+00:00"
    )
    assert doc.metadata["space"] == "DOCS" and doc.size == len(doc.read())
    assert doc.acl == Acl.of([STAFF, "user:carol"])  # the role grants nothing: fail closed
    assert isinstance(checkpoint, ConfluenceCheckpoint)


def test_a_title_change_changes_the_hash() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "Old", "<p>same</p>")
    first, checkpoint = run(_connector(fake), None)
    fake.edit(page, title="New")
    again, _ = run(_connector(fake), checkpoint)
    assert (
        upserts(again)[f"DOCS/{page}"].content_hash != upserts(first)[f"DOCS/{page}"].content_hash
    )


def test_an_unchanged_page_is_not_fetched_again() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "A", "<p>a</p>")
    _, checkpoint = run(_connector(fake), None)
    fake.requests.clear()
    changes, _ = run(_connector(fake), checkpoint)
    assert changes == []
    assert not any(r.startswith(f"/wiki/api/v2/pages/{page}?") for r in fake.requests)


def test_pagination_follows_cursors_and_offsets() -> None:
    fake = _site()
    fake.cap = 2  # the site answers at most two results a request
    for n in range(7):
        fake.add_page("DOCS", f"Page {n}", f"<p>text {n}</p>")
    fake.add_group("g-extra", "extra", ["erin"])
    changes, _ = run(_connector(fake), None)
    assert len(upserts(changes)) == 7 and not failures(changes)
    listings = [r for r in fake.requests if r.startswith("/wiki/api/v2/spaces/90000/pages")]
    assert len(listings) == 4 and sum("cursor=" in r for r in listings) == 3
    pairs = set(_connector(fake).memberships())  # 4 groups, offset pages of 2
    assert ("user:erin", "group:confluence-extra") in pairs and len(pairs) == 7


def test_the_link_header_is_followed_when_the_body_has_no_next_link() -> None:
    fake = _site()
    fake.cap = 1
    for n in range(3):
        fake.add_page("DOCS", f"Page {n}", "<p>x</p>")
    inner = fake.mock_transport()

    def strip_body_links(request: httpx.Request) -> httpx.Response:
        response = inner.handle_request(request)
        data = json.loads(response.read())
        if isinstance(data, dict) and "results" in data and "cursor" in str(data.get("_links")):
            data["_links"].pop("next")
        return httpx.Response(response.status_code, headers=response.headers, json=data)

    connector = ConfluenceConnector(_config(), transport=httpx.MockTransport(strip_body_links))
    assert len(upserts(run(connector, None)[0])) == 3


def test_a_next_link_off_the_site_is_refused() -> None:
    fake = _site()
    fake.add_page("DOCS", "A", "<p>a</p>")

    def evil(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/permissions"):
            body = {"results": [], "_links": {"next": "https://evil.example/wiki/api/v2/x"}}
            return httpx.Response(200, json=body)
        return fake.mock_transport().handle_request(request)

    connector = ConfluenceConnector(_config(), transport=httpx.MockTransport(evil))
    changes, _ = run(connector, None)
    (failure,) = failures(changes).values()
    assert failure.external_id == "DOCS/" and "off the site" in failure.detail


# -- deletions -------------------------------------------------------------------------------


def test_trashed_and_purged_pages_are_deleted() -> None:
    fake = _site()
    trashed = fake.add_page("DOCS", "T", "<p>t</p>")
    purged = fake.add_page("DOCS", "P", "<p>p</p>")
    kept = fake.add_page("DOCS", "K", "<p>k</p>")
    _, checkpoint = run(_connector(fake), None)
    fake.pages[trashed]["status"] = "trashed"
    del fake.pages[purged]
    changes, after = run(_connector(fake), checkpoint)
    assert deletes(changes) == {f"DOCS/{trashed}", f"DOCS/{purged}"}
    assert isinstance(after, ConfluenceCheckpoint) and set(after.pages) == {f"DOCS/{kept}"}
    assert {r.external_id for r in _connector(fake).list_ids()} == {f"DOCS/{kept}"}


def test_archived_pages_are_kept() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "Old plan", "<p>archived</p>")
    fake.pages[page]["status"] = "archived"
    assert f"DOCS/{page}" in upserts(run(_connector(fake), None)[0])


def test_a_space_that_cannot_be_listed_deletes_nothing() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "A", "<p>a</p>")
    _, checkpoint = run(_connector(fake), None)
    fake.forbidden.add(r"/spaces/\w+/pages$")
    changes, after = run(_connector(fake), checkpoint)
    assert not deletes(changes)
    assert failures(changes)["DOCS/"].reason == "forbidden"
    assert isinstance(after, ConfluenceCheckpoint) and f"DOCS/{page}" in after.pages


def test_a_missing_space_is_a_container_failure() -> None:
    fake = _site()
    fake.add_page("DOCS", "A", "<p>a</p>")
    connector = _connector(fake, spaces=["DOCS", "GONE"])
    changes, _ = run(connector, None)
    assert failures(changes)["GONE/"].reason == "not_found" and len(upserts(changes)) == 1
    with pytest.raises(ConfigError, match="no space GONE"):
        connector.check()


def test_a_failed_page_is_retried_and_not_deleted() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "A", "<p>a</p>")
    _, checkpoint = run(_connector(fake), None)
    fake.edit(page, body="<p>a2</p>")
    fake.broken.add(page)
    changes, after = run(_connector(fake), checkpoint)
    assert failures(changes)[f"DOCS/{page}"].reason == "forbidden" and not deletes(changes)
    fake.broken.clear()
    changes, _ = run(_connector(fake), after)
    assert b"a2" in upserts(changes)[f"DOCS/{page}"].read()


# -- permissions -----------------------------------------------------------------------------


def test_restrictions_intersect_with_the_space_and_are_inherited() -> None:
    fake = _site()
    parent = fake.add_page("DOCS", "Eng", "<p>eng</p>")
    child = fake.add_page("DOCS", "Eng salaries", "<p>numbers</p>", parent=parent)
    grandchild = fake.add_page("DOCS", "Deeper", "<p>deeper</p>", parent=child)
    fake.restrict(parent, [], ("g-eng",))  # alice and dave; dave is not staff
    fake.restrict(child, ["alice", "bob", "carol"])
    docs = upserts(run(_connector(fake), None)[0])
    # parent: staff ∩ eng → alice (staff and eng); dave is not in the space
    assert docs[f"DOCS/{parent}"].acl == Acl.of(["user:alice"])
    # child: also ∩ {alice, bob, carol} → alice; grandchild inherits both restrictions
    assert docs[f"DOCS/{child}"].acl == Acl.of(["user:alice"])
    assert docs[f"DOCS/{grandchild}"].acl == Acl.of(["user:alice"])


def test_a_group_listed_at_every_level_stays_a_group() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "Staff only", "<p>x</p>")
    fake.restrict(page, ["dave"], ("g-staff",))
    acl = upserts(run(_connector(fake), None)[0])[f"DOCS/{page}"].acl
    assert acl == Acl.of([STAFF])  # dave is not in the space; staff keeps its later joiners


def test_an_acl_only_change_keeps_the_hash_and_reaches_descendants() -> None:
    fake = _site()
    parent = fake.add_page("DOCS", "Parent", "<p>p</p>")
    child = fake.add_page("DOCS", "Child", "<p>c</p>", parent=parent)
    first, checkpoint = run(_connector(fake), None)
    fake.restrict(parent, ["bob"])
    again, _ = run(_connector(fake), checkpoint)
    docs = upserts(again)
    assert set(docs) == {f"DOCS/{parent}", f"DOCS/{child}"}
    for key in docs:
        assert docs[key].content_hash == upserts(first)[key].content_hash
        assert docs[key].acl == Acl.of(["user:bob"])
    assert b"<p>c</p>" in docs[f"DOCS/{child}"].read()  # read lazily, on demand


def test_a_restriction_on_a_folder_ancestor_applies() -> None:
    fake = _site()
    fake.folders["5001"] = None
    page = fake.add_page("DOCS", "In a folder", "<p>x</p>", parent="5001", parent_type="folder")
    fake.restrict("5001", ["zoe"])
    acl = upserts(run(_connector(fake), None)[0])[f"DOCS/{page}"].acl
    assert acl == Acl.of(["user:zoe"])
    assert any(r.startswith(f"/wiki/api/v2/pages/{page}/ancestors") for r in fake.requests)


def test_unreadable_restrictions_fail_closed() -> None:
    fake = _site()
    parent = fake.add_page("DOCS", "P", "<p>p</p>")
    child = fake.add_page("DOCS", "C", "<p>c</p>", parent=parent)
    other = fake.add_page("DOCS", "O", "<p>o</p>")
    fake.forbidden.add(rf"/content/{parent}/restriction")
    changes, _ = run(_connector(fake), None)
    assert set(failures(changes)) == {f"DOCS/{parent}", f"DOCS/{child}"}
    assert all(f.reason == "acl_unreadable" for f in failures(changes).values())
    assert set(upserts(changes)) == {f"DOCS/{other}"}


def test_users_can_be_named_by_email() -> None:
    fake = _site()
    fake.users["carol"] = ""  # hidden by her profile visibility: she cannot be named
    page = fake.add_page("DOCS", "A", "<p>a</p>")
    secret = fake.add_page("DOCS", "S", "<p>s</p>")
    fake.restrict(secret, ["alice"])
    docs = upserts(run(_connector(fake, user_id_field="email"), None)[0])
    assert docs[f"DOCS/{page}"].acl == Acl.of([STAFF])
    assert docs[f"DOCS/{secret}"].acl == Acl.of(["user:alice@acme.example"])
    pairs = set(_connector(fake, user_id_field="email").memberships())
    assert ("user:bob@acme.example", STAFF) in pairs


def test_effective_acl_rules() -> None:
    members = {STAFF: frozenset({"user:a", "user:b"}), ENG: frozenset({"user:a", "user:c"})}

    def lookup(group: str) -> frozenset[str] | None:
        return members.get(group)

    space = Level(frozenset({"user:d"}), frozenset({STAFF}))
    assert effective_acl([space], lookup) == Acl.of(["user:d", STAFF])
    assert effective_acl([], lookup) == Acl()
    eng_only = Level(frozenset(), frozenset({ENG}))
    assert effective_acl([space, eng_only], lookup) == Acl.of(["user:a"])
    unknown = Level(frozenset(), frozenset({"group:confluence-unknown"}))
    assert effective_acl([space, unknown], lookup) == Acl()  # members unknown: nobody
    nobody = Level(frozenset(), frozenset())
    assert effective_acl([space, nobody], lookup) == Acl()
    assert group_principal("Site Admins / EU") == "group:confluence-site-admins-eu"
    assert account_principal("557058:f58131cb-b67d") == "user:557058-f58131cb-b67d"


# -- groups ------------------------------------------------------------------------------------


def test_memberships_come_from_confluence_groups() -> None:
    pairs = set(_connector(_site()).memberships())
    assert pairs == {
        ("user:alice", STAFF),
        ("user:bob", STAFF),
        ("user:zoe", STAFF),
        ("user:alice", ENG),
        ("user:dave", ENG),
        ("user:root", "group:confluence-site-admins"),
    }


# -- the HTTP edge -----------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_wait() -> None:
    fake = _site()
    fake.add_page("DOCS", "A", "<p>a</p>")
    fake.faults.append((r"/spaces/\w+/pages$", 429, {"Retry-After": "7"}))
    sleeps = Sleeps()
    changes, _ = run(_connector(fake, sleeps), None)
    assert len(upserts(changes)) == 1 and not failures(changes)
    assert sleeps == [7.0]


def test_500_is_retried_with_backoff() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "A", "<p>a</p>")
    fake.faults.append((rf"/pages/{page}$", 500, {}))
    sleeps = Sleeps()
    changes, _ = run(_connector(fake, sleeps), None)
    assert len(upserts(changes)) == 1 and not failures(changes)
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 30


def test_bad_credentials_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _site()
    fake.add_page("DOCS", "A", "<p>a</p>")
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    with pytest.raises(CredentialError, match=rf"refused {EMAIL} .*{TOKEN_ENV}"):
        _connector(fake).check()
    with pytest.raises(CredentialError, match="401"):
        run(_connector(fake), None)
    with pytest.raises(CredentialError):
        list(_connector(fake).memberships())


def test_a_missing_token_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        _connector(_site()).check()


def test_the_config_refuses_a_plain_token_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="reference"):
        _config(api_token="plain-secret")
    with pytest.raises(ValidationError, match="base_url"):
        _config(base="acme.atlassian.net")
    with pytest.raises(ValidationError):
        _config(spaces=[])
    with pytest.raises(ValidationError, match="space key"):
        _config(spaces=["DOCS/x"])
    with pytest.raises(ValidationError):
        _config(user_id_field="name")
    assert _config(base="https://acme.atlassian.net/wiki/").base_url == "https://acme.atlassian.net"
    assert "api_token" in ConfluenceConfig.model_json_schema()["required"]


def test_a_server_error_that_persists_is_a_source_failure_not_a_crash() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "A", "<p>a</p>")
    other = fake.add_page("DOCS", "B", "<p>b</p>")
    fake.faults.extend([(rf"/pages/{page}$", 503, {})] * 6)
    changes, _ = run(_connector(fake), None)
    assert failures(changes)[f"DOCS/{page}"].reason == "unreadable"
    assert f"DOCS/{other}" in upserts(changes)


def test_readme_documents_every_config_key() -> None:
    readme = (Path(__file__).parents[2] / "connectors" / "confluence" / "README.md").read_text()
    for name in ConfluenceConfig.model_fields:
        assert f"`{name}`" in readme, name


# -- end to end through the CLI against a real local HTTP server --------------------------------

BIN = Path(sys.executable).parent / "context-server"


@pytest.mark.model
def test_cli_sync_and_search_against_a_local_server(httpserver: HTTPServer, tmp_path: Path) -> None:
    base = httpserver.url_for("/").rstrip("/")
    fake = FakeConfluence(base=base)
    fake.add_group("g-staff", "staff", ["alice", "bob"])
    fake.add_space("DOCS", [("group", "g-staff")])
    fake.add_page("DOCS", "Lyon office", "<p>The Lyon office opens at nine. Coffee is free.</p>")
    salaries = fake.add_page(
        "DOCS", "Salary bands", "<p>The salary band for senior engineers is 90,000 EUR.</p>"
    )
    fake.restrict(salaries, ["alice"])
    httpserver.expect_request(re.compile(".*")).respond_with_handler(fake.werkzeug_handler)

    source = tmp_path / "wiki.yaml"
    source.write_text(
        "name: wiki\nkind: confluence\nconfig:\n"
        f"  base_url: {base}\n  email: {EMAIL}\n"
        f"  api_token: {{env: {TOKEN_ENV}}}\n  spaces: [DOCS]\n"
    )
    principals = tmp_path / "principals.yaml"
    principals.write_text("groups:\n  everyone: [user:alice, user:bob]\n")
    env = {**os.environ, "CONTEXT_SERVER_HOME": str(tmp_path / "home"), TOKEN_ENV: TOKEN}
    env.pop("CONTEXT_SERVER_DATABASE_URL", None)
    env.pop("CONTEXT_SERVER_QDRANT_URL", None)

    def cli(*args: str) -> Any:
        proc = subprocess.run(
            [str(BIN), *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return json.loads(proc.stdout)

    cli("principals", "load", str(principals), "--json")
    cli("sources", "add", str(source), "--json")
    report = cli("sync", "wiki", "--json")
    assert (report["upserted"], report["failed"]) == (2, 0), report

    def titles(query: str, who: str) -> list[str]:
        results = cli("search", query, "--as", who, "-k", "3", "--json")["results"]
        return [r["title"] for r in results]

    assert titles("salary band senior engineers", "user:alice")[0] == "Salary bands"
    assert "Salary bands" not in titles("salary band senior engineers", "user:bob")
    # bob reads the space through group staff, a membership synced from Confluence
    assert titles("office opens coffee", "user:bob")[0] == "Lyon office"
    assert titles("office opens coffee", "user:mallory") == []


def test_sync_deletes_and_upserts_are_values() -> None:
    fake = _site()
    page = fake.add_page("DOCS", "A", "<p>a</p>")
    changes, checkpoint = run(_connector(fake), None)
    assert all(isinstance(c, Upsert) for c in changes)
    del fake.pages[page]
    assert run(_connector(fake), checkpoint)[0] == [Delete(f"DOCS/{page}")]


def test_restrictions_are_read_page_by_page_and_memberships_need_the_group_list() -> None:
    fake = _site()
    fake.cap = 2
    page = fake.add_page("DOCS", "Many readers", "<p>x</p>")
    fake.restrict(page, ["alice", "bob", "zoe", "carol", "dave"])
    acl = upserts(run(_connector(fake), None)[0])[f"DOCS/{page}"].acl
    assert acl == Acl.of(["user:alice", "user:bob", "user:zoe", "user:carol"])
    fake.forbidden.add(r"/rest/api/group$")
    with pytest.raises(SourceError, match="groups cannot be listed"):
        list(_connector(fake).memberships())


def test_one_malformed_page_is_a_failure_not_a_failed_sync() -> None:
    fake = _site()
    good = fake.add_page("DOCS", "Good", "<p>fine</p>")
    odd = fake.add_page("DOCS", "Odd", "<p>odd</p>")
    fake.pages[odd]["version"] = "seven"  # not a version number: ValueError reading it
    changes, checkpoint = run(_connector(fake), None)
    assert set(upserts(changes)) == {f"DOCS/{good}"}
    assert failures(changes)[f"DOCS/{odd}"].reason == "malformed"
    # Still there (a failure, not a deletion): the cheap listing names it.
    assert {r.external_id for r in _connector(fake).list_ids()} == {f"DOCS/{good}", f"DOCS/{odd}"}
    fake.pages[odd]["version"] = 2  # fixed at the source: indexed on the next sync
    again, _ = run(_connector(fake), checkpoint)
    assert f"DOCS/{odd}" in upserts(again) and not failures(again)
