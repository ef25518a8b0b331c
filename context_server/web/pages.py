"""The ``/ui`` routes: login (API key, or OIDC when configured), the review queue, one
review, sources, the audit log.

Every page asks the same objects the API asks and applies the same rules
(``api.review_routes``): the admin sees every review; a user the reviews it may decide on or
that were made for it, with citations it may not read redacted by ``ReviewDesk.show``. Every
form carries the session's CSRF token; a POST without it is refused with 403.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from context_server.api.review_routes import review_visible
from context_server.api.schemas import check_artifact
from context_server.audit import event_json, parse_time
from context_server.durations import parse_duration
from context_server.errors import (
    ConflictError,
    ContextServerError,
    ForbiddenError,
    NotFoundError,
    SpecError,
)
from context_server.review import REVIEW_STATES, ReviewDesk
from context_server.settings import MAX_ARTIFACT_CHARS
from context_server.store.models import AuditEvent
from context_server.viewer import Viewer as Looker
from context_server.web.auth import (
    CsrfError,
    Viewer,
    check_csrf,
    csrf_token,
    current_viewer,
    flash,
    log_in,
    log_in_oidc,
    log_out,
    runtime_of,
    take_flashes,
)
from context_server.web.oidc import OidcClient, OidcError, Pending
from context_server.web.render import render_artifact

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

router = APIRouter(prefix="/ui", include_in_schema=False)
ViewerDep = Annotated[Viewer, Depends(current_viewer)]
CsrfField = Annotated[str | None, Form(alias="csrf", max_length=100)]
# Form and filter fields are capped like the API's request fields (api.schemas).
Filter = Annotated[str, Query(max_length=255)]
NextPage = Annotated[str, Query(max_length=2000)]

STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404),
    (ForbiddenError, 403),
    (ConflictError, 409),
    (SpecError, 422),
]
AUDIT_PAGE = 100
REVIEW_ACTIONS = ("approve", "reject", "request-changes", "comment", "edit", "retry-ship")
AGES = ("", "1h", "1d", "3d", "7d", "30d")
OIDC_PENDING = "oidc_pending"  # the session key of a login sent to the provider


def _status(exc: Exception) -> int:
    return next((s for e, s in STATUS_BY_ERROR if isinstance(exc, e)), 400)


def page(
    request: Request,
    name: str,
    viewer: Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """Render ``name`` in the shared layout (nav, who is logged in, flash messages)."""
    context.update(
        viewer=viewer,
        csrf=csrf_token(request),
        flashes=take_flashes(request),
    )
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def error_page(request: Request, viewer: Viewer | None, status: int, message: str) -> Response:
    flash(request, "error", message)
    return page(request, "error.html", viewer, status, status=status)


def _refused_form(request: Request, viewer: Viewer | None) -> Response:
    return error_page(
        request, viewer, 403, "refused: this form is missing its security token, or it expired"
    )


def _back(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


# -- login ----------------------------------------------------------------------------------


@router.get("", name="ui_home")
def home() -> RedirectResponse:
    return _back("/ui/reviews")


@router.get("/login", name="login_page")
def login_page(request: Request, next: NextPage = "/ui/reviews") -> Response:
    return _login_form(request, next)


def _login_form(request: Request, next: str, status: int = 200) -> Response:
    """The login page; with a "Log in with <provider>" button when OIDC is configured."""
    client = oidc_client(request)
    sso = client.name if client is not None else None
    return page(request, "login.html", None, status, next=_safe_next(next), sso=sso)


@router.post("/login")
def login(
    request: Request,
    csrf: CsrfField = None,
    key: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui/reviews",
) -> Response:
    try:
        check_csrf(request, csrf)
    except CsrfError:
        return _refused_form(request, None)
    refusal = log_in(request, key)
    if refusal is not None:
        flash(request, "error", refusal)
        return _login_form(request, next, 401)
    return _back(_safe_next(next))


def oidc_client(request: Request) -> OidcClient | None:
    """The app's OIDC relying party (made on first use), or ``None`` when OIDC is off."""
    client: OidcClient | None = getattr(request.app.state, "oidc", None)
    if client is None and request.app.state.settings.oidc_issuer is not None:
        client = OidcClient(request.app.state.settings)
        request.app.state.oidc = client
    return client


def _no_sso(request: Request) -> Response:
    return error_page(request, None, 404, "single sign-on (OIDC) is not configured here")


def _sso_refused(request: Request, reason: str, next: str) -> Response:
    """Back to the login page with why; the URL loses the provider's code and state."""
    log.warning("single sign-on login refused: %s", reason)
    flash(request, "error", f"single sign-on failed: {reason}")
    url = request.url_for("login_page").include_query_params(next=_safe_next(next))
    return _back(f"{url.path}?{url.query}")


@router.get("/login/oidc", name="oidc_login")
def oidc_login(request: Request, next: NextPage = "/ui/reviews") -> Response:
    """Send the browser to the provider, remembering state, nonce and PKCE verifier."""
    client = oidc_client(request)
    if client is None:
        return _no_sso(request)
    callback = str(request.url_for("oidc_callback"))
    try:
        url, pending = client.start(callback, _safe_next(next))
    except OidcError as exc:
        return _sso_refused(request, str(exc), next)
    except Exception:  # e.g. an unparsable endpoint URL in the discovery document
        log.exception("starting a single sign-on login failed unexpectedly")
        return _sso_refused(request, "an unexpected error; see the server log", next)
    request.session[OIDC_PENDING] = pending.to_session()
    return RedirectResponse(url, status_code=303)


@router.get("/login/oidc/callback", name="oidc_callback")
def oidc_callback(request: Request) -> Response:
    """The provider sends the browser back here; ``state`` makes it usable once."""
    client = oidc_client(request)
    if client is None:
        return _no_sso(request)
    pending = Pending.from_session(request.session.pop(OIDC_PENDING, None))
    next_page = pending.next if pending is not None else "/ui/reviews"
    callback = str(request.url_for("oidc_callback"))
    try:
        identity = client.finish(request.query_params, pending, callback)
    except OidcError as exc:
        return _sso_refused(request, str(exc), next_page)
    except Exception:  # a provider's surprise must not become a 500 (or a login)
        log.exception("single sign-on login failed unexpectedly")
        return _sso_refused(request, "an unexpected error; see the server log", next_page)
    log_in_oidc(request, identity, client.issuer)
    return _back(_safe_next(next_page))


@router.post("/logout")
def logout(request: Request, csrf: CsrfField = None) -> Response:
    try:
        check_csrf(request, csrf)
    except CsrfError:
        return _refused_form(request, None)
    log_out(request)
    flash(request, "info", "logged out")
    return _back("/ui/login")


def _safe_next(target: str) -> str:
    """Only our own pages: never an open redirect to another site."""
    if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/reviews"


# -- reviews --------------------------------------------------------------------------------


@router.get("/reviews")
def review_queue(
    request: Request,
    viewer: ViewerDep,
    state: Filter = "",
    agent: Filter = "",
    older_than: Filter = "",
) -> Response:
    desk = ReviewDesk(runtime_of(request))
    filters = {"state": state, "agent": agent, "older_than": older_than}
    try:
        age = parse_duration(older_than) if older_than else None
    except ValueError as exc:
        return _queue(request, viewer, filters, [], {}, 422, f"bad age filter: {exc}")
    try:
        listing = desk.list_reviews(
            state or None, agent or None, age, limit=500, viewer=Looker.of(viewer.caller)
        )
    except SpecError as exc:
        return _queue(request, viewer, filters, [], {}, 422, str(exc))
    reviews, counts = listing["reviews"], listing["counts"]
    if viewer.caller.kind != "admin":
        reviews = [r for r in reviews if review_visible(desk, viewer.caller, r)]
        counts = _visible_counts(desk, viewer, agent or None, age)
    return _queue(request, viewer, filters, reviews, counts)


def _visible_counts(
    desk: ReviewDesk, viewer: Viewer, agent: str | None, age: Any
) -> dict[str, int]:
    """Counts per state of what this viewer may see (the desk's counts are of everything)."""
    everything = desk.list_reviews(None, agent, age, limit=5000)["reviews"]
    counts = dict.fromkeys(REVIEW_STATES, 0)
    for review in everything:
        if review_visible(desk, viewer.caller, review):
            counts[review["state"]] += 1
    return counts


def _queue(
    request: Request,
    viewer: Viewer,
    filters: dict[str, str],
    reviews: list[dict[str, Any]],
    counts: dict[str, int],
    status: int = 200,
    error: str | None = None,
) -> Response:
    if error:
        flash(request, "error", error)
    return page(
        request,
        "reviews.html",
        viewer,
        status,
        reviews=reviews,
        counts=counts,
        filters=filters,
        states=REVIEW_STATES,
        ages=AGES,
        nav="reviews",
    )


def _review_page(request: Request, viewer: Viewer, review_id: str, status: int = 200) -> Response:
    desk = ReviewDesk(runtime_of(request))
    try:
        review = desk.show(review_id, Looker.of(viewer.caller))
    except NotFoundError:
        review = None
    if review is None or not review_visible(desk, viewer.caller, review):
        # A refused action keeps its status (403); a plain visit learns nothing: 404.
        shown_status = 404 if status == 200 else status
        return error_page(request, viewer, shown_status, f"no review {review_id!r} visible to you")
    numbers = {item["n"] for item in review["evidence"]["items"]}
    may_decide = viewer.caller.kind == "admin" or bool(review.get("may_review"))
    return page(
        request,
        "review.html",
        viewer,
        status,
        review=review,
        artifact=render_artifact(review["content"], numbers)
        if review.get("content") is not None
        else None,
        may_decide=may_decide,
        nav="reviews",
    )


@router.get("/reviews/{review_id}")
def review_detail(request: Request, review_id: str, viewer: ViewerDep) -> Response:
    return _review_page(request, viewer, review_id)


@router.post("/reviews/{review_id}/{action}")
def review_action(
    request: Request,
    review_id: str,
    action: str,
    viewer: ViewerDep,
    csrf: CsrfField = None,
    as_user: Annotated[str, Form(alias="as", max_length=255)] = "",
    comment: Annotated[str, Form(max_length=10_000)] = "",
    content: Annotated[str, Form(max_length=MAX_ARTIFACT_CHARS)] = "",
    override_stale: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    try:
        check_csrf(request, csrf)
    except CsrfError:
        return _refused_form(request, viewer)
    if action not in REVIEW_ACTIONS:
        return error_page(request, viewer, 404, f"no review action {action!r}")
    desk = ReviewDesk(runtime_of(request))
    try:
        if action == "edit":
            check_artifact(content, runtime_of(request).settings.max_artifact_chars)
        actor = _actor(viewer, as_user)
        done = _decide(desk, viewer, review_id, action, actor, comment, content, override_stale)
    except ContextServerError as exc:
        flash(request, "error", f"{action} refused: {exc}")
        return _review_page(request, viewer, review_id, _status(exc))
    flash(request, "info", done)
    return _back(f"/ui/reviews/{review_id}")


def _actor(viewer: Viewer, as_user: str) -> str:
    """A user decides as itself; the admin token names the deciding user."""
    caller = viewer.caller
    if caller.kind == "user":
        if as_user.strip() not in ("", caller.subject):
            raise ForbiddenError(f"you are {caller.subject}; you may not decide as {as_user}")
        return caller.subject
    if not as_user.strip():
        raise SpecError("as the admin, name the deciding user in 'as user' (user:NAME)")
    return as_user.strip()


def _decide(
    desk: ReviewDesk,
    viewer: Viewer,
    review_id: str,
    action: str,
    actor: str,
    comment: str,
    content: str,
    override_stale: str,
) -> str:
    """Run one decision on the desk; the message to show afterwards."""
    caller = viewer.caller
    if action == "approve":
        shown = desk.approve(
            review_id, actor, comment=comment, override_stale=bool(override_stale), caller=caller
        )
        return f"approved by {actor}; the review is now {shown['state']}"
    if action == "reject":
        desk.reject(review_id, actor, comment=comment, caller=caller)
        return f"rejected by {actor}; nothing ships"
    if action == "request-changes":
        out = desk.request_changes(review_id, actor, comment=comment, caller=caller)
        if out["rerun_id"] is None:  # an external agent: it reads the comment (MCP get_review)
            return "changes requested; the agent reads your comment and submits new work"
        return f"changes requested; the agent runs again (run {out['rerun_id']})"
    if action == "comment":
        desk.comment(review_id, actor, comment=comment, caller=caller)
        return "comment added"
    if action == "edit":
        desk.edit(review_id, actor, content=content.replace("\r\n", "\n"), caller=caller)
        return "saved as a new revision; earlier approvals no longer count"
    shown = desk.retry_ship(review_id, actor, caller=caller)
    return f"shipping retried; the review is now {shown['state']}"


# -- sources --------------------------------------------------------------------------------


@router.get("/sources")
def sources(request: Request, viewer: ViewerDep, reason: Filter = "") -> Response:
    """Health of every source; failures (which name documents) only for administrators."""
    runtime = runtime_of(request)
    rows = []
    for info in runtime.list_sources():
        failures = runtime.failures(info.name) if viewer.is_admin else []
        reasons = sorted({f["reason"] for f in failures})
        if reason:
            failures = [f for f in failures if f["reason"] == reason]
        rows.append({"info": info, "failures": failures, "reasons": reasons})
    return page(request, "sources.html", viewer, sources=rows, reason=reason, nav="sources")


@router.post("/sources/{name}/sync")
def sync_now(request: Request, name: str, viewer: ViewerDep, csrf: CsrfField = None) -> Response:
    try:
        check_csrf(request, csrf)
    except CsrfError:
        return _refused_form(request, viewer)
    if not viewer.is_admin:
        return error_page(request, viewer, 403, "only administrators may start a sync")
    runtime = runtime_of(request)
    try:
        runtime.source_info(name)
    except NotFoundError as exc:
        return error_page(request, viewer, 404, str(exc))
    thread = threading.Thread(target=_sync_quietly, args=(runtime, name), daemon=True)
    thread.start()
    started: list[threading.Thread] = getattr(request.app.state, "web_syncs", [])
    request.app.state.web_syncs = [t for t in started if t.is_alive()] + [thread]
    flash(request, "info", f"sync of {name} started; reload this page to see it finish")
    return _back("/ui/sources")


def _sync_quietly(runtime: Any, name: str) -> None:
    """A sync in the background: its outcome is recorded as the source's last run."""
    try:
        runtime.sync(name)
    except Exception:
        log.exception("sync of %s started from the web pages failed", name)


# -- audit ----------------------------------------------------------------------------------


def _audit_query(action: str, outcome: str, caller: str, since: datetime | None) -> Any:
    query = select(AuditEvent)
    if action:
        query = query.where(AuditEvent.action == action)
    if outcome:
        query = query.where(AuditEvent.outcome == outcome)
    if caller:
        query = query.where(AuditEvent.caller == caller)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    return query


@router.get("/audit")
def audit(
    request: Request,
    viewer: ViewerDep,
    action: Filter = "",
    outcome: Filter = "",
    caller: Filter = "",
    since: Filter = "",
    page_number: Annotated[int, Query(alias="page", ge=1)] = 1,
) -> Response:
    if not viewer.is_admin:
        return error_page(request, viewer, 403, "the audit log is for administrators")
    filters = {"action": action, "outcome": outcome, "caller": caller, "since": since}
    try:
        start = parse_time(since) if since else None
    except SpecError as exc:
        flash(request, "error", str(exc))
        return page(request, "audit.html", viewer, 422, events=[], filters=filters, nav="audit")
    query = _audit_query(action, outcome, caller, start).order_by(AuditEvent.id.desc())
    query = query.offset((page_number - 1) * AUDIT_PAGE).limit(AUDIT_PAGE + 1)
    with runtime_of(request).sessions() as session:
        events = [event_json(e) for e in session.scalars(query)]
    return page(
        request,
        "audit.html",
        viewer,
        events=events[:AUDIT_PAGE],
        more=len(events) > AUDIT_PAGE,
        page_number=page_number,
        filters=filters,
        nav="audit",
    )


@router.get("/audit/export")
def audit_export(
    request: Request,
    viewer: ViewerDep,
    action: Filter = "",
    outcome: Filter = "",
    caller: Filter = "",
    since: Filter = "",
) -> Response:
    """The filtered events, oldest first, as JSON lines (a file download)."""
    if not viewer.is_admin:
        return error_page(request, viewer, 403, "the audit log is for administrators")
    try:
        start = parse_time(since) if since else None
    except SpecError as exc:
        return error_page(request, viewer, 422, str(exc))
    query = _audit_query(action, outcome, caller, start).order_by(AuditEvent.id)
    sessions = runtime_of(request).sessions

    def lines() -> Iterator[str]:
        with sessions() as session:
            for event in session.scalars(query.execution_options(yield_per=500)):
                yield json.dumps(event_json(event)) + "\n"

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="audit.ndjson"'},
    )
