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

import contextvars
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from croniter import croniter
from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import _PassArg, generate_lorem_ipsum
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from connectors.base import check_principal
from connectors.secrets import SecretRef
from context_server.durations import parse_duration
from context_server.specs import NAME_RE


class TemplateFailure(ValueError):
    """A template that does not parse, names something the run does not have, or breaks a
    limit or the sandbox: permanent, another attempt renders the same."""


class TemplateLimitError(TemplateFailure):
    """The template would produce, build or loop past its ``TemplateLimits``."""


@dataclass(frozen=True)
class TemplateLimits:
    """What one rendering may cost. ``max_chars`` bounds the output and every string or
    list the template builds on the way (checked *before* ``'a' * n``, ``x ~ x``,
    ``'a'.ljust(n)``, ``|center(n)`` and the like allocate); ``max_iterations`` bounds the
    loop iterations of all ``for`` loops together; ``timeout_seconds`` is checked at every
    loop iteration, operator, call, attribute and output chunk.

    Not interruptible: one operation the checks let through (a sort of a long list, a
    regex inside a filter) runs to its end; the size checks keep each such operation
    small, so the overshoot is bounded by what ``max_chars`` allows."""

    max_chars: int = 100_000
    timeout_seconds: float = 2.0
    max_iterations: int = 1_000_000


DEFAULT_LIMITS = TemplateLimits()
#: ``a ** b`` and ``a * b`` on integers are refused past this many bits of result.
MAX_INT_BITS = 64 * 1024


class _Budget:
    """One rendering's limits, deadline and iteration count."""

    def __init__(self, limits: TemplateLimits, *, timed: bool = True) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout_seconds if timed else float("inf")
        self.iterations = 0

    def time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"it took longer than {self.limits.timeout_seconds}s; stopped")

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.max_iterations:
            raise TemplateLimitError(
                f"it loops more than {self.limits.max_iterations} loop iterations"
            )
        if not self.iterations & 0x3FF:
            self.time()

    def size(self, n: int, what: str) -> None:
        if n > self.limits.max_chars:
            raise TemplateLimitError(
                f"{what} would be {n} long, more than the {self.limits.max_chars} characters "
                "(or items) a template may produce"
            )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "template_budget", default=None
)


def _budget() -> _Budget:
    """The running rendering's budget; outside one (Jinja folding constants while it
    compiles) the default limits without a deadline."""
    return _BUDGET.get() or _Budget(DEFAULT_LIMITS, timed=False)


_SIZED = (str, bytes, list, tuple, dict)
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")


def _ints(args: Iterable[Any]) -> Iterator[int]:
    return (a for a in args if isinstance(a, int) and not isinstance(a, bool))


def _check_printf(budget: _Budget, fmt: str, args: Any) -> None:
    """``fmt % args``: no width or precision (written or ``*``) past the limit."""
    values = args if isinstance(args, tuple) else (args,)
    for match in _PRINTF.finditer(fmt):
        for group in match.groups():
            if group == "*":
                for n in _ints(values):
                    budget.size(n, "a %-format width")
            elif group is not None:
                budget.size(int(group), "a %-format width")


def _check_str_format(budget: _Budget, fmt: str, args: Iterable[Any]) -> None:
    """``fmt.format(...)``: no number in a replacement field, nor an int argument (a
    nested ``{:{}}`` width), past the limit."""
    for field in re.findall(r"\{[^{}]*\}", fmt):
        for number in _NUMBER.findall(field):
            budget.size(int(number) if len(number) < 20 else 10**20, "a format width")
    for n in _ints(args):
        budget.size(n, "a format argument")


def _check_replace(budget: _Budget, s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        count = s.count(old) if old else len(s) + 1
        budget.size(len(s) + count * max(0, len(new) - len(old)), "a replace")


def _check_join(budget: _Budget, sep: Any, items: list[Any]) -> None:
    length = sum(len(x) if isinstance(x, str) else 20 for x in items)
    budget.size(length + len(str(sep)) * max(0, len(items) - 1), "a join")


def _check_result(budget: _Budget, value: Any) -> Any:
    if isinstance(value, _SIZED):
        budget.size(len(value), "a value")
    elif (
        isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS
    ):
        raise TemplateLimitError(f"an integer of more than {MAX_INT_BITS} bits")
    return value


def _check_str_method(budget: _Budget, name: str, s: str | bytes, args: tuple[Any, ...]) -> None:
    """Size the result of ``s.<name>(*args)`` before it is computed."""
    if name in ("ljust", "rjust", "center", "zfill") and args:
        for n in _ints(args[:1]):
            budget.size(n, f"{name}()")
    elif name == "expandtabs":
        size = next(iter(_ints(args)), 8)
        tabs = s.count("\t") if isinstance(s, str) else s.count(b"\t")
        budget.size(len(s) + tabs * max(0, size), "expandtabs()")
    elif name == "replace" and len(args) >= 2:
        _check_replace(budget, s, args[0], args[1])


def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that checks the deadline and sizes its result (before, where it can)."""
    skip = 0 if _PassArg.from_obj(fn) is None else 1

    @functools.wraps(fn)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.time()
        value, rest = (args[skip], list(args[skip + 1 :])) if len(args) > skip else (None, [])
        if name == "center" and rest:
            for n in _ints(rest[:1]):
                budget.size(n, "center")
        elif name == "indent" and isinstance(value, str):
            width = rest[0] if rest else kwargs.get("width", 4)
            if isinstance(width, int):
                budget.size(len(value) + (value.count("\n") + 1) * width, "indent")
        elif name == "format" and isinstance(value, str):
            _check_printf(budget, value, tuple(rest) or kwargs)
        elif name == "replace" and len(rest) >= 2:
            _check_replace(budget, value, rest[0], rest[1])
        elif name == "join" and value is not None:
            items = []
            for item in value:
                budget.tick()
                items.append(item)
            sep = rest[0] if rest else kwargs.get("d", "")
            _check_join(budget, sep, items)
            args = (*args[:skip], items, *args[skip + 1 :])
        elif name == "slice" and rest:
            for n in _ints(rest[:1]):
                budget.size(n, "slice")
        return _check_result(budget, fn(*args, **kwargs))

    return bounded


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    _budget().size(n * max * 12, "lipsum()")
    return generate_lorem_ipsum(n, html, min, max)


class _BoundedCode(CodeGenerator):
    """Code that routes ``~`` and every ``for`` loop's iterable through the environment's
    checks (the sandbox has no hook for either)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("bounded_iter", lineno=node.lineno),
            [node.iter],
            [],
            None,
            None,
            lineno=node.lineno,
        )
        super().visit_For(node, frame)


class _BoundedSandbox(SandboxedEnvironment):
    """Jinja's sandbox (no unsafe attributes, ``range`` up to ``MAX_RANGE``) whose
    operators, calls, filters, concatenations and loops also respect the rendering's
    ``TemplateLimits``."""

    code_generator_class = _BoundedCode
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.globals["lipsum"] = _lipsum

    def bounded_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = _budget()
        for item in iterable:
            budget.tick()
            yield item

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        budget = _budget()
        budget.time()
        texts = [str(p) for p in parts]
        budget.size(sum(map(len, texts)), "a ~ concatenation")
        return "".join(texts)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.time()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, _SIZED) and isinstance(n, int):
                    budget.size(len(seq) * max(0, n), "a repetition")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS
            ):
                raise TemplateLimitError(f"an integer of more than {MAX_INT_BITS} bits")
        elif operator == "**":
            big = (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and abs(left) > 1
                and right * abs(left).bit_length() > MAX_INT_BITS
            )
            if big:
                raise TemplateLimitError(f"an integer of more than {MAX_INT_BITS} bits")
        elif operator == "+":
            if isinstance(left, _SIZED) and isinstance(right, _SIZED):
                budget.size(len(left) + len(right), "a + concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_printf(budget, left, right)
        return _check_result(budget, super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.time()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str | bytes):
            _check_str_method(budget, name, owner, args)
            if name == "join" and args:
                items = list(__self.bounded_iter(args[0]))
                _check_join(budget, owner, items)
                args = (items, *args[1:])
        elif isinstance(owner, list) and name == "extend" and args and isinstance(args[0], _SIZED):
            budget.size(len(owner) + len(args[0]), "a list")
        result = SandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)
        return _check_result(budget, result)

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget = _budget()
        budget.time()
        value = super().getattr(obj, attribute)
        if isinstance(obj, str) and attribute in ("format", "format_map") and callable(value):
            fmt, formatted = obj, value

            def checked(*args: Any, **kwargs: Any) -> Any:
                values = [*args, *kwargs.values()]
                if attribute == "format_map" and args and isinstance(args[0], dict):
                    values = list(args[0].values())
                _check_str_format(budget, fmt, values)
                return _check_result(budget, formatted(*args, **kwargs))

            return checked
        return value


_TEMPLATES = _BoundedSandbox(undefined=StrictUndefined, autoescape=False)


def check_template(text: str) -> str:
    try:
        _TEMPLATES.parse(text)
    except TemplateError as exc:
        raise ValueError(f"bad template {text!r}: {exc}") from exc
    return text


def _shown(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def render(text: str, variables: dict[str, Any], *, limits: TemplateLimits = DEFAULT_LIMITS) -> str:
    """Fill ``text`` with ``variables`` within ``limits``; ``TemplateFailure`` for any
    problem: a syntax error, an undefined name, a sandbox refusal, a range past the
    sandbox's ``MAX_RANGE``, a limit, an error the template's own code raises."""
    budget = _Budget(limits)
    token = _BUDGET.set(budget)
    try:
        out: list[str] = []
        total = 0
        for chunk in _TEMPLATES.from_string(text).generate(**variables):
            total += len(chunk)
            budget.size(total, "the output")
            budget.time()
            out.append(chunk)
        return "".join(out).strip()
    except TemplateLimitError as exc:
        raise TemplateLimitError(f"the template {_shown(text)} was stopped: {exc}") from None
    except TemplateError as exc:
        names = ", ".join(sorted(variables)) or "nothing"
        raise TemplateFailure(
            f"the query template {_shown(text)} cannot be filled: {exc} (this run has: {names})"
        ) from exc
    except (Exception, RecursionError, MemoryError) as exc:
        raise TemplateFailure(
            f"the template {_shown(text)} failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        _BUDGET.reset(token)


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
