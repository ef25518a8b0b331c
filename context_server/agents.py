"""Declared agents: one YAML file each in the agents directory, validated on load and
versioned by content hash.

An agent file is the unit an admin edits to change what an agent may draw from and for
whom it may act; replacing the file changes the agent, no code or restart involved (the
catalog re-reads a file whose modification time or size changed). A file that does not
validate is reported with its error and never used; the other agents keep working.

This module defines the context part of the file (the runner adds its own keys)::

    name: support-bot
    description: Answers customer tickets
    sources: [drive, handbook]        # the only sources it may draw from
    acting_as: on_behalf_of           # on_behalf_of | as_agent | intersection
    serves: ["group:everyone"]        # whom it may act for
    principals: []                    # its own principals, for as_agent / intersection
    budget_tokens: 2000
    max_age: 365d                     # freshness limit (optional)
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors import safe_yaml
from connectors.base import check_principal
from context_server.durations import parse_duration
from context_server.errors import NotFoundError, SpecError
from context_server.harness import HarnessSpec
from context_server.specs import NAME_RE
from context_server.workflow import (
    ContextQuery,
    ManualTrigger,
    OutputSpec,
    ReviewSpec,
    ShipSpec,
    TriggerSpec,
)

ActingAs = Literal["on_behalf_of", "as_agent", "intersection"]

#: The largest budget a request may ask for (about 100 pages of text).
MAX_BUDGET_TOKENS = 100_000


class AgentSpec(BaseModel):
    """The context part of an agent file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique, lowercase: letters, digits, '-', '_'.")
    description: str = ""
    sources: tuple[str, ...] = Field(
        min_length=1, description="The only sources the agent may draw from."
    )
    acting_as: ActingAs = Field(
        default="on_behalf_of",
        description="on_behalf_of: reads what the user may read; as_agent: what the "
        "agent's own principals may read; intersection: only what both may read.",
    )
    serves: tuple[str, ...] = Field(
        default=(), description="Principals it may act for (a user, or a group they are in)."
    )
    principals: tuple[str, ...] = Field(
        default=(), description="The agent's own principals (as_agent, intersection)."
    )
    budget_tokens: int = Field(default=2000, ge=1, le=MAX_BUDGET_TOKENS)
    max_age: str | None = Field(
        default=None, description="Only documents updated within this long, e.g. 365d."
    )
    # -- the runnable part (context_server/workflow.py) --
    owner: str | None = Field(
        default=None,
        description="Who answers for the agent (user:<name>); scheduled and "
        "event runs act for the owner unless their trigger names a user.",
    )
    trigger: TriggerSpec = Field(default_factory=ManualTrigger)
    context: ContextQuery = Field(default_factory=ContextQuery)
    harness: HarnessSpec | None = Field(
        default=None,
        description="How a run does its work; without one the agent only serves context.",
    )
    output: OutputSpec = Field(default_factory=OutputSpec)
    review: ReviewSpec | None = Field(
        default=None, description="Who approves a run's output before it ships."
    )
    ship: ShipSpec | None = Field(default=None, description="What happens after approval.")
    max_attempts: int = Field(default=3, ge=1, le=20, description="Tries per run.")
    timeout: str = Field(default="15m", description="A run's longest time (harness + context).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"bad agent name {v!r}: lowercase letters, digits, '-', '_'")
        return v

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"bad source name {name!r}")
        return tuple(sorted(set(v)))

    @field_validator("serves", "principals")
    @classmethod
    def _principals(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted({check_principal(p) for p in v}))

    @field_validator("max_age")
    @classmethod
    def _max_age(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str | None) -> str | None:
        if v is not None and not check_principal(v).startswith("user:"):
            raise ValueError(f"owner must be a user (user:<name>), not {v!r}")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _runnable(self) -> AgentSpec:
        if self.harness is None:
            return self
        if self.review is None:
            raise ValueError(
                "an agent with a harness needs `review: {approvers: [...]}`: nothing it "
                "produces ships without a human's approval"
            )
        if self.trigger.kind != "manual" and (self.trigger.on_behalf_of or self.owner) is None:
            raise ValueError(
                f"a {self.trigger.kind} trigger runs for a user: give `owner: user:<name>` "
                "or `trigger.on_behalf_of`"
            )
        if self.trigger.kind == "event" and self.trigger.source not in self.sources:
            # Not an error: an agent may react to a source it does not draw context from.
            pass
        return self

    @property
    def runnable(self) -> bool:
        return self.harness is not None

    def default_user(self) -> str | None:
        """Whom a run without an explicit user acts for."""
        if self.trigger.kind != "manual" and self.trigger.on_behalf_of:
            return self.trigger.on_behalf_of
        return self.owner

    def max_age_delta(self) -> timedelta | None:
        return None if self.max_age is None else parse_duration(self.max_age)

    def own_principal(self) -> str:
        """The agent as a principal: what policy lines and ACLs name it by."""
        return f"agent:{self.name}"


@dataclass(frozen=True)
class Agent:
    spec: AgentSpec
    version: str  # sha256 of the file's bytes, hex
    path: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "version": self.version,
            "path": str(self.path),
            **self.spec.model_dump(mode="json", exclude={"name"}),
        }


@dataclass(frozen=True)
class InvalidAgentFile:
    path: Path
    error: str

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "error": self.error}


#: Limits of one agent file (connectors.safe_yaml): far above any real agent, far below
#: what would stall the catalog, which (re)reads files on the request path.
AGENT_FILE_MAX_BYTES = 256 * 1024
AGENT_FILE_MAX_NODES = 20_000


def parse_agent_yaml(text: str | bytes, what: str = "agent file") -> Any:
    """An agent file's YAML, bounded; YAML 1.2 booleans (only true/false), because YAML 1.1
    also reads on/off/yes/no as booleans, which would turn an event trigger's
    ``on: [created]`` key into ``True``."""
    return safe_yaml.load(
        text,
        what=what,
        max_bytes=AGENT_FILE_MAX_BYTES,
        max_nodes=AGENT_FILE_MAX_NODES,
        yaml12_bools=True,
    )


def load_agent_file(path: Path) -> Agent:
    """Read and validate one agent file; ``SpecError`` says what is wrong and where. A file
    past the YAML limits costs one bounded read and parse, never more."""
    try:
        raw = safe_yaml.read_bounded(path, AGENT_FILE_MAX_BYTES)
        data = parse_agent_yaml(raw, str(path))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from exc
    except safe_yaml.YamlError as exc:
        raise SpecError(str(exc)) from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    try:
        spec = AgentSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{path}: {exc}") from exc
    return Agent(spec=spec, version=hashlib.sha256(raw).hexdigest(), path=path)


def agent_schema() -> dict[str, Any]:
    """The agent file's JSON Schema."""
    return AgentSpec.model_json_schema()


class AgentCatalog:
    """The agents in a directory (``*.yaml`` / ``*.yml``), re-read when files change."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._seen: dict[Path, tuple[int, int]] = {}  # path -> (mtime_ns, size)
        self._loaded: dict[Path, Agent | InvalidAgentFile] = {}

    def _refresh(self) -> None:
        try:
            paths = sorted(
                p for p in self.directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
            )
        except FileNotFoundError:
            paths = []
        except OSError as exc:
            raise SpecError(f"cannot list the agents directory {self.directory}: {exc}") from exc
        current: dict[Path, tuple[int, int]] = {}
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue  # removed while listing
            current[path] = (stat.st_mtime_ns, stat.st_size)
        for path in set(self._loaded) - set(current):
            del self._loaded[path]
        for path, stamp in current.items():
            if self._seen.get(path) != stamp or path not in self._loaded:
                try:
                    self._loaded[path] = load_agent_file(path)
                except SpecError as exc:
                    self._loaded[path] = InvalidAgentFile(path, str(exc))
        self._seen = current

    def scan(self) -> tuple[list[Agent], list[InvalidAgentFile]]:
        """Valid agents by name, and the files that do not validate. Two files declaring
        one name make both invalid: which one is meant cannot be guessed."""
        with self._lock:
            self._refresh()
            loaded = list(self._loaded.values())
        agents = [a for a in loaded if isinstance(a, Agent)]
        invalid = [a for a in loaded if isinstance(a, InvalidAgentFile)]
        by_name: dict[str, list[Agent]] = {}
        for agent in agents:
            by_name.setdefault(agent.spec.name, []).append(agent)
        valid = []
        for name, same in sorted(by_name.items()):
            if len(same) == 1:
                valid.append(same[0])
                continue
            files = ", ".join(str(a.path) for a in same)
            invalid += [
                InvalidAgentFile(a.path, f"{a.path}: agent {name!r} is also declared in {files}")
                for a in same
            ]
        return valid, sorted(invalid, key=lambda i: str(i.path))

    def get(self, name: str) -> Agent:
        valid, invalid = self.scan()
        for agent in valid:
            if agent.spec.name == name:
                return agent
        for bad in invalid:
            if bad.path.stem == name:
                raise SpecError(
                    f"agent {name!r} is declared in a file that does not validate: {bad.error}"
                )
        raise NotFoundError(
            f"no agent named {name!r} in {self.directory} (add a YAML file there; "
            "`agents list` shows what is loaded)"
        )


def spec_json(agent: Agent) -> dict[str, Any]:
    """The validated spec as stored beside bundles (stable key order)."""
    data: dict[str, Any] = json.loads(agent.spec.model_dump_json())
    return data
