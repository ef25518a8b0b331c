"""Declared configuration of the ``github`` connector."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from connectors.base import ConnectorConfig
from connectors.secrets import SecretRef

# GitHub logins: letters, digits and single hyphens; repository names: also '.', '_'.
_REPOSITORY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*)/[A-Za-z0-9._-]+$")


class GitHubConfig(ConnectorConfig):
    base_url: str = Field(
        default="https://api.github.com",
        description="The REST API root; GitHub Enterprise Server: https://HOST/api/v3.",
    )
    repositories: list[str] = Field(
        min_length=1, description="Repositories to sync, each as owner/name."
    )
    token: SecretRef = Field(
        description="A token that can read the repositories: {env: NAME} or {file: PATH}."
    )
    include_pull_requests: bool = Field(
        default=False, description="Also sync pull requests (the issues API lists them too)."
    )
    overlap_seconds: int = Field(
        default=300,
        ge=0,
        description="How far before the last cursor an incremental sync asks again, so an "
        "item updated while the previous sync ran (or under clock skew) is not missed.",
    )
    reconcile_hours: float = Field(
        default=1.0,
        ge=0,
        description="List every issue at most this often to find deleted or transferred "
        "ones (GitHub reports no tombstones); 0 lists on every sync.",
    )
    per_page: int = Field(default=100, ge=1, le=100, description="Page size (GitHub's max 100).")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url {v!r} must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("repositories")
    @classmethod
    def _repositories(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in v:
            if not _REPOSITORY_RE.match(name):
                raise ValueError(f"bad repository {name!r}: write it as owner/name")
            if name.lower() in seen:
                raise ValueError(f"repository {name!r} is listed twice")
            seen.add(name.lower())
        return v
