"""Runs and the review queue over HTTP.

Who sees what: the admin token everything; a user key the runs it acts for and the reviews
it may decide on (or that were made for it), with citations it may not read redacted; an
agent key its own agent's runs and reviews. Deciding on a review takes a user: a user key
decides as its user, the admin token names one with ``as``. Agent keys never decide.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from context_server.api.deps import CallerDep, RuntimeDep
from context_server.api.schemas import (
    KEY_RESPONSES,
    Artifact,
    Comment,
    Moment,
    PrincipalText,
    RunInput,
    check_artifact,
)
from context_server.durations import parse_duration
from context_server.errors import ForbiddenError, NotFoundError, SpecError
from context_server.keys import Caller
from context_server.review import ReviewDesk
from context_server.runs import RUN_STATES, RunQueue, manual_run
from context_server.viewer import Viewer, Views

router = APIRouter(prefix="/v1", responses=KEY_RESPONSES)


def get_desk(runtime: RuntimeDep) -> ReviewDesk:
    return ReviewDesk(runtime)


DeskDep = Annotated[ReviewDesk, Depends(get_desk)]


# -- runs ----------------------------------------------------------------------------------


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_behalf_of: PrincipalText | None = Field(
        default=None, description="The user the run acts for (default: the agent's owner)."
    )
    input: RunInput = Field(
        default_factory=dict,
        description="Fills the query template: at most 50 named values (text, numbers, "
        "lists of text).",
    )


@router.post("/agents/{name}/runs")
def run_agent(name: str, body: RunRequest, runtime: RuntimeDep, caller: CallerDep) -> Any:
    return manual_run(runtime, caller, name, body.on_behalf_of, body.input)


@router.get("/runs")
def list_runs(
    runtime: RuntimeDep,
    caller: CallerDep,
    state: str | None = None,
    agent: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    if state is not None and state not in RUN_STATES:
        raise SpecError(f"unknown run state {state!r}; known: {', '.join(RUN_STATES)}")
    return {"runs": Views(runtime).list_runs(Viewer.of(caller), state, agent, limit)}


@router.get("/runs/{run_id}")
def show_run(run_id: str, runtime: RuntimeDep, caller: CallerDep) -> Any:
    return Views(runtime).show_run(run_id, Viewer.of(caller))


@router.post("/runs/{run_id}/cancel")
def cancel_run(run_id: str, runtime: RuntimeDep, caller: CallerDep) -> Any:
    views, viewer = Views(runtime), Viewer.of(caller)
    views.show_run(run_id, viewer)  # not visible: the same 404 as a missing run
    RunQueue(runtime.sessions).cancel(run_id)
    return views.show_run(run_id, viewer)


# -- reviews -------------------------------------------------------------------------------


def review_visible(desk: ReviewDesk, caller: Caller, review: dict[str, Any]) -> bool:
    return desk.visible(Viewer.of(caller), review)


@router.get("/reviews")
def list_reviews(
    desk: DeskDep,
    caller: CallerDep,
    state: str | None = None,
    agent: str | None = None,
    older_than: Annotated[
        str | None, Query(max_length=32, description="e.g. 2d: created before then")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    age = parse_duration(older_than) if older_than else None
    listing = desk.list_reviews(state, agent, age, limit, viewer=Viewer.of(caller))
    if caller.kind != "admin":
        listing["reviews"] = [r for r in listing["reviews"] if review_visible(desk, caller, r)]
    return listing


def _shown(desk: ReviewDesk, caller: Caller, review_id: str) -> dict[str, Any]:
    review = desk.show(review_id, Viewer.of(caller))
    if not review_visible(desk, caller, review):
        raise NotFoundError(f"no review {review_id!r} visible to this key")
    return review


@router.get("/reviews/{review_id}")
def show_review(review_id: str, desk: DeskDep, caller: CallerDep) -> Any:
    return _shown(desk, caller, review_id)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    as_: PrincipalText | None = Field(
        default=None,
        alias="as",
        description="The deciding user; required with the admin token, implied by a user key.",
    )
    comment: Comment = ""


class Approval(Decision):
    override_stale: bool = Field(
        default=False, description="Approve although cited documents changed since the run."
    )


class Deferral(Decision):
    until: Moment | None = None


class Edit(Decision):
    content: Artifact = Field(
        description="The artifact's new text (markdown); CONTEXT_SERVER_MAX_ARTIFACT_CHARS "
        "may lower the limit."
    )


def _actor(caller: Caller, body: Decision) -> str:
    if caller.kind == "user":
        if body.as_ not in (None, caller.subject):
            raise ForbiddenError(
                f"this key belongs to {caller.subject}; it may not decide as {body.as_}"
            )
        return caller.subject
    if caller.kind == "agent":
        raise ForbiddenError("agents do not review; a user's key or the admin's may")
    if not body.as_:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            'with the admin token, name the deciding user: {"as": "user:NAME"}',
        )
    return body.as_


@router.post("/reviews/{review_id}/approve")
def approve(review_id: str, body: Approval, desk: DeskDep, caller: CallerDep) -> Any:
    actor = _actor(caller, body)
    desk.approve(
        review_id, actor, comment=body.comment, override_stale=body.override_stale, caller=caller
    )
    return _shown(desk, caller, review_id)


@router.post("/reviews/{review_id}/reject")
def reject(review_id: str, body: Decision, desk: DeskDep, caller: CallerDep) -> Any:
    desk.reject(review_id, _actor(caller, body), comment=body.comment, caller=caller)
    return _shown(desk, caller, review_id)


@router.post("/reviews/{review_id}/request-changes")
def request_changes(review_id: str, body: Decision, desk: DeskDep, caller: CallerDep) -> Any:
    out = desk.request_changes(review_id, _actor(caller, body), comment=body.comment, caller=caller)
    shown = _shown(desk, caller, review_id)
    shown["rerun_id"] = out["rerun_id"]
    return shown


@router.post("/reviews/{review_id}/comment")
def comment(review_id: str, body: Decision, desk: DeskDep, caller: CallerDep) -> Any:
    desk.comment(review_id, _actor(caller, body), comment=body.comment, caller=caller)
    return _shown(desk, caller, review_id)


@router.post("/reviews/{review_id}/defer")
def defer(review_id: str, body: Deferral, desk: DeskDep, caller: CallerDep) -> Any:
    desk.defer(
        review_id, _actor(caller, body), until=body.until, comment=body.comment, caller=caller
    )
    return _shown(desk, caller, review_id)


@router.post("/reviews/{review_id}/edit")
def edit(review_id: str, body: Edit, desk: DeskDep, caller: CallerDep) -> Any:
    check_artifact(body.content, desk.runtime.settings.max_artifact_chars)
    desk.edit(
        review_id, _actor(caller, body), content=body.content, comment=body.comment, caller=caller
    )
    return _shown(desk, caller, review_id)


@router.post("/reviews/{review_id}/retry-ship")
def retry_ship(review_id: str, body: Decision, desk: DeskDep, caller: CallerDep) -> Any:
    desk.retry_ship(review_id, _actor(caller, body), caller=caller)
    return _shown(desk, caller, review_id)
