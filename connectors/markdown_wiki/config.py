"""Declared configuration of the ``markdown_wiki`` connector.

ACL rules are the filesystem connector's (:class:`~connectors.filesystem.config.AclRule`):
ordered, the first rule whose glob matches a page's path (relative to ``root``,
``/``-separated) decides its ACL, ``deny`` wins over ``allow``. A wiki page has no
meaningful POSIX owner, so a page no rule matches gets ``default_acl``, and when that is
unset it is readable by nobody (fail closed).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from connectors.base import AclSpec, ConnectorConfig, check_principal
from connectors.filesystem.config import AclRule
from connectors.globs import compile_glob

__all__ = ["AclRule", "AclSpec", "MarkdownWikiConfig"]


class MarkdownWikiConfig(ConnectorConfig):
    root: Path = Field(description="The wiki's folder; relative to the source YAML's folder.")
    base_url: str = Field(
        description="The published site's URL; page URLs and rewritten links are built on it."
    )
    include: list[str] = Field(
        default_factory=lambda: ["**/*.md", "**/*.markdown"],
        min_length=1,
        description="Globs of the files that are pages.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Globs of files never ingested (hidden files and folders always are).",
    )
    index_names: list[str] = Field(
        default_factory=lambda: ["index"],
        description="Page names (without extension) that stand for their folder's URL.",
    )
    acl_rules: list[AclRule] = Field(
        default_factory=list,
        description="Ordered; the first matching glob wins; no match → `default_acl`.",
    )
    default_acl: AclSpec | None = Field(
        default=None,
        description="ACL of a page no rule matches; unset → readable by nobody.",
    )
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Group name → member principals, yielded by memberships().",
    )
    max_page_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="A larger page is a `too_large` failure, never read into memory.",
    )
    follow_symlinks: bool = Field(
        default=False, description="Descend into symlinked folders (inside root only)."
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"bad base_url {v!r}: write an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError(f"bad base_url {v!r}: no query or fragment")
        return v.rstrip("/")

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        for pattern in v:
            compile_glob(pattern)
        return v

    @field_validator("index_names")
    @classmethod
    def _index_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or "/" in name or "." in name:
                raise ValueError(f"bad index name {name!r}: write a bare name like 'index'")
        return v

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, members in v.items():
            check_principal(f"group:{name}")
            for member in members:
                check_principal(member)
        return v
