"""The mediawiki connector against the shared contract, a fake Action API, and the real CLI.

``FakeWiki`` is a fake of the MediaWiki Action API (``api.php``, ``format=json``,
``formatversion=2``) on ``httpx.MockTransport``, shaped as the API documents it: the
``continue`` object for ``list=allpages``, ``list=recentchanges`` (``rccontinue``) and
``prop=revisions`` (``rvcontinue``); ``missing`` pages; ``texthidden`` slots; log events
(``delete/delete``, ``delete/restore``, ``move/move`` with ``logparams``); API errors as
HTTP 200 with an ``error`` object; bot-password login with a login token and a session
cookie. Static responses live in ``fixtures/mediawiki/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import httpx
import pytest
from pydantic import ValidationError

from connectors import registry
from connectors.base import Acl, Change, GroupSource
from connectors.errors import ConfigError, CredentialError, SourceError
from connectors.mediawiki.config import MediaWikiConfig, TitleRule
from connectors.mediawiki.connector import MediaWikiCheckpoint, MediaWikiConnector
from connectors.mediawiki.wikitext import convert, strip_templates, to_markdown
from tests.contract.connector_contract import ConnectorContract, deletes, failures, upserts
from tests.contract.connector_contract import run as contract_run

FIXTURES = Path(__file__).parent / "fixtures" / "mediawiki"
BASE = "https://wiki.example.org/w"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def mw_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakePage:
    pageid: int
    ns: int
    title: str
    content: str
    revid: int
    user: str
    timestamp: str
    redirect: bool = False
    hidden: bool = False
    model: str = "wikitext"


class FakeWiki:
    """A mutable wiki behind ``api.php``; ``limit`` is what ``max`` means here (small, to
    page), ``rv_budget`` how many pages' content one response holds (``rvcontinue``)."""

    NS_PREFIX: ClassVar[dict[int, str]] = {0: "", 2: "User:", 4: "Project:", 10: "Template:"}

    def __init__(self, limit: int = 500, rv_budget: int = 50) -> None:
        self.pages: dict[int, FakePage] = {}
        self.rc: list[dict[str, Any]] = []
        self.limit = limit
        self.rv_budget = rv_budget
        self.clock = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        self._ids = 100
        self._revs = 1000
        self._rcid = 5000
        self.requests: list[httpx.Request] = []
        self.queued: list[httpx.Response] = []  # served before anything else (429, 500…)
        self.private = False
        self.bearer: str | None = None  # when set, every request needs this token
        self.bot: tuple[str, str] | None = None  # (lgname, lgpassword) accepted by login
        self.sessions: set[str] = set()

    # -- mutations ---------------------------------------------------------------------

    def _tick(self) -> str:
        self.clock += timedelta(minutes=10)
        return mw_time(self.clock)

    def _log_rc(self, kind: str, **fields: Any) -> None:
        self._rcid += 1
        self.rc.append({"type": kind, "rcid": self._rcid, **fields})

    def create(self, title: str, content: str, ns: int = 0, user: str = "Alice") -> int:
        self._ids += 1
        self._revs += 1
        ts = self._tick()
        full = self.NS_PREFIX[ns] + title
        self.pages[self._ids] = FakePage(self._ids, ns, full, content, self._revs, user, ts)
        self._log_rc(
            "new",
            ns=ns,
            title=full,
            pageid=self._ids,
            revid=self._revs,
            old_revid=0,
            user=user,
            timestamp=ts,
        )
        return self._ids

    def edit(self, pageid: int, content: str, user: str = "Bob") -> None:
        page = self.pages[pageid]
        old = page.revid
        self._revs += 1
        page.content, page.revid, page.user, page.timestamp = (
            content,
            self._revs,
            user,
            self._tick(),
        )
        self._log_rc(
            "edit",
            ns=page.ns,
            title=page.title,
            pageid=pageid,
            revid=page.revid,
            old_revid=old,
            user=user,
            timestamp=page.timestamp,
        )

    def delete(self, pageid: int, report_pageid: bool = False) -> FakePage:
        page = self.pages.pop(pageid)
        self._log(page.ns, page.title, pageid if report_pageid else 0, "delete", "delete", {})
        return page

    def restore(self, page: FakePage) -> None:
        self.pages[page.pageid] = page
        self._log(
            page.ns,
            page.title,
            page.pageid,
            "delete",
            "restore",
            {"count": {"revisions": 1, "files": 0}},
        )

    def move(self, pageid: int, new_title: str, new_ns: int = 0, redirect: bool = True) -> None:
        page = self.pages[pageid]
        old_title, old_ns = page.title, page.ns
        page.title, page.ns = self.NS_PREFIX[new_ns] + new_title, new_ns
        params: dict[str, Any] = {"target_ns": new_ns, "target_title": page.title}
        if redirect:
            self._ids += 1
            self._revs += 1
            self.pages[self._ids] = FakePage(
                self._ids,
                old_ns,
                old_title,
                f"#REDIRECT [[{page.title}]]",
                self._revs,
                "Alice",
                mw_time(self.clock),
                redirect=True,
            )
        else:
            params["suppressredirect"] = True
        self._log(old_ns, old_title, pageid, "move", "move", params)

    def _log(self, ns: int, title: str, pageid: int, ltype: str, action: str, params: Any) -> None:
        self._log_rc(
            "log",
            ns=ns,
            title=title,
            pageid=pageid,
            revid=0,
            old_revid=0,
            user="Admin",
            timestamp=self._tick(),
            logid=self._rcid,
            logtype=ltype,
            logaction=action,
            logparams=params,
        )

    def by_title(self, title: str) -> FakePage | None:
        return next((p for p in self.pages.values() if p.title == title), None)

    # -- the API -----------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.queued:
            return self.queued.pop(0)
        assert request.url.path == "/w/api.php", request.url.path
        params = dict(request.url.params)
        assert params.get("format") == "json" and params.get("formatversion") == "2"
        bearer = request.headers.get("Authorization")
        if self.bearer is not None and bearer != f"Bearer {self.bearer}":
            return httpx.Response(401, json=fixture("error_oauth_invalid.json"))
        if params.get("action") == "login":
            return self._login(request)
        session = request.headers.get("cookie", "").removeprefix("examplewiki_session=")
        logged_in = session in self.sessions or self.bearer is not None
        if params.get("assert") == "user" and not logged_in:
            return self._error("assertuserfailed", "You are no longer logged in.")
        if params.get("meta") == "tokens":
            return httpx.Response(200, json=fixture("login_token.json"))
        if self.private and not logged_in:
            return httpx.Response(200, json=fixture("error_readapidenied.json"))
        assert params.get("action") == "query"
        body: dict[str, Any] = {"batchcomplete": True, "query": {}}
        if params.get("meta") == "siteinfo":
            body = fixture("siteinfo.json")
            body["query"]["general"]["time"] = mw_time(self.clock)
        if params.get("meta") == "userinfo":
            if logged_in:
                user = {"id": 7, "name": "Indexer", "rights": ["read", "writeapi"]}
                body["query"]["userinfo"] = user
            else:
                body = fixture("userinfo_anon.json")
        if params.get("list") == "allpages":
            self._allpages(params, body)
        if params.get("list") == "recentchanges":
            self._recentchanges(params, body)
        if "revisions" in params.get("prop", ""):
            self._revisions(params, body)
        return httpx.Response(200, json=body)

    @staticmethod
    def _error(code: str, info: str) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "error": {
                    "code": code,
                    "info": info,
                    "docref": "See https://wiki.example.org/w/api.php for API usage.",
                }
            },
        )

    def _login(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        form = dict(parse_qsl(request.content.decode()))
        assert form.get("lgtoken") == fixture("login_token.json")["query"]["tokens"]["logintoken"]
        if self.bot is None or (form.get("lgname"), form.get("lgpassword")) != self.bot:
            return httpx.Response(200, json=fixture("login_failed.json"))
        session = f"s{len(self.sessions) + 1}"
        self.sessions.add(session)
        return httpx.Response(
            200,
            json={"login": {"result": "Success", "lguserid": 7, "lgusername": "Indexer"}},
            headers={"Set-Cookie": f"examplewiki_session={session}; path=/; HttpOnly"},
        )

    def _limit(self, value: str | None) -> int:
        return self.limit if value in (None, "max") else min(int(value), self.limit)

    def _allpages(self, params: dict[str, str], body: dict[str, Any]) -> None:
        ns = int(params.get("apnamespace", "0"))
        pages = sorted(
            (p for p in self.pages.values() if p.ns == ns),
            key=lambda p: p.title,
        )
        if params.get("apfilterredir") == "nonredirects":
            pages = [p for p in pages if not p.redirect]
        start = params.get("apcontinue")
        if start is not None:
            pages = [p for p in pages if p.title.split(":")[-1] >= start.replace("_", " ")]
        limit = self._limit(params.get("aplimit"))
        shown, rest = pages[:limit], pages[limit:]
        body["query"]["allpages"] = [
            {"pageid": p.pageid, "ns": p.ns, "title": p.title} for p in shown
        ]
        if rest:
            body.pop("batchcomplete", None)
            body["continue"] = {
                "apcontinue": rest[0].title.split(":")[-1].replace(" ", "_"),
                "continue": "-||",
            }

    def _recentchanges(self, params: dict[str, str], body: dict[str, Any]) -> None:
        newer = params.get("rcdir") == "newer"
        items = sorted(self.rc, key=lambda r: (r["timestamp"], r["rcid"]), reverse=not newer)
        if "rcstart" in params:
            start = params["rcstart"]
            items = [
                r for r in items if (r["timestamp"] >= start if newer else r["timestamp"] <= start)
            ]
        if "rccontinue" in params:
            ts, rcid = params["rccontinue"].split("|")
            items = [
                r
                for r in items
                if (
                    r["timestamp"].replace("-", "").replace(":", "").replace("T", "").rstrip("Z"),
                    r["rcid"],
                )
                >= (ts, int(rcid))
            ]
        types = params.get("rctype", "edit|new|log").split("|")
        items = [r for r in items if r["type"] in types]
        limit = self._limit(params.get("rclimit"))
        shown, rest = items[:limit], items[limit:]
        body["query"]["recentchanges"] = [self._rc_shape(r, params) for r in shown]
        if rest:
            nxt = rest[0]
            compact = (
                nxt["timestamp"].replace("-", "").replace(":", "").replace("T", "").rstrip("Z")
            )
            body["continue"] = {"rccontinue": f"{compact}|{nxt['rcid']}", "continue": "-||"}

    @staticmethod
    def _rc_shape(r: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        props = params.get("rcprop", "title|timestamp|ids").split("|")
        out: dict[str, Any] = {"type": r["type"]}
        if "title" in props:
            out.update(ns=r["ns"], title=r["title"])
        if "ids" in props:
            out.update(
                pageid=r["pageid"], revid=r["revid"], old_revid=r["old_revid"], rcid=r["rcid"]
            )
        if "user" in props:
            out["user"] = r["user"]
        if "timestamp" in props:
            out["timestamp"] = r["timestamp"]
        if "loginfo" in props and r["type"] == "log":
            out.update(
                logid=r["logid"],
                logtype=r["logtype"],
                logaction=r["logaction"],
                logparams=r["logparams"],
            )
        return out

    def _revisions(self, params: dict[str, str], body: dict[str, Any]) -> None:
        assert params.get("rvslots") == "main"
        requested: list[FakePage | dict[str, Any]] = []
        if "pageids" in params:
            for raw in params["pageids"].split("|"):
                found = self.pages.get(int(raw))
                requested.append(found if found else {"pageid": int(raw), "missing": True})
        else:
            for title in params["titles"].split("|"):
                found = self.by_title(title)
                requested.append(found if found else {"ns": 0, "title": title, "missing": True})
        assert len(requested) <= 50
        first = int(params.get("rvcontinue", "0"))
        out: list[dict[str, Any]] = []
        for i, page in enumerate(requested):
            if isinstance(page, dict):
                out.append(page)
                continue
            shape: dict[str, Any] = {
                "pageid": page.pageid,
                "ns": page.ns,
                "title": page.title,
                "contentmodel": page.model,
                "pagelanguage": "en",
                "touched": page.timestamp,
                "lastrevid": page.revid,
                "length": len(page.content),
            }
            if page.redirect:
                shape["redirect"] = True
            if first <= i < first + self.rv_budget:
                slot: dict[str, Any] = {"contentmodel": page.model, "contentformat": "text/x-wiki"}
                if page.hidden:
                    slot["texthidden"] = True
                else:
                    slot["content"] = page.content
                shape["revisions"] = [
                    {
                        "revid": page.revid,
                        "parentid": page.revid - 1,
                        "user": page.user,
                        "timestamp": page.timestamp,
                        "slots": {"main": slot},
                    }
                ]
            out.append(shape)
        if first + self.rv_budget < len(requested):
            body["continue"] = {"rvcontinue": str(first + self.rv_budget), "continue": "||"}
        body["query"]["pages"] = out


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def run(
    connector: MediaWikiConnector, since: MediaWikiCheckpoint | None
) -> tuple[list[Change], MediaWikiCheckpoint]:
    changes, checkpoint = contract_run(connector, since)
    assert isinstance(checkpoint, MediaWikiCheckpoint)
    return changes, checkpoint


def make(
    wiki: FakeWiki, sleep: Callable[[float], None] | None = None, **config: Any
) -> MediaWikiConnector:
    config.setdefault("read", ["group:everyone"])
    parsed = MediaWikiConfig.model_validate({"base_url": BASE, **config})
    return MediaWikiConnector(parsed, transport=wiki.transport(), sleep=sleep or Sleeps())


# -- the shared contract ----------------------------------------------------------------


class TestMediaWikiContract(ConnectorContract):
    @pytest.fixture(autouse=True)
    def _wiki(self) -> None:
        self.wiki = FakeWiki(limit=2, rv_budget=2)  # small pages: continuation everywhere
        self.ids: dict[str, int] = {}
        self.rules: list[TitleRule] = []

    def connector(self) -> Any:
        return make(self.wiki, title_rules=self.rules)

    def external_id(self, name: str) -> str:
        return str(self.ids[name])

    def add(self, name: str, text: str) -> None:
        self.ids[name] = self.wiki.create(name.upper(), f"== {name.upper()} ==\n{text}")

    def change(self, name: str, text: str) -> None:
        self.wiki.edit(self.ids[name], f"== {name.upper()} ==\n{text}")

    def remove(self, name: str) -> None:
        self.wiki.delete(self.ids[name])

    def restrict(self, name: str, principal: str) -> Any:
        self.rules.append(TitleRule(prefix=name.upper(), read=[principal]))
        return self.connector()

    def break_(self, name: str) -> None:
        self.wiki.pages[self.ids[name]].hidden = True


# -- documents, pagination, incremental ----------------------------------------------------


def test_the_kind_is_registered_and_groups_come_from_the_config() -> None:
    assert registry.connector_class("mediawiki") is MediaWikiConnector
    connector = make(FakeWiki(), groups={"hr": ["user:alice", "group:payroll"], "ops": []})
    assert isinstance(connector, GroupSource)
    assert sorted(connector.memberships()) == [
        ("group:payroll", "group:hr"),
        ("user:alice", "group:hr"),
    ]


def test_a_page_becomes_a_markdown_document() -> None:
    wiki = FakeWiki()
    pid = wiki.create(
        "Release process",
        "Intro {{Infobox|x=1}} with '''bold'''.\n== Steps ==\n"
        "* Tag [[Git|the repo]]\n[[Category:Engineering]]",
        user="Carol",
    )
    (doc,) = upserts(run(make(wiki), None)[0]).values()
    assert doc.external_id == str(pid)
    assert doc.title == "Release process"
    assert doc.url == "https://wiki.example.org/wiki/Release_process"
    assert doc.filename == f"{pid}.md" and doc.mime_type == "text/markdown"
    assert doc.read() == b"Intro  with **bold**.\n\n## Steps\n\n- Tag the repo\n"
    assert doc.author == "Carol" and doc.version == str(wiki.pages[pid].revid)
    assert doc.updated_at == datetime.fromisoformat(
        wiki.pages[pid].timestamp.replace("Z", "+00:00")
    )
    assert doc.metadata == {"namespace": "0", "revision": doc.version, "categories": "Engineering"}
    assert doc.acl == Acl.of(["group:everyone"])


def test_pagination_of_listing_content_and_recent_changes() -> None:
    wiki = FakeWiki(limit=3, rv_budget=2)
    ids = [wiki.create(f"Page {i}", f"text {i}") for i in range(8)]
    wiki.create("Help", "project page", ns=4)
    connector = make(wiki, namespaces=[0, 4])
    changes, checkpoint = run(connector, None)
    assert set(upserts(changes)) == {str(i) for i in ids} | {str(max(ids) + 1)}
    queries = [dict(r.url.params) for r in wiki.requests]
    assert sum("apcontinue" in q for q in queries) >= 2  # allpages followed its continue
    assert sum("rvcontinue" in q for q in queries) == 3  # 8 pages, 2 per response
    for i in ids[:7]:
        wiki.edit(i, f"edited {i}")
    wiki.requests.clear()
    again, _ = run(make(wiki, namespaces=[0, 4]), checkpoint)
    # rcstart is inclusive: the change at the cursor (the Help page's creation) is re-read.
    assert set(upserts(again)) == {str(i) for i in ids[:7]} | {str(max(ids) + 1)}
    assert all(upserts(again)[str(i)].read() == f"edited {i}\n".encode() for i in ids[:7])
    rc = [dict(r.url.params) for r in wiki.requests if "rcdir" in r.url.params]
    assert len(rc) >= 3 and "rccontinue" in rc[-1]  # recentchanges paged too
    assert (
        rc[0]["rcprop"] == "title|ids|timestamp|loginfo|user" and rc[0]["rctype"] == "edit|new|log"
    )


def test_deletions_moves_and_restores() -> None:
    wiki = FakeWiki()
    keep = wiki.create("Keep", "kept")
    moved = wiki.create("Old name", "moving page")
    leaving = wiki.create("Leaving", "moved to a user page")
    gone = wiki.create("Gone", "deleted with its page id reported")
    back = wiki.create("Back", "deleted then restored")
    changes, checkpoint = run(make(wiki), None)
    assert len(upserts(changes)) == 5
    wiki.move(moved, "New name")  # leaves a redirect at the old title
    wiki.move(leaving, "Indexer/Leaving", new_ns=2, redirect=False)
    wiki.delete(gone, report_pageid=True)
    restored = wiki.delete(back)
    wiki.restore(restored)
    changes, after = run(make(wiki), checkpoint)
    docs = upserts(changes)
    assert docs[str(moved)].title == "New name"
    assert docs[str(moved)].url == "https://wiki.example.org/wiki/New_name"
    assert str(back) in docs and str(keep) not in docs
    assert deletes(changes) == {str(leaving), str(gone)}
    redirect = wiki.by_title("Old name")
    assert redirect is not None and str(redirect.pageid) not in docs  # redirects are not indexed
    assert after.pages[str(moved)] == "New name" and str(gone) not in after.pages
    # A full listing agrees: the redirect and the user page are not there.
    assert {r.external_id for r in make(wiki).list_ids()} == {str(keep), str(moved), str(back)}


def test_a_move_changes_title_and_hash_but_not_the_id() -> None:
    wiki = FakeWiki()
    pid = wiki.create("Draft", "same text")
    before, checkpoint = run(make(wiki), None)
    wiki.move(pid, "Final")
    after, _ = run(make(wiki), checkpoint)
    assert upserts(after)[str(pid)].content_hash != upserts(before)[str(pid)].content_hash
    assert not deletes(after)


def test_pages_outside_the_synced_namespaces_are_ignored() -> None:
    wiki = FakeWiki()
    wiki.create("Main", "main text")
    other = wiki.create("Other", "more text")
    _, checkpoint = run(make(wiki), None)
    template = wiki.create("Boilerplate", "{{x}}", ns=10)
    wiki.requests.clear()
    changes, _ = run(make(wiki), checkpoint)
    assert set(upserts(changes)) == {str(other)}  # the change at the cursor, re-read
    assert not any(str(template) in str(r.url) for r in wiki.requests)


def test_a_cursor_past_the_recent_changes_horizon_falls_back_to_a_full_listing() -> None:
    wiki = FakeWiki()
    a = wiki.create("A", "alpha")
    b = wiki.create("B", "bravo")
    _, checkpoint = run(make(wiki), None)
    del wiki.pages[b]  # its deletion is no longer in recentchanges
    wiki.rc.clear()
    old = checkpoint.model_copy(update={"cursor": mw_time(datetime.now(UTC) - timedelta(days=120))})
    changes, after = run(make(wiki), old)
    assert set(upserts(changes)) == {str(a)} and deletes(changes) == {str(b)}
    assert old.cursor is not None
    assert after.cursor is not None and after.cursor > old.cursor
    # A wiki keeping changes longer is told so by rc_max_age_days: no re-listing then.
    changes, _ = run(make(wiki, rc_max_age_days=365), old)
    assert not changes


def test_the_overlap_window_rereads_recent_changes() -> None:
    wiki = FakeWiki()
    pid = wiki.create("A", "alpha")
    _, checkpoint = run(make(wiki), None)
    starts = []
    run(make(wiki, overlap_seconds=600), checkpoint)
    for r in wiki.requests:
        if r.url.params.get("rcdir") == "newer":
            starts.append(r.url.params["rcstart"])
    assert checkpoint.cursor is not None
    cursor = datetime.fromisoformat(checkpoint.cursor.replace("Z", "+00:00"))
    assert starts == [mw_time(cursor - timedelta(seconds=600))]
    assert pid


def test_content_models_and_failures() -> None:
    wiki = FakeWiki()
    css = wiki.create("Common.css", "body { color: red }")
    wiki.pages[css].model = "css"
    img = wiki.create("Diagram", "binary")
    wiki.pages[img].model = "image-ish"
    big = wiki.create("Big", "x" * 2000)
    empty = wiki.create("Empty", "{{only a template}}")
    changes, _ = run(make(wiki, max_page_bytes=1000), None)
    docs, bad = upserts(changes), failures(changes)
    assert (
        docs[str(css)].filename.endswith(".txt")
        and docs[str(css)].metadata["content_model"] == "css"
    )
    assert bad[str(img)].reason == "unsupported_type" and bad[str(big)].reason == "too_large"
    assert docs[str(empty)].read() == b"Empty"  # nothing but a template: the title is the text


# -- permissions ---------------------------------------------------------------------------


def test_acl_from_wiki_namespace_and_title_rules() -> None:
    wiki = FakeWiki()
    main = wiki.create("Handbook", "all staff")
    hr = wiki.create("HR/Salaries", "confidential", ns=4)
    policy = wiki.create("Policies", "project page", ns=4)
    connector = make(
        wiki,
        namespaces=[0, 4],
        read=["group:staff"],
        deny=["user:mallory"],
        namespace_acl={4: {"read": ["group:editors"]}},
        title_rules=[{"prefix": "Project:HR/Sal", "read": ["group:hr"], "deny": ["user:intern"]}],
    )
    docs = upserts(run(connector, None)[0])
    assert docs[str(main)].acl == Acl.of(["group:staff"], deny=["user:mallory"])
    assert docs[str(policy)].acl == Acl.of(["group:editors"])
    assert docs[str(hr)].acl == Acl.of(["group:hr"], deny=["user:intern"])
    assert {r.external_id: r.acl for r in connector.list_ids()}[str(hr)] == docs[str(hr)].acl
    spaced = MediaWikiConfig(
        base_url=BASE, read=[], title_rules=[TitleRule(prefix="Team_notes/", read=["group:team"])]
    )
    assert spaced.acl_for(0, "Team notes/Q3") == Acl.of(["group:team"])
    assert spaced.acl_for(0, "Other") == Acl() and not Acl().grants({"user:anyone"})
    public = upserts(run(make(wiki, read=None, public=True), None)[0])
    assert public[str(main)].acl.public and public[str(main)].acl.grants({"user:anyone"})


def test_an_acl_only_change_keeps_the_hash_and_relists() -> None:
    wiki = FakeWiki()
    pid = wiki.create("Roadmap", "the plan")
    first, checkpoint = run(make(wiki), None)
    again, _ = run(make(wiki, read=["group:leads"]), checkpoint)
    before, after = upserts(first)[str(pid)], upserts(again)[str(pid)]
    assert before.content_hash == after.content_hash
    assert after.acl == Acl.of(["group:leads"]) != before.acl


# -- HTTP behaviour and credentials ---------------------------------------------------------


def test_429_with_retry_after_then_500_then_success() -> None:
    wiki = FakeWiki()
    wiki.create("A", "alpha")
    wiki.queued = [
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(500),
    ]
    sleeps = Sleeps()
    changes, _ = run(make(wiki, sleep=sleeps), None)
    assert len(upserts(changes)) == 1
    assert sleeps.calls[0] == 7.0 and len(sleeps.calls) == 2


def test_maxlag_api_error_is_waited_out() -> None:
    wiki = FakeWiki()
    wiki.create("A", "alpha")
    lag = {
        "error": {
            "code": "maxlag",
            "info": "Waiting for 10.64.48.35: 6 seconds lagged.",
            "host": "10.64.48.35",
            "lag": 6,
        }
    }
    wiki.queued = [httpx.Response(200, json=lag, headers={"Retry-After": "5"})]
    sleeps = Sleeps()
    assert len(upserts(run(make(wiki, sleep=sleeps), None)[0])) == 1
    assert sleeps.calls == [5.0]


def test_a_bad_token_is_a_credential_error(monkeypatch: pytest.MonkeyPatch) -> None:
    wiki = FakeWiki()
    wiki.create("A", "alpha")
    wiki.bearer = "good-token"
    monkeypatch.setenv("MW_TOKEN", "wrong-token")
    connector = make(wiki, token={"env": "MW_TOKEN"})
    with pytest.raises(CredentialError, match="401"):
        connector.check()
    with pytest.raises(CredentialError):
        run(make(wiki, token={"env": "MW_TOKEN"}), None)
    monkeypatch.setenv("MW_TOKEN", "good-token")
    good = make(wiki, token={"env": "MW_TOKEN"})
    good.check()
    assert len(upserts(run(good, None)[0])) == 1
    assert wiki.requests[-1].headers["Authorization"] == "Bearer good-token"


def test_a_private_wiki_needs_credentials() -> None:
    wiki = FakeWiki()
    wiki.private = True
    with pytest.raises(CredentialError, match=r"readapidenied.*configure `username`"):
        make(wiki).check()
    with pytest.raises(CredentialError, match="readapidenied"):
        run(make(wiki), None)


def test_bot_password_login_and_session_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    wiki = FakeWiki()
    wiki.private = True
    wiki.bot = ("Indexer@context", "s3cret")
    pid = wiki.create("A", "alpha")
    monkeypatch.setenv("MW_BOT", "wrong")
    bad = make(wiki, username="Indexer@context", password={"env": "MW_BOT"})
    with pytest.raises(CredentialError, match="Incorrect username or password"):
        bad.check()
    monkeypatch.setenv("MW_BOT", "s3cret")
    connector = make(wiki, username="Indexer@context", password={"env": "MW_BOT"})
    connector.check()
    _, checkpoint = run(connector, None)
    assert all(r.url.params.get("assert") == "user" for r in wiki.requests[-3:])
    wiki.sessions.clear()  # the session expired on the wiki's side
    wiki.edit(pid, "alpha, edited")
    changes, _ = run(connector, checkpoint)
    assert upserts(changes)[str(pid)].read() == b"alpha, edited\n"
    assert len(wiki.sessions) == 1  # logged in again, once


def test_check_reports_unknown_namespaces() -> None:
    with pytest.raises(ConfigError, match=r"no namespace \[3000\]"):
        make(FakeWiki(), namespaces=[0, 3000]).check()


def test_a_non_mediawiki_url_is_a_clear_error() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text="<html>hello</html>"))
    config = MediaWikiConfig(base_url=BASE, read=["group:x"])
    with pytest.raises(SourceError, match="did not return JSON"):
        MediaWikiConnector(config, transport=transport).check()


def test_the_config_refuses_plain_secrets_and_unclear_access() -> None:
    with pytest.raises(ValidationError, match="reference"):
        MediaWikiConfig.model_validate({"base_url": BASE, "read": [], "token": "abc"})
    with pytest.raises(ValidationError, match="reference"):
        MediaWikiConfig.model_validate(
            {"base_url": BASE, "read": [], "username": "u", "password": "p"}
        )
    with pytest.raises(ValidationError, match="who may read"):
        MediaWikiConfig.model_validate({"base_url": BASE})
    with pytest.raises(ValidationError, match="both"):
        MediaWikiConfig.model_validate({"base_url": BASE, "read": [], "username": "u"})
    with pytest.raises(ValidationError):
        MediaWikiConfig.model_validate({"base_url": BASE, "read": ["everyone"]})
    with pytest.raises(ValidationError, match=r"\$1"):
        MediaWikiConfig.model_validate({"base_url": BASE, "read": [], "article_path": "https://x/"})
    config = MediaWikiConfig.model_validate({"base_url": BASE + "/api.php/", "read": []})
    assert config.base_url == BASE and config.namespaces == [0]
    restored = MediaWikiCheckpoint.model_validate_json(
        MediaWikiCheckpoint(cursor="2026-01-01T00:00:00Z").model_dump_json()
    )
    assert restored.cursor == "2026-01-01T00:00:00Z"


# -- wikitext → markdown ---------------------------------------------------------------------


def test_wikitext_headings_lists_and_emphasis() -> None:
    source = (
        "= Title =\n== Section ==\n=== Sub ===\n"
        "'''bold''' and ''italic'' and '''''both'''''\n"
        "* one\n** nested\n# first\n## inner\n; Term : Definition\n: indented\n----\n"
    )
    assert to_markdown(source) == (
        "# Title\n\n## Section\n\n### Sub\n\n**bold** and *italic* and ***both***\n"
        "- one\n  - nested\n1. first\n  1. inner\n**Term**: Definition\nindented\n\n---\n"
    )


def test_wikitext_links_templates_and_noise() -> None:
    source = (
        "{{Infobox person\n| name = {{PAGENAME}}\n| born = {{birth date|1990|1|1}}\n}}"
        "See [[Main Page]], [[Help:Contents|the help]], [[Foo_bar]]s, [[Help:Links|]] and "
        "[[#Anchors]].<ref>A footnote</ref><!-- hidden -->\n"
        "[[File:Diagram.png|thumb|A [[diagram]] caption]]\n"
        "Visit [https://example.org the site] or [https://example.org/x].\n"
        "__NOTOC__\n<span style='x'>kept</span> <code>a < b</code> &amp; <nowiki>''raw''</nowiki>\n"
        "line<br/>break\n[[Category:How-to]][[Category:Old_pages|Z]]\n<references />"
    )
    result = convert(source)
    assert result.markdown == (
        "See Main Page, the help, Foo bars, Links and Anchors.\n\n"
        "Visit [the site](https://example.org) or <https://example.org/x>.\n\n"
        "kept `a < b` & ''raw''\nline\nbreak\n"
    )
    assert result.categories == ["How-to", "Old pages"]
    assert strip_templates("a{{x|{{{1}}}|{{y}}}}b") == "ab"


def test_wikitext_tables_and_code() -> None:
    source = (
        '{| class="wikitable"\n|+ Prices\n! Item !! Cost\n|-\n| Tea || 2 €\n|-\n'
        '| style="color:red" | [[Coffee|Good coffee]] || 3\n|}\n'
        '<syntaxhighlight lang="python">\nprint("{{not a template}}")\n</syntaxhighlight>\n'
        "<pre>\n'''as is''' &lt;tag&gt;\n</pre>"
    )
    assert to_markdown(source) == (
        "**Prices**\n\n| Item | Cost |\n|---|---|\n| Tea | 2 € |\n| Good coffee | 3 |\n\n"
        '```python\nprint("{{not a template}}")\n```\n\n'
        "```\n'''as is''' <tag>\n```\n"
    )


def test_wikitext_degenerate_input() -> None:
    assert to_markdown("") == ""
    assert to_markdown("{{unclosed") == ""
    assert to_markdown("[[unclosed link") == "[[unclosed link\n"
    assert to_markdown("plain\r\ntext") == "plain\ntext\n"


# -- end to end through the CLI ---------------------------------------------------------------

BIN = Path(sys.executable).parent / "context-server"


@pytest.mark.model
def test_sync_and_search_through_the_cli(httpserver: Any, tmp_path: Path) -> None:
    from werkzeug import Request, Response

    wiki = FakeWiki()
    wiki.bearer = "e2e-token"
    wiki.create("Lyon office", "The office in Lyon opens at nine. Coffee is free.")
    wiki.create("HR/Salary bands", "Salary bands for 2027 were approved in October.", ns=4)

    def serve(request: Request) -> Response:
        forwarded = httpx.Request(
            request.method,
            "https://wiki.example.org" + request.full_path.rstrip("?"),
            headers=dict(request.headers),
            content=request.get_data(),
        )
        answer = wiki.handle(forwarded)
        return Response(answer.content, status=answer.status_code, headers=dict(answer.headers))

    httpserver.expect_request("/w/api.php").respond_with_handler(serve)
    (tmp_path / "wiki.yaml").write_text(
        "name: wiki\nkind: mediawiki\nconfig:\n"
        f"  base_url: {httpserver.url_for('/w')}\n"
        "  token: {env: WIKI_TOKEN}\n"
        "  namespaces: [0, 4]\n"
        "  read: [group:everyone]\n"
        "  title_rules:\n    - {prefix: 'Project:HR/', read: [group:hr]}\n"
    )
    (tmp_path / "principals.yaml").write_text(
        "groups:\n  everyone: [user:carol, user:alice]\n  hr: [user:alice]\n"
    )
    env = {**os.environ, "CONTEXT_SERVER_HOME": str(tmp_path / "home"), "WIKI_TOKEN": "e2e-token"}
    env.pop("CONTEXT_SERVER_DATABASE_URL", None)
    env.pop("CONTEXT_SERVER_QDRANT_URL", None)

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [str(BIN), *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc.stdout

    cli("principals", "load", str(tmp_path / "principals.yaml"))
    cli("sources", "add", str(tmp_path / "wiki.yaml"))
    report = json.loads(cli("sync", "wiki", "--json"))
    assert (report["upserted"], report["failed"]) == (2, 0)

    def titles(who: str) -> list[str]:
        out = json.loads(cli("search", "salary bands approved", "--as", who, "--json"))
        return [str(r["title"]) for r in out["results"]]

    assert "Project:HR/Salary bands" in titles("user:alice")
    assert "Project:HR/Salary bands" not in titles("user:carol")
    office = json.loads(cli("search", "office opening hours", "--as", "user:carol", "--json"))
    assert office["results"][0]["title"] == "Lyon office"
    assert office["results"][0]["url"] == "https://wiki.example.org/wiki/Lyon_office"
    again = json.loads(cli("sync", "wiki", "--json"))
    assert again["failed"] == 0 and again["deleted"] == 0


def test_one_malformed_page_is_a_failure_not_a_failed_sync() -> None:
    wiki = FakeWiki()
    good = wiki.create("Good", "fine text")
    odd = wiki.create("Odd", "odd text")
    wiki.pages[odd].timestamp = "yesterday-ish"  # not a timestamp: ValueError reading it
    changes, checkpoint = run(make(wiki), None)
    assert set(upserts(changes)) == {str(good)}
    assert failures(changes)[str(odd)].reason == "malformed"
    assert str(odd) in checkpoint.pages  # failed is not taken for deleted
