"""``kind`` → connector class, lazily imported.

Built-in connectors register exactly as a third-party package would: through the
``context_server.connectors`` entry-point group (see pyproject.toml).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any, cast

from connectors.base import Checkpoint, ConnectorConfig
from connectors.errors import ConfigError, UnknownKindError

GROUP = "context_server.connectors"


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def kinds() -> list[str]:
    return sorted(_entry_points())


def connector_class(kind: str) -> Any:
    """The registered class for ``kind`` (imported on first use)."""
    eps = _entry_points()
    if kind not in eps:
        raise UnknownKindError(
            f"no connector of kind {kind!r}; registered kinds: {', '.join(kinds()) or 'none'}"
        )
    return eps[kind].load()


def build(kind: str, config: dict[str, Any]) -> Any:
    """Validate ``config`` against the kind's declared model and build the connector."""
    cls = connector_class(kind)
    model = cast(type[ConnectorConfig], cls.config_model)
    try:
        parsed = model.model_validate(config)
    except ValueError as exc:
        raise ConfigError(f"invalid config for a {kind} source:\n{exc}") from exc
    return cls(parsed)


def checkpoint_model(kind: str) -> type[Checkpoint]:
    return cast(type[Checkpoint], connector_class(kind).checkpoint_model)
