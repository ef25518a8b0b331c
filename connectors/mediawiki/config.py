"""Declared configuration of the ``mediawiki`` connector.

MediaWiki has no per-page read permissions in core (a wiki is readable by a group or by
everyone), so who may read what is declared here, most specific first:

1. ``title_rules``: the first rule whose ``prefix`` starts the page's full title
   (``Project:HR/`` …) decides;
2. ``namespace_acl``: the page's namespace's entry decides;
3. the wiki-wide ``read`` / ``deny`` / ``public``.

A rule *replaces* the wider ones (it does not add to them). ``read`` must be given unless
``public: true``: an unconfigured wiki is not silently readable by nobody or everybody.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.base import Acl, ConnectorConfig, check_principal
from connectors.secrets import SecretRef


def _principals(v: list[str]) -> list[str]:
    return [check_principal(p) for p in v]


class ReadRule(BaseModel):
    """Who may read: ``read`` and ``deny`` list principals; ``deny`` wins over ``read``."""

    model_config = ConfigDict(extra="forbid")

    read: list[str] = Field(default_factory=list, description="Principals granted read access.")
    deny: list[str] = Field(default_factory=list, description="Principals refused, always.")
    public: bool = Field(default=False, description="Readable by every principal.")

    @field_validator("read", "deny")
    @classmethod
    def _check(cls, v: list[str]) -> list[str]:
        return _principals(v)

    def to_acl(self) -> Acl:
        return Acl.of(self.read, self.deny, public=self.public)


class TitleRule(ReadRule):
    prefix: str = Field(
        min_length=1,
        description="Start of the full page title, namespace included (e.g. 'Project:HR/').",
    )


class MediaWikiConfig(ConnectorConfig):
    base_url: str = Field(
        description="The wiki's script path, where api.php lives (e.g. https://wiki.example.org/w)."
    )
    namespaces: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="Namespace numbers to sync (0 = main, 4 = Project, …).",
    )
    username: str | None = Field(
        default=None, description="Bot password user name ('User@botname'), with `password`."
    )
    password: SecretRef | None = Field(
        default=None, description="Bot password (Special:BotPasswords), a reference."
    )
    token: SecretRef | None = Field(
        default=None, description="OAuth 2 owner-only access token, sent as a Bearer header."
    )
    read: list[str] | None = Field(
        default=None,
        description="Principals who may read every page (unless a namespace or title rule says "
        "otherwise); required unless `public` is true.",
    )
    deny: list[str] = Field(default_factory=list, description="Principals refused, always.")
    public: bool = Field(default=False, description="The whole wiki is readable by everyone.")
    namespace_acl: dict[int, ReadRule] = Field(
        default_factory=dict, description="Namespace number → {read, deny, public} override."
    )
    title_rules: list[TitleRule] = Field(
        default_factory=list,
        description="Ordered {prefix, read, deny, public}; the first matching prefix decides.",
    )
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Group name → member principals, yielded by memberships() as group:<name>.",
    )
    article_path: str | None = Field(
        default=None,
        description="Page URL pattern with $1 for the title (default: from meta=siteinfo).",
    )
    overlap_seconds: int = Field(
        default=300, ge=0, description="Incremental syncs re-read changes this far back."
    )
    rc_max_age_days: float = Field(
        default=90.0,
        gt=0,
        description="How long the wiki keeps recent changes ($wgRCMaxAge); an older cursor "
        "triggers a full re-listing.",
    )
    max_page_bytes: int = Field(
        default=5_000_000, gt=0, description="Pages with larger wikitext are `too_large` failures."
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if v.endswith("/api.php"):
            v = v[: -len("/api.php")]
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url {v!r} must start with http:// or https://")
        return v

    @field_validator("read", "deny")
    @classmethod
    def _principal_list(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _principals(v)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, members in v.items():
            check_principal(f"group:{name}")
            _principals(members)
        return v

    @field_validator("article_path")
    @classmethod
    def _article_path(cls, v: str | None) -> str | None:
        if v is not None and "$1" not in v:
            raise ValueError(f"article_path {v!r} must contain $1 where the title goes")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MediaWikiConfig:
        if self.read is None and not self.public:
            raise ValueError(
                "say who may read the wiki: `read: [group:…]` or `public: true` "
                "(`read: []` makes pages readable only through namespace/title rules)"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("a bot password needs both `username` and `password`")
        if self.username is not None and self.token is not None:
            raise ValueError("give either a bot password (`username`/`password`) or `token`")
        return self

    def wiki_acl(self) -> Acl:
        return Acl.of(self.read or [], self.deny, public=self.public)

    def acl_for(self, ns: int, title: str) -> Acl:
        """The ACL of a page: first matching title rule, else its namespace's, else the wiki's."""
        normalized = title.replace("_", " ")
        for rule in self.title_rules:
            if normalized.startswith(rule.prefix.replace("_", " ")):
                return rule.to_acl()
        if ns in self.namespace_acl:
            return self.namespace_acl[ns].to_acl()
        return self.wiki_acl()

    def scope_fingerprint(self) -> str:
        """Changes when what is synced or who may read it changes: the next sync re-lists."""
        scope = {
            "namespaces": sorted(self.namespaces),
            "read": self.read,
            "deny": self.deny,
            "public": self.public,
            "namespace_acl": {str(k): v.model_dump() for k, v in self.namespace_acl.items()},
            "title_rules": [r.model_dump() for r in self.title_rules],
            "article_path": self.article_path,
        }
        encoded = json.dumps(scope, sort_keys=True).encode("utf-8")
        return hashlib.sha256(encoded).hexdigest()[:16]
