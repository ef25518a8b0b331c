"""Declared configuration of the ``jira`` connector (Jira Cloud REST API v3)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from connectors.base import ConnectorConfig, check_principal
from connectors.secrets import SecretRef

_PROJECT_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


class JiraConfig(ConnectorConfig):
    base_url: str = Field(
        description="The site, e.g. https://acme.atlassian.net (or a local fake's URL)."
    )
    site_url: str | None = Field(
        default=None,
        description="Where people open issues (`<site_url>/browse/KEY-1`); default `base_url`. "
        "Set it when `base_url` is the OAuth gateway https://api.atlassian.com/ex/jira/<cloudId>.",
    )
    email: str | None = Field(
        default=None, description="The Atlassian account's email, for basic auth with api_token."
    )
    api_token: SecretRef | None = Field(
        default=None,
        description="API token for basic auth with `email` ({env: ...} or {file: ...}).",
    )
    token: SecretRef | None = Field(
        default=None,
        description="A bearer token (OAuth 2.0 access token or personal access token) instead "
        "of email + api_token.",
    )
    projects: list[str] = Field(
        default_factory=list, description="Project keys to sync; empty: every project visible."
    )
    jql: str | None = Field(
        default=None, description="An extra JQL filter ANDed with `projects` (no ORDER BY)."
    )
    search_api: Literal["jql", "classic"] = Field(
        default="jql",
        description="`jql`: the enhanced search POST /rest/api/3/search/jql (nextPageToken); "
        "`classic`: POST /rest/api/3/search (startAt/total), for installs that lack the former.",
    )
    user_principal: Literal["account_id", "email"] = Field(
        default="account_id",
        description="How a Jira user becomes a principal: user:<accountId> or user:<email>.",
    )
    browse_roles: list[str] | None = Field(
        default=None,
        description="Project role names whose actors may browse a project; default every role.",
    )
    project_acls: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Project key → principals, replacing the project-role lookup for that project.",
    )
    security_levels: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Issue security level id or name → principals, replacing the member lookup.",
    )
    overlap_minutes: int = Field(
        default=5, ge=1, le=1440, description="How far back each incremental query reaches."
    )
    page_size: int = Field(default=100, ge=1, le=5000, description="Issues per search page.")
    include_comments: bool = Field(default=True, description="Index comments with the issue.")
    timeout: float = Field(default=30.0, gt=0, description="Seconds per HTTP request.")

    @field_validator("base_url", "site_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @field_validator("projects")
    @classmethod
    def _projects(cls, v: list[str]) -> list[str]:
        for key in v:
            if not _PROJECT_KEY.match(key):
                raise ValueError(f"{key!r} is not a Jira project key (e.g. ABC)")
        return v

    @field_validator("jql")
    @classmethod
    def _jql(cls, v: str | None) -> str | None:
        if v is not None and re.search(r"\border\s+by\b", v, re.IGNORECASE):
            raise ValueError("jql must not have ORDER BY: the connector orders by updated")
        return v.strip() if v and v.strip() else None

    @field_validator("project_acls", "security_levels")
    @classmethod
    def _principals(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for principals in v.values():
            for p in principals:
                check_principal(p)
        return v

    @model_validator(mode="after")
    def _auth(self) -> JiraConfig:
        basic = self.email is not None or self.api_token is not None
        if basic and (self.email is None or self.api_token is None):
            raise ValueError("basic auth needs both email and api_token")
        if basic == (self.token is not None):
            raise ValueError("give either email + api_token (basic auth) or token (bearer)")
        return self

    @property
    def browse_url(self) -> str:
        return self.site_url or self.base_url
