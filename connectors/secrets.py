"""Credentials in source YAML are references, never values.

A connector config declares a credential as ``SecretRef``; the YAML gives either
``{env: GITHUB_TOKEN}`` or ``{file: /run/secrets/github}``. The reference is what gets
validated and stored (in the database, in listings); the value is read only when the
connector talks to its source, and is held as ``SecretStr`` so it never prints.

A plain string is refused: it would end up in the database in plain text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connectors.errors import ConfigError

#: A file-held secret larger than this is certainly not a token.
MAX_SECRET_FILE_BYTES = 64 * 1024


class SecretRef(BaseModel):
    """Where a credential comes from: an environment variable or a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(default=None, description="Name of an environment variable.")
    file: Path | None = Field(default=None, description="Path of a file holding the secret.")

    @model_validator(mode="before")
    @classmethod
    def _not_a_value(cls, data: Any) -> Any:
        if isinstance(data, str):
            raise ValueError(
                "a credential is given as a reference, {env: VARIABLE} or {file: PATH}, "
                "never as the value itself (it would be stored in plain text)"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def resolve(self) -> SecretStr:
        """The secret's value; ``ConfigError`` (never showing a value) when it is missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"the credential's environment variable {self.env} is not set")
            return SecretStr(value.strip())
        assert self.file is not None
        try:
            with self.file.open("rb") as f:
                raw = f.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the credential file {self.file}: {exc}") from exc
        if len(raw) > MAX_SECRET_FILE_BYTES:
            raise ConfigError(f"the credential file {self.file} is too large to be a secret")
        try:
            value = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"the credential file {self.file} is not UTF-8 text") from None
        if not value:
            raise ConfigError(f"the credential file {self.file} is empty")
        return SecretStr(value)
