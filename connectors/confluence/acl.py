"""Confluence's permission model as ``Acl`` values: pure functions, no HTTP.

Who may read a page is the *intersection* of several levels:

* the space's ``read/space`` permission (users and groups), and
* the read restriction of the page itself and of every ancestor that has one (a restriction
  on an ancestor applies to all its descendants; an empty restriction is no restriction).

``Acl`` is an allow-list (a principal passes when it or a group it holds is listed), so an
intersection has to be computed here. With one level (no restrictions) the level's users and
groups are the ACL as they are. With several, ``effective_acl`` keeps:

* a group that is listed at *every* level (its members pass every level, whoever joins later);
* a user who passes every level on their own or through a group listed there whose members
  we know, not counting the groups kept above (those already let them in, and stop doing so
  when the user leaves the group).

A user who qualifies at some level only through a group whose members could not be read is
left out: fail closed. Users expanded from groups are a snapshot, recomputed on every sync.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connectors.base import PRINCIPAL_RE, Acl

_NOT_ALLOWED = re.compile(r"[^a-z0-9._@+\-]+")


def group_principal(name: str) -> str | None:
    """``group:confluence-<slug of the group's name>``; ``None`` for a name with no slug."""
    slug = _NOT_ALLOWED.sub("-", name.strip().lower()).strip("-")
    return f"group:confluence-{slug}" if slug else None


def account_principal(account_id: str) -> str | None:
    """``user:<accountId>``; a ``:`` (as in ``557058:f581…``) becomes ``-``."""
    value = f"user:{re.sub(r'[^A-Za-z0-9._@+-]', '-', account_id.strip())}"
    return value if PRINCIPAL_RE.match(value) else None


def email_principal(email: str | None) -> str | None:
    """``user:<email, lowercased>``; ``None`` when hidden or not a valid principal."""
    if not email:
        return None
    value = f"user:{email.strip().lower()}"
    return value if PRINCIPAL_RE.match(value) else None


@dataclass(frozen=True)
class Level:
    """The principals one level (the space, or one restriction) lets read."""

    users: frozenset[str]
    groups: frozenset[str]

    @property
    def empty(self) -> bool:
        return not self.users and not self.groups


Members = Callable[[str], frozenset[str] | None]
"""A group principal → its user principals, or ``None`` when unknown."""


def effective_acl(levels: Sequence[Level], members: Members) -> Acl:
    """The ACL of content readable only by principals that pass every level."""
    if not levels:
        return Acl()
    if len(levels) == 1:
        return Acl.of(sorted(levels[0].users | levels[0].groups))
    groups = frozenset.intersection(*(level.groups for level in levels))

    def passes(user: str, level: Level) -> bool:
        if user in level.users:
            return True
        return any(user in (members(g) or ()) for g in level.groups - groups)

    candidates: set[str] = set()
    for level in levels:
        candidates |= level.users
        for g in level.groups - groups:
            candidates |= members(g) or frozenset()
    users = {u for u in candidates if all(passes(u, level) for level in levels)}
    return Acl.of(sorted(users | groups))


def fingerprint(acl: Acl) -> str:
    """A short stable digest of an ACL, kept in the checkpoint to notice ACL-only changes."""
    return hashlib.sha256(acl.model_dump_json().encode("utf-8")).hexdigest()[:16]
