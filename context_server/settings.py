"""The one settings object, read from ``CONTEXT_SERVER_*`` environment variables.

Built by the caller (the app factory, the CLI), never at import time.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Ceilings of the request models (documented in the OpenAPI schema); the settings of the
#: same names may lower them, never raise them.
MAX_QUERY_CHARS = 4096
MAX_ARTIFACT_CHARS = 1_000_000


class Settings(BaseSettings):
    """Embedded by default (SQLite + in-process Qdrant under ``home``); URLs scale it out."""

    model_config = SettingsConfigDict(env_prefix="CONTEXT_SERVER_", extra="ignore")

    home: Path = Field(
        default=Path(".context-server"),
        description="Data directory: the SQLite file and the embedded vector index live here.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store, e.g. postgresql+psycopg://user@host/db. "
        "Unset: a SQLite file in the data directory.",
    )
    qdrant_url: str | None = Field(
        default=None,
        description="URL of a Qdrant server. Unset: Qdrant's engine embedded in-process.",
    )
    qdrant_api_key: SecretStr | None = Field(default=None, description="API key for qdrant_url.")
    host: str = Field(default="127.0.0.1", description="Address `serve` binds to.")
    port: int = Field(default=8765, ge=1, le=65535, description="Port `serve` listens on.")
    max_document_bytes: int = Field(
        default=50 * 1024 * 1024,
        gt=0,
        description="Documents larger than this are recorded as failures (too_large).",
    )
    max_inflated_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="A container (docx/pptx/xlsx/odt/epub/zip, nested ones included) whose "
        "members declare more uncompressed bytes than this, or an email whose parts decode "
        "to more, is recorded as too_large without being parsed.",
    )
    max_compression_ratio: float = Field(
        default=200.0,
        gt=1,
        description="A container member over 1 MiB inflating more than this many times its "
        "compressed size is a bomb: too_large.",
    )
    max_archive_members: int = Field(
        default=10_000, gt=0, description="Members of a container, nested ones included."
    )
    max_archive_depth: int = Field(
        default=2, ge=0, description="Containers nested in containers (a docx with an xlsx: 1)."
    )
    max_email_parts: int = Field(
        default=1_000, gt=0, description="MIME parts of an .eml, attachments of a .msg."
    )
    max_text_chars: int = Field(
        default=10_000_000,
        gt=0,
        description="A document whose extracted text is longer is recorded as too_large "
        "(not truncated: a half-indexed document would look complete).",
    )
    parse_isolation: bool = Field(
        default=True,
        description="Parse in a child process bounded in time and memory (killed and "
        "replaced when a document exceeds them). Off: in-process, unbounded (tests).",
    )
    parse_timeout_seconds: float = Field(
        default=120, gt=0, description="Wall-clock time one document may take to parse."
    )
    parse_memory_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        gt=0,
        description="Address space the parse child may grow by while parsing (RLIMIT_AS "
        "above its warm size); a document needing more is too_large.",
    )
    parse_target: str = Field(
        default="indexing.parse:parse",
        description="The parse function the child runs, as module:function (tests only).",
    )
    sync_lease_seconds: float = Field(
        default=120,
        ge=5,
        description="A running sync renews its heartbeat every quarter of this; one whose "
        "process is gone (same host) or silent this long (other hosts) is interrupted.",
    )
    chunk_tokens: int = Field(default=200, ge=32, le=512, description="Maximum tokens per chunk.")
    chunk_overlap_tokens: int = Field(
        default=30, ge=0, le=128, description="Tokens repeated between consecutive chunks."
    )
    embed_backend: str = Field(
        default="auto",
        description="Embedding backend: auto (bf16 where the CPU has native bf16, else fp32), "
        "torch-bf16 or torch-fp32.",
    )
    embed_batch_size: int = Field(default=64, ge=1, le=1024, description="Chunks per batch.")
    agents_dir: Path | None = Field(
        default=None,
        description="Folder of agent YAML files (one agent each). Unset: `agents/` in the "
        "data directory.",
    )
    policy_file: Path | None = Field(
        default=None,
        description="Casbin policy (CSV: `p, subject, object, action` and `g, member, group` "
        "lines) narrowing what agent files allow. Unset: `policy.csv` in the data directory, "
        "if it exists; without one, the agent files alone decide.",
    )
    run_lease_seconds: float = Field(
        default=30,
        ge=1,
        le=3600,
        description="How long a worker holds a run without a heartbeat; a worker that dies "
        "loses the run to another after this long.",
    )
    run_workers: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Worker threads `serve` runs for agent runs (0: only separate "
        "`context-server worker` processes run them).",
    )

    template_max_chars: int = Field(
        default=100_000,
        ge=100,
        le=10_000_000,
        description="Longest output of an agent's query template, and longest string or "
        "list it may build; past it the run fails (a template error, not retried).",
    )
    template_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="Longest time one template rendering may take; past it the run fails.",
    )
    template_max_iterations: int = Field(
        default=1_000_000,
        ge=1,
        le=1_000_000_000,
        description="Most `for` loop iterations (all loops together) one rendering may do.",
    )
    max_request_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request body accepted, in bytes (413 above it), checked by "
        "Content-Length and while a body streams in, before anything parses it.",
    )
    max_query_chars: int = Field(
        default=MAX_QUERY_CHARS,
        ge=1,
        le=MAX_QUERY_CHARS,
        description="Longest query a context request may carry (422 above it; whatever "
        "sent it: the API, MCP, an agent run's query template).",
    )
    max_artifact_chars: int = Field(
        default=200_000,
        ge=1,
        le=MAX_ARTIFACT_CHARS,
        description="Longest artifact (a reviewer's edit, an external agent's submission).",
    )
    context_deadline_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="How long a context request may take; past it, it stops between stages "
        "with 503 and stores nothing.",
    )

    session_secret: SecretStr | None = Field(
        default=None,
        description="No longer used: web sessions are held on the server and the cookie is "
        "a random id. Accepted so that existing configurations keep working.",
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="OpenID Connect issuer URL of the provider the web pages may log in with "
        "(its discovery document is at ISSUER/.well-known/openid-configuration). Unset: "
        "single sign-on is off and only API keys log in.",
    )
    oidc_client_id: str | None = Field(
        default=None, description="The client id registered at the OIDC provider."
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="The client secret registered at the OIDC provider."
    )
    oidc_user_claim: str = Field(
        default="preferred_username",
        description="ID token claim naming the user: its value VALUE logs in as user:VALUE "
        "(e.g. preferred_username or email).",
    )
    oidc_scopes: str = Field(
        default="openid profile email",
        description="Scopes asked of the OIDC provider, space-separated; must include openid.",
    )

    @field_validator("embed_backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v not in ("auto", "torch-bf16", "torch-fp32"):
            raise ValueError("embed_backend must be auto, torch-bf16 or torch-fp32")
        return v

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parts = urlsplit(v.strip())
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not parts.netloc or not (
            parts.scheme == "https" or (parts.scheme == "http" and loopback)
        ):
            raise ValueError(
                f"oidc_issuer {v!r} must be an https:// URL (http:// only for a local test "
                "provider on 127.0.0.1 or localhost)"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"oidc_issuer {v!r} must not have a query or fragment")
        return v.strip()

    @field_validator("oidc_scopes")
    @classmethod
    def _scopes(cls, v: str) -> str:
        if "openid" not in v.split():
            raise ValueError(f"oidc_scopes {v!r} must include openid")
        return " ".join(v.split())

    @field_validator("oidc_user_claim")
    @classmethod
    def _claim(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("oidc_user_claim must name a claim, e.g. preferred_username")
        return v.strip()

    @model_validator(mode="after")
    def _oidc_client(self) -> Settings:
        """An issuer without its client credentials would only fail at the first login."""
        if self.oidc_issuer is None:
            return self
        missing = [
            f"CONTEXT_SERVER_{name.upper()}"
            for name in ("oidc_client_id", "oidc_client_secret")
            if not _filled(getattr(self, name))
        ]
        if missing:
            raise ValueError(
                f"CONTEXT_SERVER_OIDC_ISSUER is set, so {' and '.join(missing)} must be set "
                "too (the client registered at the provider)"
            )
        return self

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'store.sqlite3').resolve()}"

    @property
    def index_path(self) -> Path:
        return self.home / "index"

    @property
    def agents_path(self) -> Path:
        return self.agents_dir if self.agents_dir is not None else self.home / "agents"

    @property
    def policy_path(self) -> Path:
        return self.policy_file if self.policy_file is not None else self.home / "policy.csv"

    @property
    def server_file(self) -> Path:
        """Written by `serve` while it runs: how CLI commands find it."""
        return self.home / "server.json"


def _filled(value: str | SecretStr | None) -> bool:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    return bool(text and text.strip())
