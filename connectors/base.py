"""The connector contract: what every source turns into.

A connector reads one external system and yields a stream of changes:

    Upsert(SourceDocument)   a document that exists now (new, changed or unchanged)
    Delete(external_id)      a document that no longer exists at the source
    Failure(external_id, …)  a document that could not be read; the sync goes on

``sync(since)`` is a generator: it yields changes and *returns* the next checkpoint, so
the caller commits the checkpoint only after it has consumed (and stored) every change.
``list_ids()`` is the cheap listing used to reconcile deletions and ACLs.

Every document carries a required :class:`Acl`. There is no default: a connector that
cannot tell who may read a document must say so explicitly (``Acl.private(owner)``).
Principals are written ``user:<name>`` or ``group:<name>``.

Imports: stdlib and pydantic only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

PRINCIPAL_RE = re.compile(r"^(user|group):[A-Za-z0-9][A-Za-z0-9._@+\-]*$")

#: The principal every caller holds; an ACL grants it only when the document is public.
PUBLIC = "public:*"


def check_principal(value: str) -> str:
    """Return ``value`` if it is a well-formed principal, else raise ``ValueError``."""
    if not PRINCIPAL_RE.match(value):
        raise ValueError(
            f"bad principal {value!r}: write 'user:<name>' or 'group:<name>' "
            "(letters, digits, '.', '_', '@', '+', '-')"
        )
    return value


class Acl(BaseModel):
    """Who may read a document, captured from the source at ingest.

    A principal may read when the document is public or one of its principals is in
    ``users``/``groups``, and none of its principals is in ``deny``. A group nobody
    belongs to (including one we have never heard of) grants nothing.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    public: bool = False
    deny: tuple[str, ...] = ()

    @field_validator("users")
    @classmethod
    def _users(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not check_principal(p).startswith("user:"):
                raise ValueError(f"{p!r} in users is not a user principal")
        return tuple(sorted(set(v)))

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not check_principal(p).startswith("group:"):
                raise ValueError(f"{p!r} in groups is not a group principal")
        return tuple(sorted(set(v)))

    @field_validator("deny")
    @classmethod
    def _deny(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted({check_principal(p) for p in v}))

    @classmethod
    def private(cls, owner: str) -> Acl:
        """Only ``owner`` (a principal) may read."""
        check_principal(owner)
        if owner.startswith("user:"):
            return cls(users=(owner,))
        return cls(groups=(owner,))

    @classmethod
    def of(cls, allow: Iterable[str], deny: Iterable[str] = (), public: bool = False) -> Acl:
        """Build from a mixed list of user and group principals."""
        allow = [check_principal(p) for p in allow]
        return cls(
            users=tuple(p for p in allow if p.startswith("user:")),
            groups=tuple(p for p in allow if p.startswith("group:")),
            public=public,
            deny=tuple(deny),
        )

    def intersect(self, other: Acl) -> Acl:
        """An ACL never wider than either: who both grant, and who either denies.

        For a document reached in two ways (a link and its target, two hard links, an ACL
        rule and a page's own ``access`` list). A public side grants whoever the other side
        does; otherwise only principals both name remain, exactly (groups are not expanded,
        so the result may be narrower than the true intersection, never wider). ``deny`` is
        the union.
        """
        deny = (*self.deny, *other.deny)
        if self.public != other.public:
            narrower = other if self.public else self
            return Acl(users=narrower.users, groups=narrower.groups, deny=deny)
        return Acl(
            users=tuple(set(self.users) & set(other.users)),
            groups=tuple(set(self.groups) & set(other.groups)),
            public=self.public and other.public,
            deny=deny,
        )

    def allow_tokens(self) -> list[str]:
        """Principals that grant access, as stored in the index (``PUBLIC`` when public)."""
        tokens = [*self.users, *self.groups]
        if self.public:
            tokens.append(PUBLIC)
        return tokens

    def grants(self, principals: Iterable[str]) -> bool:
        """Reference semantics of the index filter, for tests and checks."""
        held = set(principals) | {PUBLIC}
        return bool(held & set(self.allow_tokens())) and not (held & set(self.deny))


class AclSpec(BaseModel):
    """An ACL as a config file writes it: ``allow`` mixes users and groups, ``deny`` wins
    over ``allow``, ``public`` opens it to everyone. Shared by connectors whose ACLs come
    from configuration (jsonl, markdown_wiki)."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] = Field(default_factory=list, description="Principals granted read access.")
    deny: list[str] = Field(default_factory=list, description="Principals refused, always.")
    public: bool = Field(default=False, description="Readable by every principal.")

    @field_validator("allow", "deny")
    @classmethod
    def _principals(cls, v: list[str]) -> list[str]:
        return [check_principal(p) for p in v]

    def to_acl(self) -> Acl:
        return Acl.of(self.allow, self.deny, public=self.public)


@dataclass(frozen=True)
class SourceDocument:
    """One document as the source has it now.

    ``content_hash`` must change whenever the bytes change; the pipeline compares it with
    what it stored and skips parsing and embedding when it is the same. ``read`` is called
    only when the content is needed.
    """

    external_id: str
    title: str
    acl: Acl
    content_hash: str
    read: Callable[[], bytes] = field(repr=False, compare=False)
    filename: str = ""
    url: str | None = None
    mime_type: str | None = None
    size: int | None = None
    version: str | None = None
    updated_at: datetime | None = None
    author: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Upsert:
    document: SourceDocument


@dataclass(frozen=True)
class Delete:
    external_id: str


@dataclass(frozen=True)
class Failure:
    """A document the connector could not read. ``reason`` is a short stable code.

    An ``external_id`` ending in ``/`` stands for a container (a folder, a space) that could
    not be listed: no document whose id starts with it is taken for deleted.
    """

    external_id: str
    reason: str
    detail: str = ""


Change = Upsert | Delete | Failure

#: What reading one item the source sent in an unexpected shape raises (a missing key, a
#: string where an object was expected, a bad date or principal, a converter choking on
#: odd markup). A connector catches these around each item and yields :func:`malformed`:
#: one bad item is a failure, never a failed sync. Connector errors (``SourceError``,
#: ``CredentialError``) are none of these and still stop the sync.
MALFORMED_ITEM: tuple[type[Exception], ...] = (
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,
)


def malformed(external_id: str, exc: BaseException, what: str = "") -> Failure:
    """The ``malformed`` failure for one item whose data raised ``exc``."""
    prefix = f"{what}: " if what else ""
    return Failure(external_id, "malformed", f"{prefix}{type(exc).__name__}: {exc}"[:2000])


def covered_by(failed_id: str, known: Iterable[str]) -> list[str]:
    """The ids among ``known`` that a failure of ``failed_id`` keeps from being taken for
    deleted: everything below a container (``"x/"``), or the document itself."""
    if failed_id.endswith("/"):
        return [k for k in known if k.startswith(failed_id)]
    return [k for k in known if k == failed_id]


@dataclass(frozen=True)
class DocRef:
    """Cheap listing entry: enough to reconcile deletions and ACLs without content."""

    external_id: str
    version: str | None
    acl: Acl


class ConnectorConfig(BaseModel):
    """Base of every connector's declared configuration (credentials as ``SecretStr``)."""

    model_config = ConfigDict(extra="forbid")


class Checkpoint(BaseModel):
    """Base of every connector's typed checkpoint, stored as JSON between syncs."""

    model_config = ConfigDict(extra="forbid")


CheckpointT = TypeVar("CheckpointT", bound=Checkpoint)


class Connector(Protocol[CheckpointT]):
    """What a connector class provides. Built-ins register like plug-ins (registry.py)."""

    kind: ClassVar[str]
    config_model: ClassVar[type[ConnectorConfig]]
    checkpoint_model: ClassVar[type[Checkpoint]]

    def check(self) -> None:
        """Raise ``ConfigError`` or ``CredentialError`` when the source cannot be read."""

    def sync(self, since: CheckpointT | None) -> Generator[Change, None, CheckpointT]:
        """Yield every change since ``since`` and return the next checkpoint."""
        ...

    def list_ids(self) -> Iterator[DocRef]:
        """List every document the source has now, cheaply."""
        ...


@runtime_checkable
class GroupSource(Protocol):
    """A connector that also knows who is in which group (Confluence groups, Jira project
    roles, GitHub teams, Google groups). After each completed sync the runtime replaces
    that source's memberships with these; the principals file's memberships are kept."""

    def memberships(self) -> Iterator[tuple[str, str]]:
        """``(member, group)`` pairs as the source has them now, both principals
        (``user:<name>`` or ``group:<name>``); groups may contain groups."""
        ...


@runtime_checkable
class SyncNotes(Protocol):
    """A connector that can say more about its last ``sync()`` than changes do: counts the
    sync report shows beside upserts and failures, e.g. ``{"unmatched_acl_rule": 3}`` (files
    that no ACL rule matched and got the source's fallback ACL). Read once the sync's
    generator is exhausted; keys are stable snake_case codes, values counts."""

    def sync_notes(self) -> dict[str, int]:
        """Counts about the sync that just finished (empty when there is nothing to say)."""
        ...


@dataclass(frozen=True)
class CommentReceipt:
    """What a write-back left on the source: the comment's id and address, and whether it
    was already there (found by its idempotency key: nothing was posted this time)."""

    comment_id: str
    url: str | None
    already_posted: bool


@runtime_checkable
class Commenter(Protocol):
    """A connector that can write back: post a comment on one of its documents (a GitHub
    issue, a Jira ticket). Shipping an approved artifact uses this, and may call it again
    after a crash, so it must be idempotent: a comment carrying ``idempotency_key`` that is
    already on the document is reported (``already_posted=True``), never posted twice."""

    def post_comment(self, external_id: str, body: str, idempotency_key: str) -> CommentReceipt:
        """Post ``body`` (markdown) on the document ``external_id`` unless a comment with
        ``idempotency_key`` is already there. ``SourceError``/``CredentialError`` when the
        source refuses; the message says why."""
        ...
