"""Declared configuration of the ``google_drive`` connector.

Credentials: exactly one of ``token`` (an OAuth 2.0 access token) or
``service_account_key`` (a service account's JSON key, exchanged for tokens by a signed
JWT at ``token_url``; ``subject`` impersonates a user through domain-wide delegation).

Scope: everything the credentials can see (``My Drive`` and files shared with it), one
shared drive (``shared_drive_id``), or one folder tree (``folder_id``, optionally inside
that shared drive).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from connectors.base import ConnectorConfig, check_principal
from connectors.secrets import SecretRef

DEFAULT_BASE_URL = "https://www.googleapis.com"
DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"


class GoogleDriveConfig(ConnectorConfig):
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="Root of the Google APIs (Drive under /drive/v3, Directory under "
        "/admin/directory/v1); a local fake in tests.",
    )
    token: SecretRef | None = Field(
        default=None, description="An OAuth 2.0 access token: {env: NAME} or {file: PATH}."
    )
    service_account_key: SecretRef | None = Field(
        default=None,
        description="A service account's JSON key file ({file: PATH}) or its text ({env: NAME}).",
    )
    subject: str | None = Field(
        default=None,
        description="With service_account_key: the user to impersonate (domain-wide delegation).",
    )
    token_url: str = Field(
        default=DEFAULT_TOKEN_URL,
        description="Where a service account's signed JWT is exchanged for an access token.",
    )
    shared_drive_id: str | None = Field(
        default=None, description="Sync this shared drive only (its id from the drive's URL)."
    )
    folder_id: str | None = Field(
        default=None, description="Sync this folder and everything below it only."
    )
    docs_format: Literal["text/html", "text/plain"] = Field(
        default="text/html",
        description="Export format of Google Docs: HTML keeps headings for the chunker.",
    )
    exclude_mime_types: list[str] = Field(
        default_factory=lambda: ["image/*", "video/*", "audio/*"],
        description="MIME types never ingested ('*' matches any tail, e.g. 'image/*').",
    )
    directory: bool = Field(
        default=False,
        description="Read Google Groups (and, with `domain`, the domain's users) from the "
        "Admin SDK Directory API; needs a directory read scope.",
    )
    domain: str | None = Field(
        default=None,
        description="The Workspace domain: scopes the Directory listing and names the "
        "group:domain-<domain> that domain-wide sharing grants.",
    )
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Extra groups: {name: [principals]}; name 'eng@example.com' is "
        "group:eng@example.com.",
    )

    @field_validator("base_url", "token_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for group, members in v.items():
            check_principal(f"group:{group}")
            for member in members:
                check_principal(member)
        return v

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        if v is not None:
            v = v.strip().lower()
            check_principal(f"group:domain-{v}")
        return v

    @model_validator(mode="after")
    def _credentials(self) -> GoogleDriveConfig:
        if (self.token is None) == (self.service_account_key is None):
            raise ValueError("give exactly one of token or service_account_key")
        if self.subject is not None and self.service_account_key is None:
            raise ValueError("subject (impersonation) needs service_account_key")
        return self
