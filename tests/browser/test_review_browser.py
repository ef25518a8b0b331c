"""A reviewer's day in a real browser: log in, open the queue, follow a citation to its
evidence, approve, see it shipped. A real server (uvicorn in a thread) over the fictional
org of tests/integration/test_web.py; Debian's chromium driven by Playwright (never
``playwright install``).

Every run rewrites the screenshots in docs/screenshots/ so they stay current; the test
asserts on behaviour only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from context_server.review import ReviewDesk
from tests.integration.test_web import TOKEN, WebOrg, build_org

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshots are taken by this test: `make screenshots` writes them into
# docs/screenshots; a plain test run writes them into its temporary folder, so that running
# the tests leaves the checkout as it was.
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}


@dataclass
class Served:
    org: WebOrg
    base: str
    budget_review: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The org with a few reviews (one pending that cites a finance-only note), served."""
    org = build_org(tmp_path / "home")
    (org.share / "handbook/onboarding-checklist.md").write_text("")  # two failures to show
    (org.share / "handbook/floor-plan.odt").write_bytes(b"PK\x03\x04 not really a document")
    org.runtime.sync("handbook")
    budget = org.ask("hotel travel budget expenses 2027", "user:jonas")
    org.ask("how many days of paid leave do I have", "user:priya")
    train = org.ask("is second class train travel reimbursed", "user:priya")
    ReviewDesk(org.runtime).approve(train, "user:tomas", comment="matches the handbook")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(org.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30  # a start-up wait, not an assertion on timing
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    try:
        yield Served(org, f"http://127.0.0.1:{port}", budget)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        org.runtime.close()


@pytest.fixture
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `make chromium` (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI requires the browser test")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_a_reviewer_follows_a_citation_and_approves(
    served: Served, browser: object, tmp_path: Path
) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    update = os.environ.get("CONTEXT_SERVER_UPDATE_SCREENSHOTS") == "1"
    shots = DOCS_SCREENSHOTS if update else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    base, review_id = served.base, served.budget_review

    # Unauthenticated: the login page.
    page.goto(f"{base}/ui/reviews")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.screenshot(path=shots / "login.png")
    page.get_by_label("API key").fill(served.org.keys["amara"])
    page.get_by_role("button", name="Log in").click()

    # The queue: Amara (a support lead) sees the reviews she may decide on.
    expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
    expect(page.get_by_text("Logged in as user:amara")).to_be_visible()
    page.screenshot(path=shots / "review-queue.png")
    page.locator(f'a[href="/ui/reviews/{review_id}"]').click()

    # The review: a citation link leads to its evidence item, which is the :target.
    expect(page.locator("#review-state")).to_have_text("pending")
    citation = page.locator("a.cite").nth(1)
    target = citation.get_attribute("href")
    assert target is not None and target.startswith("#evidence-")
    citation.click()
    assert page.url.endswith(target)
    targeted = page.evaluate("document.querySelector(':target')?.id")
    assert targeted == target[1:]
    expect(page.locator(target)).to_be_in_viewport()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=shots / "review.png", full_page=True)

    # Approve: the artifact ships, once, and the page says so.
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#review-state")).to_have_text("shipped")
    expect(page.get_by_role("region", name="Shipped")).to_be_visible()
    assert len(list(served.org.outbox.glob("*.md"))) == 2  # this one and the earlier one

    # The admin pages, as the server's admin token.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("API key").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{base}/ui/sources")
    expect(page.get_by_role("button", name="Sync now")).to_be_visible()
    expect(page.get_by_role("cell", name="onboarding-checklist.md")).to_be_visible()
    page.screenshot(path=shots / "sources.png")
    page.goto(f"{base}/ui/audit")
    expect(page.get_by_role("cell", name="review_approve").first).to_be_visible()
    page.screenshot(path=shots / "audit.png")
