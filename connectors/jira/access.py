"""Who may read a Jira issue: project browsers from project roles (or config), narrowed by
an issue security level, and the user and group principals they map to.

``JiraAccess`` holds what one sync learns (roles, levels, e-mail addresses, groups met) so
each is read from Jira once per sync; the connector makes a new one per sync.

Imports: stdlib, connectors.*.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from connectors.base import PRINCIPAL_RE, Acl
from connectors.jira.client import JiraClient, JsonObject
from connectors.jira.config import JiraConfig

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+\-]+")


def account_slug(account_id: str) -> str:
    """An accountId as a principal name (``557058:f5…`` has a ':' a principal may not)."""
    return _UNSAFE.sub("_", account_id).lstrip("._@+-") or "unknown"


def group_principal(name: str) -> str:
    """``Jira Software Users`` → ``group:jira-jira-software-users``."""
    slug = _UNSAFE.sub("-", name.strip().lower()).strip("-._@+") or "unnamed"
    return f"group:jira-{slug}"


def fingerprint(value: object) -> str:
    data = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def name_of(value: object, key: str = "name") -> str:
    if isinstance(value, dict):
        got = value.get(key)
        return got if isinstance(got, str) else ""
    return ""


@dataclass
class Level:
    """An issue security level's holders: fixed principals plus per-issue ones."""

    principals: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)  # project role ids
    reporter: bool = False
    assignee: bool = False


class JiraAccess:
    def __init__(self, config: JiraConfig, client: Callable[[], JiraClient]) -> None:
        self.config = config
        self._client = client
        self.projects: dict[str, tuple[str, ...] | None] = {}
        self.member_cache: dict[str, set[str]] = {}
        self.roles: dict[tuple[str, str], set[str]] = {}
        self.role_fingerprints: dict[str, str] = {}
        self.levels: dict[str, Level | None] = {}
        self.level_fingerprints: dict[str, str] = {}
        self.level_names: dict[str, str] = {}
        self.emails: dict[str, str | None] = {}
        self.groups: dict[str, JsonObject] = {}  # principal → {name, groupId}

    # -- principals -----------------------------------------------------------------------

    def user(self, account_id: object, email: object = None) -> str | None:
        if not isinstance(account_id, str) or not account_id:
            return None
        if self.config.user_principal == "account_id":
            return "user:" + account_slug(account_id)
        if not isinstance(email, str) or not email:
            if account_id not in self.emails:
                found = self._client().user(account_id) or {}
                address = found.get("emailAddress")
                self.emails[account_id] = address if isinstance(address, str) else None
            email = self.emails[account_id]
        if not isinstance(email, str) or not email:
            return None  # the address is hidden: this user grants nothing (fail closed)
        principal = "user:" + email.strip().lower()
        return principal if PRINCIPAL_RE.match(principal) else None

    def group(self, name: object, group_id: object = None) -> str | None:
        if not isinstance(name, str) or not name:
            return None
        principal = group_principal(name)
        self.groups.setdefault(principal, {"name": name, "groupId": group_id or None})
        return principal

    def actor(self, actor: JsonObject) -> str | None:
        if actor.get("type") == "atlassian-user-role-actor":
            user = actor.get("actorUser") or {}
            return self.user(user.get("accountId") if isinstance(user, dict) else None)
        if actor.get("type") == "atlassian-group-role-actor":
            group = actor.get("actorGroup")
            if isinstance(group, dict):
                return self.group(group.get("name"), group.get("groupId"))
            return self.group(actor.get("name"))
        return None

    # -- project and level ACLs -------------------------------------------------------------

    def project(self, key: str) -> tuple[str, ...] | None:
        """Principals who may browse ``key``; ``None`` when we cannot tell."""
        if key in self.projects:
            return self.projects[key]
        principals: tuple[str, ...] | None
        if key in self.config.project_acls:
            principals = tuple(sorted(set(self.config.project_acls[key])))
        else:
            principals = self.project_roles(key)
        self.projects[key] = principals
        self.role_fingerprints[key] = fingerprint(principals)
        return principals

    def project_roles(self, key: str) -> tuple[str, ...] | None:
        roles = self._client().roles(key)
        if roles is None:
            return None
        browse = self.config.browse_roles
        allowed: set[str] = set()
        for name, role_id in sorted(roles.items()):
            actors = self._client().role_actors(key, role_id)
            if actors is None:
                return None  # one role hidden: the set is incomplete, so nobody (fail closed)
            members = {p for p in (self.actor(a) for a in actors) if p}
            self.roles[(key, role_id)] = members
            if browse is None or name in browse:
                allowed |= members
        return tuple(sorted(allowed))

    def level(self, security: JsonObject) -> Level | None:
        level_id = str(security.get("id", ""))
        if name_of(security):
            self.level_names[level_id] = name_of(security)
        if level_id in self.levels:
            return self.levels[level_id]
        mapped = self.config.security_levels
        level: Level | None
        name = self.level_names.get(level_id, "")
        if level_id in mapped or name in mapped:
            principals = mapped.get(level_id, mapped.get(name, []))
            level = Level(principals=set(principals))
            self.level_fingerprints[level_id] = fingerprint(sorted(principals))
        else:
            holders = self._client().level_members(level_id) if level_id else None
            level = None if holders is None else self.holders(holders)
            self.level_fingerprints[level_id] = fingerprint(
                None if holders is None else sorted(fingerprint(h.get("holder")) for h in holders)
            )
        self.levels[level_id] = level
        return level

    def holders(self, members: list[JsonObject]) -> Level:
        level = Level()
        for member in members:
            holder = member.get("holder")
            if not isinstance(holder, dict):
                continue
            kind = holder.get("type")
            parameter = holder.get("parameter") or holder.get("value")
            if kind == "user":
                user = holder.get("user") if isinstance(holder.get("user"), dict) else {}
                assert isinstance(user, dict)
                principal = self.user(user.get("accountId") or parameter, user.get("emailAddress"))
            elif kind == "group":
                group = holder.get("group") if isinstance(holder.get("group"), dict) else {}
                assert isinstance(group, dict)
                principal = self.group(
                    group.get("name") or holder.get("parameter"),
                    group.get("groupId") or holder.get("value"),
                )
            elif kind == "projectRole" and parameter is not None:
                level.roles.add(str(parameter))
                continue
            elif kind == "reporter":
                level.reporter = True
                continue
            elif kind == "assignee":
                level.assignee = True
                continue
            else:
                # applicationRole, anyone, custom fields, lead…: not mapped, so narrower.
                continue
            if principal:
                level.principals.add(principal)
        return level

    def acl(self, fields: JsonObject) -> Acl:
        project = name_of(fields.get("project"), "key")
        browse = self.project(project) if project else None
        security = fields.get("security")
        if isinstance(security, dict) and security:
            level = self.level(security)
            if level is None or browse is None:
                # an unknown security level, or unknown browsers: readable by nobody
                return Acl()
            allowed = set(level.principals)
            for role_id in level.roles:
                if browse is None:
                    continue  # the project's roles are hidden: nobody through them
                allowed |= self.roles.get((project, role_id), set())
            for person, wanted in (("reporter", level.reporter), ("assignee", level.assignee)):
                value = fields.get(person)
                if wanted and isinstance(value, dict):
                    principal = self.user(value.get("accountId"), value.get("emailAddress"))
                    if principal:
                        allowed.add(principal)
            # Jira shows such an issue only to level holders who may also browse the project.
            return Acl.of(self.both(allowed, set(browse)))
        if browse is None:
            return Acl()  # who may browse the project is unknown: readable by nobody
        return Acl.of(browse)

    def both(self, level: set[str], browse: set[str]) -> set[str]:
        """Principals in both sets as far as group memberships tell (read now, once per
        sync): a group in one set and not the other is expanded to its members. What
        cannot be told (a group whose members are hidden) grants nothing."""
        out = level & browse
        via_groups = set().union(*(self.members(g) for g in browse if g.startswith("group:")))
        for principal in sorted(level - browse):
            if principal.startswith("user:"):
                if principal in via_groups:
                    out.add(principal)
                continue
            out |= {u for u in self.members(principal) if u in browse or u in via_groups}
        return out

    def members(self, group: str) -> set[str]:
        if group not in self.member_cache:
            ref = self.groups.get(group)
            members = self._client().group_members(ref) if ref else None
            users = set()
            for member in members or []:
                user = self.user(member.get("accountId"), member.get("emailAddress"))
                if user:
                    users.add(user)
            self.member_cache[group] = users
        return self.member_cache[group]

    # -- issues ---------------------------------------------------------------------------

    def memberships(self) -> Iterator[tuple[str, str]]:
        """Members of every group met so far: ``(user:…, group:jira-…)``."""
        for principal, group in sorted(self.groups.items()):
            members = self._client().group_members(group)
            for member in members or []:
                user = self.user(member.get("accountId"), member.get("emailAddress"))
                if user:
                    yield user, principal
