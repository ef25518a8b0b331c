"""Declared configuration of the ``filesystem`` connector.

ACL rules are ordered; the first rule whose glob matches a file's path (relative to
``root``, ``/``-separated) decides its ACL. A file no rule matches gets ``default_acl``:

- ``nobody`` (the default): readable by nobody until a rule says otherwise (fail closed);
- ``posix``: an ACL derived from the file's POSIX owner, group and mode:

  - owner may read (``u+r``)   → ``user:<owner name>``
  - group may read (``g+r``)   → ``group:<group name>``
  - others may read (``o+r``)  → public (every principal)

  Unknown uids/gids become ``user:uid-<n>`` / ``group:gid-<n>``, which nobody holds unless
  the principals file says so. A plain 0644 file is public under ``posix``: choose it only
  for a share whose modes are meant as its permissions.

Either way the connector counts the files no rule matched (``sync_notes()``:
``unmatched_acl_rule``), so a gap in the rules shows in the sync report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import ConnectorConfig, check_principal
from connectors.globs import compile_glob


class AclRule(BaseModel):
    """``glob`` → who may read. ``deny`` wins over ``allow``."""

    model_config = ConfigDict(extra="forbid")

    glob: str = Field(description="Path pattern relative to root: '*' in a folder, '**' across.")
    allow: list[str] = Field(default_factory=list, description="Principals granted read access.")
    deny: list[str] = Field(default_factory=list, description="Principals refused, always.")
    public: bool = Field(default=False, description="Readable by every principal.")

    @field_validator("glob")
    @classmethod
    def _glob(cls, v: str) -> str:
        compile_glob(v)
        return v

    @field_validator("allow", "deny")
    @classmethod
    def _principals(cls, v: list[str]) -> list[str]:
        return [check_principal(p) for p in v]


class FilesystemConfig(ConnectorConfig):
    root: Path = Field(description="The folder to ingest (local disk or a mounted share).")
    acl_rules: list[AclRule] = Field(
        default_factory=list,
        description="Ordered; the first matching glob wins; no match → `default_acl`.",
    )
    default_acl: Literal["nobody", "posix"] = Field(
        default="nobody",
        description="ACL of a file no rule matches: nobody, or derived from its POSIX mode.",
    )
    exclude: list[str] = Field(
        default_factory=lambda: ["**/.*", "**/.*/**", "**/~$*"],
        description="Globs of files never ingested (default: hidden files, Office lock files).",
    )
    url_prefix: str | None = Field(
        default=None,
        description="Base URL of the share as users open it; default: file:// URLs.",
    )
    follow_symlinks: bool = Field(
        default=False,
        description="Count paths through symlinked folders (inside root) as paths of their "
        "files: they only narrow ACLs, never add documents.",
    )
