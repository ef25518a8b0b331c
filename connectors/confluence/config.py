"""Declared configuration of the ``confluence`` connector.

The connector reads the pages of the listed spaces of one Confluence Cloud site with basic
auth (an Atlassian account's email and an API token). The token is a ``SecretRef``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from connectors.base import ConnectorConfig
from connectors.secrets import SecretRef

_SPACE_KEY = re.compile(r"^~?[A-Za-z0-9_\-]+$")


class ConfluenceConfig(ConnectorConfig):
    base_url: str = Field(
        description="The site, e.g. https://acme.atlassian.net (a trailing /wiki is dropped)."
    )
    email: str = Field(description="The Atlassian account the API token belongs to.")
    api_token: SecretRef = Field(
        description="The account's API token: {env: NAME} or {file: PATH}."
    )
    spaces: list[str] = Field(
        min_length=1, description="Keys of the spaces to sync, e.g. [ENG, HR]."
    )
    user_id_field: Literal["accountId", "email"] = Field(
        default="accountId",
        description="What names a user principal: user:<accountId> or user:<email>.",
    )
    page_limit: int = Field(
        default=250, ge=1, le=250, description="Results asked for per request (v2 allows 250)."
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds per HTTP request.")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(
                f"base_url {v!r} must be an http(s) URL such as https://acme.atlassian.net"
            )
        if v.endswith("/wiki"):
            v = v[: -len("/wiki")]
        return v

    @field_validator("spaces")
    @classmethod
    def _spaces(cls, v: list[str]) -> list[str]:
        for key in v:
            if not _SPACE_KEY.match(key):
                raise ValueError(
                    f"bad space key {key!r}: letters, digits, '_' or '-' (a '~' first)"
                )
        if len(set(v)) != len(v):
            raise ValueError("a space key is listed twice")
        return v
