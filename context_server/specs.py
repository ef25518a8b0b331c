"""The YAML files users write: a source, and the principals (groups and their members)."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors import safe_yaml
from connectors.base import check_principal
from connectors.secrets import SecretRef
from context_server.errors import SpecError
from context_server.schedules import check_schedule

M = TypeVar("M", bound=BaseModel)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


class SourceSpec(BaseModel):
    """``name`` + ``kind`` + the kind's own ``config`` (validated by its connector)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique, lowercase: letters, digits, '-', '_'.")
    kind: str
    config: dict[str, Any] = Field(default_factory=dict)
    schedule: str | None = Field(
        default=None, description="'every 15m' or a cron expression (UTC); unset: on demand."
    )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        return None if v is None else check_schedule(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"bad source name {v!r}: lowercase letters, digits, '-', '_'")
        return v


class PrincipalsSpec(BaseModel):
    """``groups: {name: [members]}``; a member is ``user:<name>`` or ``group:<name>``."""

    model_config = ConfigDict(extra="forbid")

    groups: dict[str, list[str]] = Field(default_factory=dict)
    users: list[str] = Field(default_factory=list, description="Users in no group (optional).")

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for group, members in v.items():
            check_principal(f"group:{group}")
            for member in members:
                check_principal(member)
        return v

    @field_validator("users")
    @classmethod
    def _users(cls, v: list[str]) -> list[str]:
        for user in v:
            if not check_principal(user).startswith("user:"):
                raise ValueError(f"{user!r} in users is not a user principal")
        return v

    def memberships(self) -> list[tuple[str, str]]:
        return [(m, f"group:{g}") for g, members in self.groups.items() for m in members]

    def principals(self) -> set[str]:
        names = {f"group:{g}" for g in self.groups} | set(self.users)
        return names | {m for members in self.groups.values() for m in members}


#: Limits of a source or principals file (connectors.safe_yaml). A principals file lists
#: an organization's groups and members, so it may be much larger than a source's.
#: Reading costs about 30 microseconds per node (pure-Python PyYAML): 50k nodes ~1.5 s,
#: 150k ~4.5 s at worst.
SPEC_MAX_BYTES = safe_yaml.MAX_BYTES
SPEC_MAX_NODES = 50_000
PRINCIPALS_MAX_BYTES = 4 * 1024 * 1024
PRINCIPALS_MAX_NODES = 150_000


def read_yaml(
    path: Path, *, max_bytes: int = SPEC_MAX_BYTES, max_nodes: int = SPEC_MAX_NODES
) -> Any:
    """A user's YAML file, read with the bounded loader; ``SpecError`` naming the file and
    what is wrong (a limit, a syntax error) otherwise."""
    try:
        raw = safe_yaml.read_bounded(path, max_bytes)
        return safe_yaml.load(raw, what=str(path), max_bytes=max_bytes, max_nodes=max_nodes)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from exc
    except safe_yaml.YamlError as exc:
        raise SpecError(str(exc)) from None


def _validate(model: type[M], data: Any, where: str) -> M:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{where}: {exc}") from exc


def load_source_spec(path: Path) -> SourceSpec:
    return _validate(SourceSpec, read_yaml(path), str(path))


def load_principals_spec(path: Path) -> PrincipalsSpec:
    data = read_yaml(path, max_bytes=PRINCIPALS_MAX_BYTES, max_nodes=PRINCIPALS_MAX_NODES)
    return _validate(PrincipalsSpec, data, str(path))


def resolve_paths(config_model: type[BaseModel], config: dict[str, Any], base: Path) -> None:
    """Resolve relative path fields of a connector config against the YAML file's folder,
    including ``{file: PATH}`` credential references (``SecretRef``)."""
    hints = typing.get_type_hints(config_model)
    for name in config_model.model_fields:
        value = config.get(name)
        if hints.get(name) is Path and isinstance(value, str) and not Path(value).is_absolute():
            config[name] = str((base / value).resolve())
        elif _is_secret_ref(hints.get(name)) and isinstance(value, dict):
            file = value.get("file")
            if isinstance(file, str) and not Path(file).is_absolute():
                config[name] = {**value, "file": str((base / file).resolve())}


def _is_secret_ref(hint: Any) -> bool:
    return hint is SecretRef or SecretRef in typing.get_args(hint)
