"""The runnable part of an agent file: trigger, context query, harness, output, review, ship.

An agent file with only the context keys (agents.py) serves context. Adding a ``harness``
makes it runnable; a runnable agent must say who reviews its output, because nothing it
produces ships without a human's approval::

    owner: user:carol                     # accountable; runs without a user act for them
    trigger: {kind: event, source: support-jira, on: [created], filter: {labels: [customer]}}
    context: {query: "{{ document.title }}"}
    harness: {kind: extractive}
    output: {kind: markdown}
    review: {approvers: ["group:support-leads"], required: 1, expires_after: 7d}
    ship: {kind: comment}                 # or {kind: file, dir: ...} / {kind: webhook, url: ...}

Templates are Jinja2, sandboxed, with ``input`` (a manual run's input), ``document`` (an
event's document: id, title, url, source, external_id, metadata, version) and ``trigger``.
A name the template uses but the run does not have is an error, never an empty string.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from croniter import croniter
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from connectors.base import check_principal
from connectors.secrets import SecretRef
from context_server.durations import parse_duration
from context_server.specs import NAME_RE

_TEMPLATES = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class TemplateFailure(ValueError):
    """A query template that does not parse, or names something the run does not have."""


def check_template(text: str) -> str:
    try:
        _TEMPLATES.parse(text)
    except TemplateError as exc:
        raise ValueError(f"bad template {text!r}: {exc}") from exc
    return text


def render(text: str, variables: dict[str, Any]) -> str:
    try:
        return _TEMPLATES.from_string(text).render(**variables).strip()
    except TemplateError as exc:
        names = ", ".join(sorted(variables)) or "nothing"
        raise TemplateFailure(
            f"the query template {text!r} cannot be filled: {exc} (this run has: {names})"
        ) from exc


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _user(value: str | None) -> str | None:
    if value is not None and not check_principal(value).startswith("user:"):
        raise ValueError(f"on_behalf_of must be a user (user:<name>), not {value!r}")
    return value


class ManualTrigger(_Spec):
    kind: Literal["manual"] = "manual"


class ScheduleTrigger(_Spec):
    """Runs at each occurrence of a five-field cron expression (UTC)."""

    kind: Literal["schedule"] = "schedule"
    cron: str
    on_behalf_of: str | None = Field(default=None, description="Default: the owner.")
    input: dict[str, Any] = Field(default_factory=dict, description="Each run's input.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5 or not croniter.is_valid(v):
            raise ValueError(f"bad cron expression {v!r}: five fields, e.g. '0 9 * * 1-5'")
        return v

    @field_validator("on_behalf_of")
    @classmethod
    def _who(cls, v: str | None) -> str | None:
        return _user(v)


class EventTrigger(_Spec):
    """Runs when a document is created or updated in ``source`` (after a sync), once per
    document version. ``filter``: metadata key -> accepted values; every key must match
    (a comma-separated metadata value such as labels matches when any item is accepted)."""

    kind: Literal["event"] = "event"
    source: str
    on: tuple[Literal["created", "updated"], ...] = ("created",)
    filter: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    on_behalf_of: str | None = Field(default=None, description="Default: the owner.")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"bad source name {v!r}")
        return v

    @field_validator("on")
    @classmethod
    def _on(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one of created, updated")
        return tuple(sorted(set(v)))

    @field_validator("on_behalf_of")
    @classmethod
    def _who(cls, v: str | None) -> str | None:
        return _user(v)

    def matches(self, metadata: dict[str, Any]) -> bool:
        for key, accepted in self.filter.items():
            value = metadata.get(key)
            if value is None:
                return False
            values = value if isinstance(value, list) else str(value).split(",")
            if not {str(x).strip() for x in values} & set(accepted):
                return False
        return True


TriggerSpec = Annotated[ManualTrigger | ScheduleTrigger | EventTrigger, Field(discriminator="kind")]


class ContextQuery(_Spec):
    query: str = Field(
        default="{{ input.question }}", description="Jinja2 template of the context query."
    )
    budget_tokens: int | None = Field(default=None, ge=1, le=100_000)

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        return check_template(v)


class OutputSpec(_Spec):
    kind: Literal["markdown", "comment", "file"] = "markdown"
    filename: str = Field(
        default="{{ review_id }}.md", description="For file output: the file's name (template)."
    )

    @field_validator("filename")
    @classmethod
    def _filename(cls, v: str) -> str:
        return check_template(v)


class ReviewSpec(_Spec):
    approvers: tuple[str, ...] = Field(
        min_length=1, description="Principals that may approve (a group: its members)."
    )
    required: int = Field(default=1, ge=1, le=10, description="Distinct approvals needed.")
    expires_after: str | None = Field(default="7d", description="Pending longer: expired.")

    @field_validator("approvers")
    @classmethod
    def _approvers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted({check_principal(p) for p in v}))

    @field_validator("expires_after")
    @classmethod
    def _expires(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v


class FileShip(_Spec):
    """Write the approved artifact into a folder (a drive, a share)."""

    kind: Literal["file"] = "file"
    dir: str


class WebhookShip(_Spec):
    """POST the approved artifact as JSON, with an ``Idempotency-Key`` header."""

    kind: Literal["webhook"] = "webhook"
    url: HttpUrl
    secret: SecretRef | None = Field(
        default=None, description="Sent as `Authorization: Bearer <secret>`."
    )
    timeout: str = "30s"


class CommentShip(_Spec):
    """A comment on the ticket the run was about (the event's document, or the input's
    ``document_id``), through the source's connector."""

    kind: Literal["comment"] = "comment"


class NoShip(_Spec):
    """Approval is the end: the approved artifact stays in the review queue."""

    kind: Literal["none"] = "none"


ShipSpec = Annotated[FileShip | WebhookShip | CommentShip | NoShip, Field(discriminator="kind")]
