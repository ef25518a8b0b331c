"""Drive sharing permissions → ``Acl``.

Every Drive role (owner, organizer, fileOrganizer, writer, commenter, reader) may read.

- ``user``   → ``user:<email>`` (lower-cased)
- ``group``  → ``group:<email>`` (lower-cased), the Google Group's address
- ``domain`` → ``group:domain-<domain>``, only when discoverable (``allowFileDiscovery``):
  "anyone at example.com *with the link*" is not a grant to the whole domain
- ``anyone`` → public, only when discoverable: a link-only file is not public
- ``deleted`` accounts, unknown types or roles, and addresses that do not make a valid
  principal grant nothing (fail closed).

Imports: connectors.base.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from connectors.base import Acl, check_principal

READ_ROLES = frozenset({"owner", "organizer", "fileOrganizer", "writer", "commenter", "reader"})


def principal(kind: str, name: object) -> str | None:
    """``kind:<name>`` lower-cased, or ``None`` when it is not a valid principal."""
    if not isinstance(name, str) or not name.strip():
        return None
    try:
        return check_principal(f"{kind}:{name.strip().lower()}")
    except ValueError:
        return None


def domain_group(domain: str) -> str | None:
    return principal("group", f"domain-{domain}")


def acl_from_permissions(permissions: Iterable[Mapping[str, Any]]) -> Acl:
    allow: list[str] = []
    public = False
    for p in permissions:
        if p.get("deleted") or p.get("role") not in READ_ROLES:
            continue
        kind = p.get("type")
        granted: str | None = None
        if kind == "user":
            granted = principal("user", p.get("emailAddress"))
        elif kind == "group":
            granted = principal("group", p.get("emailAddress"))
        elif kind == "domain" and p.get("allowFileDiscovery") is True:
            domain = p.get("domain")
            granted = domain_group(domain) if isinstance(domain, str) else None
        elif kind == "anyone" and p.get("allowFileDiscovery") is True:
            public = True
        if granted:
            allow.append(granted)
    return Acl.of(allow, public=public)


def acl_from_owners(owners: Iterable[Mapping[str, Any]]) -> Acl:
    """When Drive does not show a file's permissions: its owners only (fail closed)."""
    return Acl.of(p for o in owners if (p := principal("user", o.get("emailAddress"))))
