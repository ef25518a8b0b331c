"""Single sign-on (OIDC) for the web pages, against a fake OIDC provider (named so) on a real
local port, and the app in-process (TestClient) over a real store and the fictional org of
``test_web.py``.

A login is driven as a browser would: our ``/ui/login/oidc`` redirects to the provider's
``/authorize`` (fetched over real HTTP), which redirects back to our callback.
"""

from __future__ import annotations

import html
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from context_server.api.app import create_app
from context_server.settings import Settings
from context_server.store.models import AuditEvent
from context_server.web import auth
from tests.fakes.oidc_provider import FakeOidcProvider, s256
from tests.integration.test_web import TOKEN, WebOrg, build_org, csrf_of, post


@pytest.fixture
def idp() -> Iterator[FakeOidcProvider]:
    with FakeOidcProvider() as provider:
        yield provider


def sso_app(org: WebOrg, issuer: str, **settings: Any) -> Any:
    """A second app over the org's runtime, with OIDC configured."""
    configured = Settings(
        home=org.settings.home,
        database_url=org.settings.database_url,
        oidc_issuer=issuer,
        oidc_client_id=settings.pop("client_id", "context-server"),
        oidc_client_secret=settings.pop("client_secret", "fake-client-secret"),
        **settings,
    )
    return create_app(configured, runtime=org.runtime, admin_token=TOKEN)


@pytest.fixture
def org(tmp_path: Path) -> Iterator[WebOrg]:
    web = build_org(tmp_path / "home")  # SQLite; the happy path also runs on PostgreSQL
    yield web
    web.runtime.close()


@pytest.fixture
def browser(org: WebOrg, idp: FakeOidcProvider) -> TestClient:
    return TestClient(sso_app(org, idp.url), follow_redirects=False)


def sso_login(client: TestClient, idp: FakeOidcProvider, next: str = "/ui/reviews") -> Any:
    """Click "Log in with …", pass through the provider; the app's answer to the callback."""
    start = client.get("/ui/login/oidc", params={"next": next})
    assert start.status_code == 303, start.text
    location = start.headers["location"]
    if not location.startswith(idp.url):
        return start  # refused before the provider was asked
    back = httpx.get(location, follow_redirects=False)
    assert back.status_code == 302, back.text
    return client.get(back.headers["location"])


def callback_url(client: TestClient, idp: FakeOidcProvider) -> str:
    """Start a login and pass the provider; the callback URL the browser is sent to."""
    start = client.get("/ui/login/oidc")
    back = httpx.get(start.headers["location"], follow_redirects=False)
    location: str = back.headers["location"]
    return location


def refusal(client: TestClient, response: Any) -> str:
    """The message on the login page a refused login lands on; checks nobody is logged in."""
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith("/ui/login?next=")
    page = client.get(response.headers["location"])
    assert page.status_code == 200 and "Log in" in page.text
    assert client.get("/ui/reviews").status_code == 303  # not logged in
    assert "Logged in as" not in page.text
    return html.unescape(page.text)  # messages quote names: 'preferred_username'


def logins(org: WebOrg) -> list[AuditEvent]:
    with org.runtime.sessions() as session:
        query = select(AuditEvent).where(AuditEvent.action == "web_login")
        return list(session.scalars(query))


# -- the happy path -------------------------------------------------------------------------


def test_a_user_logs_in_by_oidc_and_decides_as_herself(
    tmp_path: Path, database_url: str, idp: FakeOidcProvider
) -> None:
    org = build_org(tmp_path / "home", database_url)
    try:
        review = org.ask("hotel travel budget expenses 2027", "user:jonas")
        client = TestClient(sso_app(org, idp.url), follow_redirects=False)
        login_page = client.get("/ui/login").text
        host = idp.url.removeprefix("http://").split(":")[0]
        assert f"Log in with {host}" in login_page and 'action="/ui/login/oidc"' in login_page

        r = sso_login(client, idp, next=f"/ui/reviews/{review}")
        assert r.status_code == 303 and r.headers["location"] == f"/ui/reviews/{review}"
        queue = client.get("/ui/reviews")
        assert queue.status_code == 200 and "Logged in as <strong>user:amara</strong>" in queue.text
        assert review in queue.text

        # the provider saw a standard authorization-code request with PKCE, and the verifier
        (asked,) = idp.authorize_requests
        assert asked["response_type"] == "code" and asked["scope"] == "openid profile email"
        assert asked["code_challenge_method"] == "S256" and asked["nonce"] and asked["state"]
        (exchange,) = idp.token_requests
        assert exchange.refusal is None and exchange.auth_method == "client_secret_basic"
        assert s256(exchange.form["code_verifier"]) == asked["code_challenge"]
        assert asked["code_challenge"] != exchange.form["code_verifier"]

        path = f"/ui/reviews/{review}"
        r = post(client, f"{path}/approve", path, comment="fine by me")
        assert r.status_code == 303, r.text
        assert "approved by user:amara; the review is now shipped" in client.get(path).text
        with org.runtime.sessions() as session:
            approved = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "review_approve")
            ).one()
        assert approved.caller == "user:amara" and approved.key_id is None
        (login_event,) = logins(org)
        assert login_event.caller == "user:amara" and idp.url in login_event.detail
        assert "secret" not in r.headers.get("set-cookie", "")
    finally:
        org.runtime.close()


def test_an_oidc_user_sees_what_a_user_key_would(
    org: WebOrg, idp: FakeOidcProvider, browser: TestClient
) -> None:
    review = org.ask("hotel travel budget expenses 2027", "user:jonas")
    idp.user = {"sub": "u-tomas", "preferred_username": "tomas"}
    assert sso_login(browser, idp).status_code == 303
    page = browser.get(f"/ui/reviews/{review}").text
    assert "redacted: you may not read this document" in page  # as with tomas's key
    assert f'action="/ui/reviews/{review}/' not in page
    r = post(browser, f"/ui/reviews/{review}/approve", f"/ui/reviews/{review}")
    assert r.status_code == 403 and "may not read" in r.text
    r = post(browser, f"/ui/reviews/{review}/approve", f"/ui/reviews/{review}", **{"as": "x"})
    assert r.status_code == 403
    assert browser.get("/ui/audit").status_code == 403  # not an administrator…

    org.settings.policy_path.write_text(
        "p, group:everyone, agent:policy-answerer, act_for\n"
        "p, group:everyone, source:handbook, read\n"
        "p, group:support-leads, agent:policy-answerer, review\n"
        "p, user:tomas, system, administer\n"
    )
    assert browser.get("/ui/audit").status_code == 200  # …until the policy says so


def test_the_email_claim_can_name_the_user(org: WebOrg, idp: FakeOidcProvider) -> None:
    client = TestClient(sso_app(org, idp.url, oidc_user_claim="email"), follow_redirects=False)
    assert sso_login(client, idp).status_code == 303
    assert "user:amara@northwind.example" in client.get("/ui/reviews").text

    idp.user = {**idp.user, "email_verified": False}
    other = TestClient(sso_app(org, idp.url, oidc_user_claim="email"), follow_redirects=False)
    assert "has not verified the email address" in refusal(other, sso_login(other, idp))


def test_client_secret_post_when_the_provider_only_takes_that(org: WebOrg) -> None:
    with FakeOidcProvider(auth_methods=("client_secret_post",)) as idp:
        client = TestClient(sso_app(org, idp.url), follow_redirects=False)
        assert sso_login(client, idp).status_code == 303
        assert client.get("/ui/reviews").status_code == 200
        assert idp.token_requests[-1].auth_method == "client_secret_post"


# -- every failure ends on the login page, logged out ---------------------------------------


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("bad_signature", "signature does not verify"),
        ("wrong_audience", "issued for another client (aud)"),
        ("wrong_issuer", "issued by another issuer (iss)"),
        ("expired", "the ID token has expired"),
        ("wrong_nonce", "nonce does not match this login"),
        ("missing_claim", "has no 'preferred_username' claim"),
    ],
)
def test_a_bad_id_token_is_refused(
    org: WebOrg, idp: FakeOidcProvider, browser: TestClient, fault: str, message: str
) -> None:
    idp.fault = fault
    page = refusal(browser, sso_login(browser, idp))
    assert "single sign-on failed" in page and message in page
    assert not logins(org)


def test_the_provider_saying_no_is_shown(idp: FakeOidcProvider, browser: TestClient) -> None:
    idp.deny = "access_denied"
    page = refusal(browser, sso_login(browser, idp))
    assert "the provider refused the login: access_denied (the user said no)" in page
    assert not idp.token_requests  # nothing was exchanged


def test_an_unreachable_provider_is_a_message_not_a_500(org: WebOrg) -> None:
    with socket.socket() as sock:  # a port nothing listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = TestClient(sso_app(org, f"http://127.0.0.1:{port}"), follow_redirects=False)
    assert "Log in with 127.0.0.1" in client.get("/ui/login").text
    page = refusal(client, client.get("/ui/login/oidc"))
    assert "the login provider is unreachable" in page


def test_a_provider_gone_during_the_login_is_a_message(org: WebOrg) -> None:
    idp = FakeOidcProvider().start()
    client = TestClient(sso_app(org, idp.url), follow_redirects=False)
    try:
        url = callback_url(client, idp)
    finally:
        idp.stop()
    r = client.get(url)
    # the discovery document is cached; the token endpoint is what fails
    assert "the login provider is unreachable (token endpoint" in refusal(client, r)


def test_a_wrong_client_secret_is_refused_by_the_provider(
    org: WebOrg, idp: FakeOidcProvider
) -> None:
    client = TestClient(sso_app(org, idp.url, client_secret="not-it"), follow_redirects=False)
    page = refusal(client, sso_login(client, idp))
    assert "the provider refused the login code: invalid_client" in page


def test_a_state_that_does_not_match_is_refused(idp: FakeOidcProvider, browser: TestClient) -> None:
    url = callback_url(browser, idp)
    forged = httpx.URL(url).copy_set_param("state", "forged-state")
    page = refusal(browser, browser.get(str(forged)))
    assert "does not match the login started here (state)" in page
    assert not idp.token_requests  # refused before the code was spent


def test_a_callback_is_usable_once_and_only_in_its_browser(
    org: WebOrg, idp: FakeOidcProvider, browser: TestClient
) -> None:
    url = callback_url(browser, idp)
    # another browser (an attacker planting their own code) has no login waiting for it
    stranger = TestClient(browser.app, follow_redirects=False)
    assert "already used" in refusal(stranger, stranger.get(url))
    assert browser.get(url).status_code == 303
    assert browser.get("/ui/reviews").status_code == 200  # the real login worked
    r = browser.get(url)  # replayed
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert "already used" in browser.get(r.headers["location"]).text
    assert len(idp.token_requests) == 1  # neither the stranger nor the replay reached it
    assert len(logins(org)) == 1


def test_the_provider_checks_the_pkce_verifier(idp: FakeOidcProvider, browser: TestClient) -> None:
    """An intercepted code is useless without the verifier, which never left the server."""
    url = callback_url(browser, idp)
    code = httpx.URL(url).params["code"]
    stolen = httpx.post(
        f"{idp.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": url.split("?")[0],
            "code_verifier": "a-guess-" + "x" * 40,
        },
        auth=("context-server", "fake-client-secret"),
    )
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert "PKCE verification failed" in stolen.json()["error_description"]
    # the code is spent: the browser's own callback now fails cleanly too
    page = refusal(browser, browser.get(url))
    assert "the provider refused the login code: invalid_grant" in page


def test_a_claim_that_is_no_principal_is_refused(
    idp: FakeOidcProvider, browser: TestClient
) -> None:
    idp.user = {"sub": "u-1", "preferred_username": "Amara Okafor"}
    page = refusal(browser, sso_login(browser, idp))
    assert "does not make a user principal" in page and "bad principal" in page


# -- the session ----------------------------------------------------------------------------


def _clock(monkeypatch: pytest.MonkeyPatch, ahead: float) -> None:
    """The web session code's clock, ``ahead`` seconds in the future (no sleeping)."""
    now = time.time()
    monkeypatch.setattr(auth, "time", SimpleNamespace(time=lambda: now + ahead))


def test_the_session_ends_when_the_id_token_expires(
    org: WebOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOidcProvider(token_lifetime=3600) as idp:
        client = TestClient(sso_app(org, idp.url), follow_redirects=False)
        assert sso_login(client, idp).status_code == 303
        _clock(monkeypatch, 3000)
        assert client.get("/ui/reviews").status_code == 200
        _clock(monkeypatch, 3700)
        r = client.get("/ui/reviews")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        assert "single sign-on session expired" in client.get(r.headers["location"]).text
        monkeypatch.undo()
        assert client.get("/ui/reviews").status_code == 303  # it stays ended


def test_the_session_lasts_at_most_eight_hours(
    org: WebOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOidcProvider(token_lifetime=24 * 3600) as idp:
        client = TestClient(sso_app(org, idp.url), follow_redirects=False)
        assert sso_login(client, idp).status_code == 303
        _clock(monkeypatch, 7.9 * 3600)
        assert client.get("/ui/reviews").status_code == 200
        _clock(monkeypatch, 8.1 * 3600)
        assert client.get("/ui/reviews").status_code == 303


def test_logout_ends_an_oidc_session(idp: FakeOidcProvider, browser: TestClient) -> None:
    assert sso_login(browser, idp).status_code == 303
    r = post(browser, "/ui/logout", "/ui/reviews")
    assert r.status_code == 303 and browser.get("/ui/reviews").status_code == 303


def test_a_changed_issuer_ends_oidc_sessions(org: WebOrg, idp: FakeOidcProvider) -> None:
    app = sso_app(org, idp.url)
    client = TestClient(app, follow_redirects=False)
    assert sso_login(client, idp).status_code == 303
    with FakeOidcProvider() as other:
        app.state.settings = app.state.settings.model_copy(update={"oidc_issuer": other.url})
        r = client.get("/ui/reviews")
        assert r.status_code == 303
        assert "single sign-on settings changed" in client.get(r.headers["location"]).text


def test_key_logins_still_work_beside_oidc(org: WebOrg, browser: TestClient) -> None:
    token = csrf_of(browser.get("/ui/login").text)
    r = browser.post("/ui/login", data={"key": org.keys["priya"], "csrf": token})
    assert r.status_code == 303 and "user:priya" in browser.get("/ui/reviews").text
    token = csrf_of(browser.get("/ui/login").text)
    r = browser.post("/ui/login", data={"key": "csk_nope_nope", "csrf": token})
    assert r.status_code == 401 and "Log in with" in r.text


# -- off, and misconfigured -----------------------------------------------------------------


def test_without_oidc_there_is_no_button_and_no_route(org: WebOrg) -> None:
    client = org.client()
    page = client.get("/ui/login").text
    assert "Log in with" not in page and "/ui/login/oidc" not in page
    assert client.get("/ui/login/oidc").status_code == 404
    r = client.get("/ui/login/oidc/callback?code=x&state=y")
    assert r.status_code == 404 and "not configured" in r.text
    assert client.get("/ui/reviews").status_code == 303


def test_settings_refuse_an_incomplete_oidc_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(home=tmp_path, oidc_issuer="https://login.northwind.example")
    message = str(info.value)
    assert "CONTEXT_SERVER_OIDC_ISSUER is set" in message
    assert "CONTEXT_SERVER_OIDC_CLIENT_ID and CONTEXT_SERVER_OIDC_CLIENT_SECRET" in message

    monkeypatch.setenv("CONTEXT_SERVER_OIDC_ISSUER", "https://login.northwind.example/realms/x")
    monkeypatch.setenv("CONTEXT_SERVER_OIDC_CLIENT_ID", "context-server")
    with pytest.raises(ValidationError, match="CONTEXT_SERVER_OIDC_CLIENT_SECRET must be set"):
        Settings(home=tmp_path)
    monkeypatch.setenv("CONTEXT_SERVER_OIDC_CLIENT_SECRET", "s3cret")
    assert Settings(home=tmp_path).oidc_issuer == "https://login.northwind.example/realms/x"

    with pytest.raises(ValidationError, match="must be an https:// URL"):
        Settings(home=tmp_path, oidc_issuer="http://login.northwind.example")
    with pytest.raises(ValidationError, match="must include openid"):
        Settings(home=tmp_path, oidc_scopes="profile email")
    monkeypatch.delenv("CONTEXT_SERVER_OIDC_ISSUER")
    assert Settings(home=tmp_path).oidc_issuer is None  # unset: OIDC off
