"""Web sessions live on the server: the cookie is an opaque random id, "Log out" ends the
session for every copy of the cookie, revoking the key that logged in ends its sessions,
and every page carries the security headers (CSP with frame-ancestors, X-Frame-Options,
Referrer-Policy, nosniff)."""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from context_server.web import SESSION_COOKIE
from tests.integration.test_web import TOKEN, WebOrg, build_org, csrf_of, post


@pytest.fixture
def org(tmp_path: Path) -> Iterator[WebOrg]:
    web = build_org(tmp_path / "home")
    yield web
    web.runtime.close()


def cookie_of(client: TestClient) -> str:
    value = client.cookies.get(SESSION_COOKIE)
    assert value, "no session cookie"
    return value


def replay(org: WebOrg, cookie: str) -> int:
    """A fresh browser presenting a copied cookie: the status of the review queue."""
    thief = TestClient(org.app, follow_redirects=False)
    thief.cookies.set(SESSION_COOKIE, cookie)
    return thief.get("/ui/reviews").status_code


def test_a_cookie_replayed_after_logout_is_refused(org: WebOrg) -> None:
    client = org.client("amara")
    cookie = cookie_of(client)
    assert replay(org, cookie) == 200
    assert post(client, "/ui/logout", "/ui/reviews").status_code == 303
    assert replay(org, cookie) == 303  # to the login page: the session is gone on the server


def test_the_admin_session_also_ends_at_logout(org: WebOrg) -> None:
    client = org.client("admin")
    cookie = cookie_of(client)
    assert replay(org, cookie) == 200
    post(client, "/ui/logout", "/ui/reviews")
    assert replay(org, cookie) == 303


def test_revoking_the_key_ends_its_sessions(org: WebOrg) -> None:
    browsers = [org.client("tomas"), org.client("tomas")]
    other = org.client("amara")
    cookies = [cookie_of(b) for b in browsers]
    (key_id,) = [k["id"] for k in org.runtime.list_keys() if k["subject"] == "user:tomas"]
    org.runtime.revoke_key(key_id)
    assert [replay(org, c) for c in cookies] == [303, 303]
    assert other.get("/ui/reviews").status_code == 200  # another key's session lives on
    from context_server.store.models import WebSession

    with org.runtime.sessions() as db:
        rows = db.query(WebSession).filter(WebSession.key_id == key_id).all()
        assert rows and all(r.revoked_at is not None for r in rows)


def test_the_cookie_is_an_opaque_id(org: WebOrg) -> None:
    client = org.client("amara")
    cookie = cookie_of(client)
    assert org.keys["amara"] not in cookie and TOKEN not in cookie
    readable = cookie.encode()
    for part in cookie.split("."):
        with contextlib.suppress(binascii.Error, ValueError):
            readable += base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    for secret in ("amara", "user", "csrf", "kind", "key_id"):
        assert secret.encode() not in readable, f"the cookie reveals {secret!r}"
    assert len(cookie) >= 32
    # a forged or guessed id is just no session
    assert replay(org, cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) == 303


def test_the_store_does_not_hold_the_cookie_itself(org: WebOrg) -> None:
    client = org.client("amara")
    cookie = cookie_of(client)
    from context_server.store.models import WebSession

    with org.runtime.sessions() as db:
        ids = [r.id for r in db.query(WebSession).all()]
    assert ids and cookie not in ids  # a copy of the database opens no session


def test_logging_in_gives_a_new_session_id(org: WebOrg) -> None:
    client = TestClient(org.app, follow_redirects=False)
    token = csrf_of(client.get("/ui/login").text)
    before = cookie_of(client)
    r = client.post("/ui/login", data={"key": org.keys["amara"], "csrf": token})
    assert r.status_code == 303
    after = cookie_of(client)
    assert after != before  # a session id planted before the login is not the logged-in one
    assert replay(org, before) == 303


SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@pytest.mark.parametrize(
    "path",
    [
        "/ui/login",
        "/ui/reviews",
        "/ui/reviews/nope",
        "/ui/sources",
        "/ui/audit",
        "/ui/audit/export",
        "/ui/static/style.css",
        "/ui/nowhere",
        "/ui",
    ],
)
def test_every_page_carries_the_security_headers(org: WebOrg, path: str) -> None:
    for client in (org.client(), org.client("admin")):
        r = client.get(path)
        for name, value in SECURITY_HEADERS.items():
            assert r.headers.get(name) == value, (path, name, r.status_code)
        csp = r.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, (path, csp)
        assert "unsafe-inline" not in csp


def test_the_api_carries_them_too(org: WebOrg) -> None:
    client = TestClient(org.app)
    for path in ("/healthz", "/v1/sources", "/openapi.json"):
        r = client.get(path)
        assert r.headers.get("x-content-type-options") == "nosniff", path
        assert r.headers.get("x-frame-options") == "DENY", path
