"""The one settings object, read from ``CONTEXT_SERVER_*`` environment variables.

Built by the caller (the app factory, the CLI), never at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    session_secret: SecretStr | None = Field(
        default=None,
        description="Key signing the web pages' session cookies. Unset: a random key per "
        "process (a restart logs everyone out; several API processes need one shared key).",
    )

    @field_validator("embed_backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v not in ("auto", "torch-bf16", "torch-fp32"):
            raise ValueError("embed_backend must be auto, torch-bf16 or torch-fp32")
        return v

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
