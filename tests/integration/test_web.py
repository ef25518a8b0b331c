"""The reviewer and admin web pages, in-process (TestClient) over a real store (SQLite and
PostgreSQL) and the embedded index. The embedder is the fake hashing one (named so).

The org is small and fictional: Northwind's handbook and a finance-only budget note; the
``policy-answerer`` agent drafts answers that the support leads (Amara, Tomás) review.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from context_server.api.app import create_app
from context_server.keys import ADMIN
from context_server.runs import manual_run
from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.specs import PrincipalsSpec, SourceSpec
from context_server.store.models import AuditEvent
from context_server.web.render import render_artifact
from context_server.worker import Worker
from indexing.embed import FakeHashEmbedder

TOKEN = "web-test-admin-token"
FILES = {
    "handbook/travel.md": "# Travel expenses\n\nTrain travel in second class is reimbursed in "
    "full. Hotel nights are covered up to 140 EUR in Hamburg and 120 EUR elsewhere. Submit "
    "receipts within 30 days in the expenses tool.",
    "handbook/leave.md": "# Paid leave\n\nEvery employee has 28 days of paid leave per year. "
    "Leave requests go to your team lead at least two weeks ahead.",
    "finance/travel-budget-2027.md": "# Travel budget 2027\n\nThe confidential travel budget "
    "for 2027 is 84,000 EUR, down 12 percent. Hotel caps for travel stay until July.",
}
SHARE_URL = "https://files.northwind.example/share"
SECRET_TEXT = "84,000 EUR"
SECRET_TITLE = "travel-budget-2027.md"
RULES = [
    {"glob": "finance/**", "allow": ["group:finance"]},
    {"glob": "**", "allow": ["group:everyone"]},
]
GROUPS = {
    "everyone": ["group:finance", "group:support-leads", "user:priya"],
    "finance": ["user:jonas", "user:amara"],  # amara reviews, and may read the budget
    "support-leads": ["user:amara", "user:tomas"],
}


def policy_answerer(outbox: Path) -> dict[str, Any]:
    return {
        "name": "policy-answerer",
        "description": "Drafts answers to staff questions about company policy",
        "sources": ["handbook"],
        "acting_as": "on_behalf_of",
        "serves": ["group:everyone"],
        "owner": "user:amara",
        "context": {"query": "{{ input.question }}", "budget_tokens": 600},
        "harness": {"kind": "extractive"},
        "output": {"kind": "markdown"},
        "review": {"approvers": ["group:support-leads"], "required": 1, "expires_after": "7d"},
        "ship": {"kind": "file", "dir": str(outbox)},
    }


@dataclass
class WebOrg:
    """A runtime over the fictional org, its app, and keys for the people in it."""

    runtime: Runtime
    settings: Settings
    share: Path
    outbox: Path
    app: Any
    keys: dict[str, str]

    def ask(self, question: str, user: str) -> str:
        """Queue a run, let a worker process it; the id of the review it produced."""
        run_id = manual_run(self.runtime, ADMIN, "policy-answerer", user, {"question": question})[
            "run_id"
        ]
        Worker(self.runtime, poll=0.05).until_idle()
        from context_server.review import ReviewDesk

        (review,) = [
            r for r in ReviewDesk(self.runtime).list_reviews()["reviews"] if r["run_id"] == run_id
        ]
        review_id: str = review["id"]
        return review_id

    def client(self, who: str | None = None) -> TestClient:
        """A browser-like client, logged in as ``who`` (a key name, or ``admin``)."""
        client = TestClient(self.app, follow_redirects=False)
        if who is not None:
            r = login(client, TOKEN if who == "admin" else self.keys[who])
            assert r.status_code == 303, r.text
        return client


def build_org(home: Path, database_url: str | None = None) -> WebOrg:
    """The fictional org, synced, with user keys for everyone and one agent key."""
    share = home.parent / "share"
    for rel, body in FILES.items():
        (share / rel).parent.mkdir(parents=True, exist_ok=True)
        (share / rel).write_text(body)
    settings = Settings(home=home, database_url=database_url)
    settings.agents_path.mkdir(parents=True)
    outbox = home.parent / "outbox"
    (settings.agents_path / "policy-answerer.yaml").write_text(
        yaml.safe_dump(policy_answerer(outbox))
    )
    runtime = Runtime(settings, embedder=FakeHashEmbedder())
    runtime.load_principals(PrincipalsSpec(groups=GROUPS))
    config = {"root": str(share), "acl_rules": RULES, "url_prefix": SHARE_URL}
    runtime.add_source(SourceSpec(name="handbook", kind="filesystem", config=config))
    runtime.sync("handbook")
    keys = {
        name: runtime.create_key("user", f"user:{name}")["key"]
        for name in ("amara", "tomas", "jonas", "priya")
    }
    keys["agent"] = runtime.create_key("agent", "policy-answerer")["key"]
    app = create_app(settings, runtime=runtime, admin_token=TOKEN)
    return WebOrg(runtime, settings, share, outbox, app, keys)


@pytest.fixture
def org(tmp_path: Path, database_url: str) -> Iterator[WebOrg]:
    web = build_org(tmp_path / "home", database_url)
    yield web
    web.runtime.close()


@pytest.fixture
def budget_review(org: WebOrg) -> str:
    """Jonas (finance) asks; the answer cites the finance-only budget and the handbook."""
    return org.ask("hotel travel budget expenses 2027", "user:jonas")


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def login(client: TestClient, key: str) -> Response:
    token = csrf_of(client.get("/ui/login").text)
    return client.post("/ui/login", data={"key": key, "csrf": token})


def post(client: TestClient, path: str, page: str, **data: str) -> Response:
    """Submit a form as the browser would: with the CSRF token from ``page``."""
    token = csrf_of(client.get(page).text)
    return client.post(path, data={"csrf": token, **data})


def section(html: str, name: str) -> str:
    """The ``<section class="NAME">`` element of a page."""
    start = html.index(f'<section class="{name}"')
    return html[start : html.index("</section>", start)]


def audit_rows(org: WebOrg, action: str) -> list[AuditEvent]:
    with org.runtime.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# -- login ----------------------------------------------------------------------------------


def test_pages_need_a_login_and_a_user_key_logs_in_and_out(org: WebOrg) -> None:
    client = org.client()
    r = client.get("/ui/reviews?state=pending")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/ui/login?next=")
    r = login(client, "csk_nope_nope")
    assert r.status_code == 401 and "unknown or revoked key" in r.text
    r = login(client, org.keys["amara"])
    assert r.status_code == 303 and r.headers["location"] == "/ui/reviews"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert org.keys["amara"] not in r.headers["set-cookie"]  # the key is never in the cookie
    page = client.get("/ui/reviews")
    assert page.status_code == 200 and "user:amara" in page.text
    r = post(client, "/ui/logout", "/ui/reviews")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert client.get("/ui/reviews").status_code == 303


def test_login_sends_back_only_to_our_own_pages(org: WebOrg) -> None:
    client = org.client()
    token = csrf_of(client.get("/ui/login").text)
    data = {"key": org.keys["amara"], "csrf": token, "next": "https://evil.example/"}
    r = client.post("/ui/login", data=data)
    assert r.status_code == 303 and r.headers["location"] == "/ui/reviews"
    assert 'value="/ui/reviews"' in client.get("/ui/login?next=//evil.example").text


def test_artifacts_render_without_raw_html_and_link_only_known_citations() -> None:
    html = render_artifact(
        "Caps [1] and [7].\n\n<script>alert(1)</script>\n\n`code [1]` [link [2]](https://x.example)",
        {1, 2},
    )
    assert '<a class="cite" href="#evidence-1"' in html and "[7]" in html
    assert "#evidence-7" not in html and "<script>" not in html and "&lt;script&gt;" in html
    assert "<code>code [1]</code>" in html  # code is shown verbatim
    assert html.count('class="cite"') == 1  # never a link inside a link


def test_agent_keys_may_not_log_in(org: WebOrg) -> None:
    r = login(org.client(), org.keys["agent"])
    assert r.status_code == 401 and "agents use the API, not these pages" in r.text


def test_a_key_revoked_after_login_ends_the_session(org: WebOrg) -> None:
    client = org.client("tomas")
    assert client.get("/ui/reviews").status_code == 200
    key_id = org.keys["tomas"].split("_")[1]
    org.runtime.revoke_key(key_id)
    r = client.get("/ui/reviews")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert "your key was revoked" in client.get(r.headers["location"]).text
    assert client.get("/ui/reviews").status_code == 303  # the session stays ended


def test_forms_without_the_session_csrf_token_are_refused(org: WebOrg, budget_review: str) -> None:
    client = org.client("amara")
    path = f"/ui/reviews/{budget_review}/approve"
    assert client.post(path, data={}).status_code == 403
    r = client.post(path, data={"csrf": "forged"})
    assert r.status_code == 403 and "security token" in r.text
    # another session's token does not count either
    other = org.client("tomas")
    r = client.post(path, data={"csrf": csrf_of(other.get("/ui/reviews").text)})
    assert r.status_code == 403
    assert client.post("/ui/logout", data={}).status_code == 403
    assert client.get("/ui/reviews").status_code == 200  # still logged in
    assert "pending" in client.get(f"/ui/reviews/{budget_review}").text
    assert not audit_rows(org, "review_approve")  # it never reached the desk


# -- the queue ------------------------------------------------------------------------------


def test_the_queue_filters_and_counts_what_the_viewer_may_see(
    org: WebOrg, budget_review: str
) -> None:
    leave = org.ask("how many days of paid leave", "user:priya")
    admin = org.client("admin")
    r = post(admin, f"/ui/reviews/{leave}/reject", f"/ui/reviews/{leave}", **{"as": "user:tomas"})
    assert r.status_code == 303, r.text

    page = admin.get("/ui/reviews").text
    assert budget_review in page and leave in page
    assert re.search(r"pending <strong>1</strong>", page)
    assert re.search(r"rejected <strong>1</strong>", page)
    pending = admin.get("/ui/reviews?state=pending").text
    assert budget_review in pending and leave not in pending
    assert leave in admin.get("/ui/reviews?agent=policy-answerer&state=rejected").text
    assert "No reviews match" in admin.get("/ui/reviews?agent=someone-else").text
    assert "No reviews match" in admin.get("/ui/reviews?older_than=1d").text
    r = admin.get("/ui/reviews?state=bogus")
    assert r.status_code == 422 and "unknown review state" in r.text
    assert admin.get("/ui/reviews?older_than=soon").status_code == 422

    # priya may not review: she sees only the review made for her, and counts of hers
    priya = org.client("priya").get("/ui/reviews").text
    assert leave in priya and budget_review not in priya
    assert re.search(r"pending <strong>0</strong>", priya)


# -- one review -----------------------------------------------------------------------------


def test_the_review_page_links_citations_to_their_evidence(org: WebOrg, budget_review: str) -> None:
    page = org.client("admin").get(f"/ui/reviews/{budget_review}").text
    cited = set(re.findall(r'<a class="cite" href="#evidence-(\d+)"', page))
    assert cited, "no citation became a link"
    for n in cited:
        assert f'id="evidence-{n}"' in page
    assert SECRET_TITLE in page and SECRET_TEXT in page  # the admin sees everything
    assert f'href="{SHARE_URL}/handbook/travel.md"' in page
    assert "badge-unchanged" in page and "Version" in page and "Retrieved" in page
    assert 'action="/ui/reviews/' in page and 'name="as"' in page  # admin decides as a user
    assert "<script" not in page


def test_a_reviewer_sees_what_they_may_not_read_redacted(org: WebOrg, budget_review: str) -> None:
    queue = org.client("tomas").get("/ui/reviews").text  # the title is the run's query
    assert "(withheld)" in queue and "hotel travel budget" not in queue
    assert "hotel travel budget" in org.client("amara").get("/ui/reviews").text
    tomas = org.client("tomas").get(f"/ui/reviews/{budget_review}")
    assert tomas.status_code == 200
    assert "redacted: you may not read this document" in tomas.text
    evidence = section(tomas.text, "evidence")
    assert SECRET_TEXT not in evidence and SECRET_TITLE not in evidence
    assert evidence.count('class="item ') == 3 and evidence.count("redacted:") == 1
    # The artifact was made from what the agent read for Jonas: it is withheld from him, and
    # he may not decide on it (a reviewer who may read every cited document must).
    artifact = section(tomas.text, "artifact")
    assert SECRET_TITLE not in artifact and SECRET_TEXT not in tomas.text
    assert "withheld: this draft was made from 1 document(s) user:tomas may not read" in artifact
    assert 'action="/ui/reviews/' not in tomas.text
    client = org.client("tomas")
    r = post(client, f"/ui/reviews/{budget_review}/approve", f"/ui/reviews/{budget_review}")
    assert r.status_code == 403 and "may not read" in r.text and SECRET_TEXT not in r.text
    # priya neither reviews nor was it made for her: not found, nothing shown
    priya = org.client("priya")
    r = priya.get(f"/ui/reviews/{budget_review}")
    assert r.status_code == 404 and SECRET_TEXT not in r.text
    r = post(priya, f"/ui/reviews/{budget_review}/approve", "/ui/reviews")
    assert r.status_code == 403 and SECRET_TEXT not in r.text and "Decide" not in r.text


def test_who_may_not_decide_sees_no_forms_and_a_forged_post_is_refused(
    org: WebOrg, budget_review: str
) -> None:
    jonas = org.client("jonas")  # it was made for him, but he is not an approver
    page = jonas.get(f"/ui/reviews/{budget_review}").text
    assert SECRET_TEXT in page  # he may read the budget
    assert f'action="/ui/reviews/{budget_review}/' not in page
    r = post(jonas, f"/ui/reviews/{budget_review}/approve", f"/ui/reviews/{budget_review}")
    assert r.status_code == 403
    assert "may not review policy-answerer" in r.text and "Traceback" not in r.text
    (denied,) = audit_rows(org, "review_approve")
    assert denied.outcome == "denied" and denied.caller == "user:jonas"
    assert "pending" in jonas.get(f"/ui/reviews/{budget_review}").text
    # a user may not decide as somebody else
    r = post(
        jonas,
        f"/ui/reviews/{budget_review}/approve",
        f"/ui/reviews/{budget_review}",
        **{"as": "user:amara"},
    )
    assert r.status_code == 403 and "may not decide as user:amara" in r.text


def test_approving_ships_and_the_page_says_so(org: WebOrg, budget_review: str) -> None:
    amara = org.client("amara")
    path = f"/ui/reviews/{budget_review}"
    r = post(amara, f"{path}/approve", path, comment="reads well")
    assert r.status_code == 303 and r.headers["location"] == path
    page = amara.get(path).text
    assert "approved by user:amara; the review is now shipped" in page
    assert 'aria-label="Shipped"' in page and str(org.outbox) in page
    assert f'action="{path}/approve"' not in page  # no second approval offered
    assert len(list(org.outbox.glob("*.md"))) == 1
    r = post(amara, f"{path}/approve", path)
    assert r.status_code == 409 and "only pending reviews take approve" in r.text


def test_stale_evidence_needs_the_explicit_checkbox(org: WebOrg, budget_review: str) -> None:
    (org.share / "handbook/travel.md").write_text("# Travel expenses\n\nHotels: 100 EUR cap.")
    org.runtime.sync("handbook")
    amara = org.client("amara")
    path = f"/ui/reviews/{budget_review}"
    page = amara.get(path).text
    assert 'id="stale-banner"' in page and "badge-changed" in page
    assert 'name="override_stale"' in page and "Approve although the evidence changed" in page
    r = post(amara, f"{path}/approve", path)
    assert r.status_code == 409 and "the evidence changed" in r.text
    assert not list(org.outbox.glob("*.md"))
    r = post(amara, f"{path}/approve", path, override_stale="1")
    assert r.status_code == 303
    page = amara.get(path).text
    assert "shipped" in page and "stale evidence overridden" in page


def test_edit_comment_and_request_changes_from_the_page(org: WebOrg, budget_review: str) -> None:
    admin = org.client("admin")
    path = f"/ui/reviews/{budget_review}"
    r = post(admin, f"{path}/comment", path, comment="check the hotel cap")
    assert r.status_code == 422 and "name the deciding user" in r.text
    as_amara = {"as": "user:amara"}
    assert (
        post(admin, f"{path}/comment", path, comment="check the cap", **as_amara).status_code == 303
    )
    r = post(admin, f"{path}/edit", path, content="Hotels: up to **140 EUR** [1].", **as_amara)
    assert r.status_code == 303
    page = admin.get(path).text
    assert "<strong>140 EUR</strong>" in page and "Revision 2 by user:amara" in page
    assert "+Hotels: up to **140 EUR** [1]." in page  # the diff
    r = post(admin, f"{path}/request-changes", path, **as_amara)
    assert r.status_code == 422 and "a comment is required" in r.text
    r = post(admin, f"{path}/request-changes", path, comment="cite the policy", **as_amara)
    assert r.status_code == 303
    assert "changes requested" in admin.get(path).text


# -- sources and audit ----------------------------------------------------------------------


def test_sources_show_health_and_only_admins_sync(org: WebOrg) -> None:
    (org.share / "handbook/empty.md").write_text("")
    admin = org.client("admin")
    r = post(admin, "/ui/sources/handbook/sync", "/ui/sources")
    assert r.status_code == 303
    for thread in org.app.state.web_syncs:
        thread.join()
    page = admin.get("/ui/sources").text
    assert "sync of handbook started" in page
    assert "handbook" in page and "completed" in page and "Sync now" in page
    assert "empty.md" in page and ">empty<" in page
    assert "empty.md" not in admin.get("/ui/sources?reason=too_large").text
    assert "empty.md" in admin.get("/ui/sources?reason=empty").text

    amara = org.client("amara")
    page = amara.get("/ui/sources").text
    assert "handbook" in page and "Sync now" not in page and "empty.md" not in page
    r = post(amara, "/ui/sources/handbook/sync", "/ui/sources")
    assert r.status_code == 403 and "only administrators" in r.text
    assert post(admin, "/ui/sources/nope/sync", "/ui/sources").status_code == 404


def test_a_user_the_policy_lets_administer_is_an_admin_here(org: WebOrg) -> None:
    org.settings.policy_path.write_text(
        "p, group:everyone, agent:policy-answerer, act_for\n"
        "p, group:everyone, source:handbook, read\n"
        "p, group:support-leads, agent:policy-answerer, review\n"
        "p, user:tomas, system, administer\n"
    )
    tomas = org.client("tomas")
    assert "Sync now" in tomas.get("/ui/sources").text
    assert tomas.get("/ui/audit").status_code == 200
    assert org.client("amara").get("/ui/audit").status_code == 403


def test_the_audit_page_filters_pages_and_exports(org: WebOrg, budget_review: str) -> None:
    jonas = org.client("jonas")
    post(jonas, f"/ui/reviews/{budget_review}/reject", f"/ui/reviews/{budget_review}")
    assert org.client("priya").get("/ui/audit").status_code == 403
    assert org.client("priya").get("/ui/audit/export").status_code == 403

    admin = org.client("admin")
    row = "<td>review_reject</td>"
    page = admin.get("/ui/audit").text
    assert row in page and "<td>context</td>" in page
    denied = admin.get("/ui/audit?outcome=denied").text
    assert row in denied and "user:jonas" in denied
    assert row not in admin.get("/ui/audit?outcome=allowed&action=review_reject").text
    assert "No events match" in admin.get("/ui/audit?caller=user:nobody").text
    assert row in admin.get("/ui/audit?since=1h&caller=user:jonas").text
    assert admin.get("/ui/audit?since=whenever").status_code == 422

    r = admin.get("/ui/audit/export?outcome=denied&caller=user:jonas")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in r.headers["content-disposition"]
    events = [json.loads(line) for line in r.text.splitlines()]
    assert [e["action"] for e in events] == ["review_reject"]
    everything = [json.loads(line) for line in admin.get("/ui/audit/export").text.splitlines()]
    assert len(everything) > 1 and [e["id"] for e in everything] == sorted(
        e["id"] for e in everything
    )


def test_the_audit_page_shows_100_events_per_page(org: WebOrg, budget_review: str) -> None:
    amara = org.client("amara")
    path = f"/ui/reviews/{budget_review}"
    token = csrf_of(amara.get(path).text)
    for i in range(101):
        r = amara.post(f"{path}/comment", data={"csrf": token, "comment": f"note {i}"})
        assert r.status_code == 303
    admin = org.client("admin")
    first = admin.get("/ui/audit?action=review_comment").text
    assert first.count("<td>review_comment</td>") == 100
    assert "Older" in first and "Newer" not in first
    second = admin.get("/ui/audit?action=review_comment&page=2").text
    assert second.count("<td>review_comment</td>") == 1
    assert "Newer" in second and "Older" not in second
