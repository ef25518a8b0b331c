"""The ``jira`` connector: Jira Cloud issues (summary, description, comments) with their ACLs.

Sync
    A JQL search ordered by ``updated``. From no checkpoint it lists every issue in scope
    (``projects`` and ``jql``); from a checkpoint it asks for ``updated >= cursor - overlap``
    (JQL has minute resolution and is read in the API user's time zone, so the cursor is
    written in that zone), OR the issues of projects whose role ACL changed, OR the issues
    of security levels whose members changed, OR the issues whose last read failed.
    Re-upserting an unchanged issue is free: the pipeline compares content hashes.

Deletions
    Jira reports none. Every incremental sync lists the ids in scope (``fields=key``, up to
    5,000 a page) and deletes those of the checkpoint that are gone (deleted, moved out of
    scope, or hidden from the API user). A full sync lists everything anyway.

ACLs
    Project role actors (users, groups) may browse the project. An issue with a security
    level is readable by the level's holders who may also browse the project (groups on
    one side only are expanded to their members). What cannot be read (roles hidden from
    the API user, an unknown level) fails closed: readable by nobody.

Imports: stdlib, httpx, connectors.*.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import Field

from connectors.base import (
    Change,
    Checkpoint,
    Delete,
    DocRef,
    Failure,
    SourceDocument,
    Upsert,
)
from connectors.errors import ConfigError, CredentialError, SourceError
from connectors.jira.access import (
    JiraAccess,
    name_of,
)
from connectors.jira.adf import to_markdown
from connectors.jira.client import JiraClient, JsonObject
from connectors.jira.config import JiraConfig

ISSUE_FIELDS = (
    "summary",
    "description",
    "comment",
    "status",
    "issuetype",
    "priority",
    "labels",
    "project",
    "reporter",
    "assignee",
    "creator",
    "security",
    "updated",
)
ACL_FIELDS = ("project", "security", "reporter", "assignee", "updated")
#: Key-only pages can be this large (the enhanced search's documented maximum).
ID_PAGE_SIZE = 5000
#: Issues whose read failed are retried by id; past this many the cursor holds instead.
MAX_RETRY_IDS = 500
JQL_TIME = "%Y/%m/%d %H:%M"


class JiraCheckpoint(Checkpoint):
    cursor: datetime | None = Field(
        default=None, description="The latest `updated` of an issue read so far (UTC)."
    )
    issues: dict[str, str] = Field(
        default_factory=dict, description="Issue id → key, every issue in scope last time."
    )
    retry: list[str] = Field(
        default_factory=list, description="Ids of issues whose last read failed."
    )
    project_acls: dict[str, str] = Field(
        default_factory=dict, description="Project key → fingerprint of its browse ACL."
    )
    level_acls: dict[str, str] = Field(
        default_factory=dict, description="Security level id → fingerprint of its members."
    )
    level_names: dict[str, str] = Field(
        default_factory=dict, description="Security level id → name (for `security_levels`)."
    )


def parse_time(value: object) -> datetime | None:
    """Jira's ``2024-01-15T10:30:00.000+0000`` (or ISO) as an aware UTC datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _reader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _jql_list(values: Iterable[str], quote: bool = False) -> str:
    return ", ".join(json.dumps(v) if quote else v for v in sorted(values))


class JiraConnector:
    kind: ClassVar[str] = "jira"
    config_model: ClassVar[type[JiraConfig]] = JiraConfig
    checkpoint_model: ClassVar[type[JiraCheckpoint]] = JiraCheckpoint

    def __init__(
        self,
        config: JiraConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self._transport = transport
        self._sleep = sleep
        self._client: JiraClient | None = None
        self._reset()

    def _reset(self) -> None:
        """Forget what one sync learned about roles, levels, users and groups."""
        self.access = JiraAccess(self.config, lambda: self.client)

    # -- HTTP -----------------------------------------------------------------------------

    @property
    def client(self) -> JiraClient:
        if self._client is None:
            config = self.config
            auth: tuple[str, str] | None = None
            headers: dict[str, str] = {}
            if config.token is not None:
                headers["Authorization"] = f"Bearer {config.token.resolve().get_secret_value()}"
            else:
                assert config.email is not None and config.api_token is not None
                auth = (config.email, config.api_token.resolve().get_secret_value())
            self._client = JiraClient(
                config.base_url,
                auth=auth,
                headers=headers,
                search_api=config.search_api,
                timeout=config.timeout,
                transport=self._transport,
                sleep=self._sleep,
            )
        return self._client

    def _myself(self) -> JsonObject:
        try:
            return self.client.myself()
        except CredentialError as exc:
            how = "token" if self.config.token else "email and api_token"
            raise CredentialError(f"Jira refused the credentials (check {how}): {exc}") from exc

    def check(self) -> None:
        self._myself()
        for key in self.config.projects:
            if self.client.project(key) is None:
                raise ConfigError(
                    f"Jira project {key} does not exist or is not visible to this account"
                )

    def _scope(self) -> str:
        clauses = []
        if self.config.projects:
            clauses.append(f"project in ({_jql_list(self.config.projects, quote=True)})")
        if self.config.jql:
            clauses.append(f"({self.config.jql})")
        # The enhanced search refuses unbounded queries.
        return " AND ".join(clauses) or "project is not EMPTY"

    def _comments(self, issue: JsonObject) -> list[JsonObject]:
        fields = issue["fields"]
        block = fields.get("comment")
        if not isinstance(block, dict):
            return []
        comments = [c for c in block.get("comments", []) if isinstance(c, dict)]
        total = block.get("total")
        if isinstance(total, int) and total > len(comments):
            comments.extend(self.client.comments(str(issue["id"]), len(comments)))
        return comments

    def _text(self, key: str, summary: str, description: object, comments: list[JsonObject]) -> str:
        parts = [f"# {key}: {summary}".rstrip()]
        body = to_markdown(description)
        if body:
            parts.append(body)
        shown = []
        for comment in comments:
            if comment.get("visibility"):
                continue  # restricted to a role or group: not for every reader of the issue
            text = to_markdown(comment.get("body"))
            if not text:
                continue
            author = comment.get("author")
            who = name_of(author, "displayName") or name_of(author, "accountId") or "Unknown"
            when = parse_time(comment.get("created"))
            heading = f"### {who}" + (f", {when.date().isoformat()}" if when else "")
            shown.append(f"{heading}\n\n{text}")
        if shown:
            parts.append("## Comments")
            parts.extend(shown)
        return "\n\n".join(parts) + "\n"

    def _document(self, issue: JsonObject) -> SourceDocument:
        issue_id = str(issue["id"])
        key = str(issue["key"])
        fields = issue["fields"]
        if not isinstance(fields, dict):
            raise TypeError("fields is not an object")
        summary = fields.get("summary") or ""
        if not isinstance(summary, str):
            raise TypeError("summary is not a string")
        comments = self._comments(issue) if self.config.include_comments else []
        text = self._text(key, summary.strip(), fields.get("description"), comments)
        title = f"{key}: {summary.strip()}" if summary.strip() else key
        labels = fields.get("labels")
        metadata = {
            "key": key,
            "project": name_of(fields.get("project"), "key"),
            "status": name_of(fields.get("status")),
            "issuetype": name_of(fields.get("issuetype")),
            "priority": name_of(fields.get("priority")),
            "labels": ", ".join(str(x) for x in labels) if isinstance(labels, list) else "",
            "assignee": name_of(fields.get("assignee"), "displayName"),
        }
        metadata = {k: v for k, v in metadata.items() if v}
        person = fields.get("reporter") or fields.get("creator")
        author = name_of(person, "displayName") or name_of(person, "accountId") or None
        url = f"{self.config.browse_url}/browse/{key}"
        data = text.encode("utf-8")
        # Everything shown or stored with the document except its ACL: an ACL-only change
        # must keep the hash, a changed status or title must not.
        digest = hashlib.sha256(
            json.dumps([title, url, author, metadata], sort_keys=True).encode() + b"\x00" + data
        ).hexdigest()
        updated = parse_time(fields.get("updated"))
        return SourceDocument(
            external_id=issue_id,
            title=title,
            acl=self.access.acl(fields),
            content_hash="sha256:" + digest,
            read=_reader(data),
            filename=f"{key}.md",
            url=url,
            mime_type="text/markdown",
            size=len(data),
            version=fields.get("updated") if isinstance(fields.get("updated"), str) else None,
            updated_at=updated,
            author=author,
            metadata=metadata,
        )

    def _query_time(self, cursor: datetime, zone: ZoneInfo | None) -> str:
        start = cursor - timedelta(minutes=self.config.overlap_minutes)
        if zone is None:
            start -= timedelta(hours=26)  # the user's zone is unknown: cover every offset
            zone = ZoneInfo("UTC")
        return start.astimezone(zone).strftime(JQL_TIME)

    @staticmethod
    def _zone(myself: JsonObject) -> ZoneInfo | None:
        name = myself.get("timeZone")
        if not isinstance(name, str) or not name:
            return None
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return None

    def _list_keys(self) -> dict[str, str]:
        return {
            str(issue["id"]): str(issue.get("key", ""))
            for issue in self.client.search(self._scope(), ["key"], ID_PAGE_SIZE)
            if "id" in issue
        }

    def _stale(self, since: JiraCheckpoint) -> tuple[set[str], set[str]]:
        """Projects and levels whose ACL changed since the checkpoint."""
        projects = set()
        for key, before in since.project_acls.items():
            self.access.project(key)
            if self.access.role_fingerprints[key] != before:
                projects.add(key)
        levels = set()
        for level_id, before in since.level_acls.items():
            self.access.level({"id": level_id, "name": since.level_names.get(level_id, "")})
            if self.access.level_fingerprints[level_id] != before:
                levels.add(level_id)
        return projects, levels

    # -- the contract ---------------------------------------------------------------------

    def sync(self, since: JiraCheckpoint | None) -> Generator[Change, None, JiraCheckpoint]:
        self._reset()
        zone = self._zone(self._myself())
        scope = self._scope()
        listed: dict[str, str] = {}
        if since is None:
            jql = f"{scope} ORDER BY updated ASC"
        else:
            listed = self._list_keys()
            projects, levels = self._stale(since)
            wanted = []
            if since.cursor is not None:
                wanted.append(f'updated >= "{self._query_time(since.cursor, zone)}"')
            else:
                wanted.append("updated is not EMPTY")
            if projects:
                wanted.append(f"project in ({_jql_list(projects, quote=True)})")
            if levels:
                wanted.append(f"level in ({_jql_list(levels)})")
            if since.retry:
                wanted.append(f"id in ({_jql_list(since.retry)})")
            jql = f"({scope}) AND ({' OR '.join(wanted)}) ORDER BY updated ASC"

        cursor = since.cursor if since else None
        seen: dict[str, str] = {}
        failed: dict[str, datetime | None] = {}
        for issue in self.client.search(jql, ISSUE_FIELDS, self.config.page_size):
            issue_id = str(issue.get("id", ""))
            key = str(issue.get("key", issue_id))
            if not issue_id:
                continue
            fields = issue.get("fields")
            updated = parse_time(fields.get("updated")) if isinstance(fields, dict) else None
            seen[issue_id] = key
            try:
                document = self._document(issue)
            except SourceError as exc:
                failed[issue_id] = updated
                yield Failure(issue_id, "unreadable", f"{key}: {exc}")
                continue
            except (KeyError, TypeError, ValueError) as exc:
                failed[issue_id] = updated
                yield Failure(issue_id, "malformed", f"{key}: {type(exc).__name__}: {exc}")
                continue
            if updated is not None and (cursor is None or updated > cursor):
                cursor = updated
            yield Upsert(document)

        if since is not None:
            gone = since.issues.keys() - listed.keys() - seen.keys()
            for issue_id in sorted(gone, key=lambda i: (len(i), i)):
                yield Delete(issue_id)

        retry = sorted(failed)
        if len(retry) > MAX_RETRY_IDS:
            # Too many to name in a query: hold the cursor before the earliest failure.
            times = [t for t in failed.values() if t is not None]
            if times and cursor is not None:
                cursor = min(cursor, min(times) - timedelta(minutes=1))
            retry = []
        issues = {**listed, **seen}
        keys = {key.rsplit("-", 1)[0] for key in issues.values()}
        return JiraCheckpoint(
            cursor=cursor,
            issues=issues,
            retry=retry,
            project_acls={k: v for k, v in self.access.role_fingerprints.items() if k in keys},
            level_acls=dict(self.access.level_fingerprints),
            level_names=dict(self.access.level_names),
        )

    def list_ids(self) -> Iterator[DocRef]:
        self._reset()
        for issue in self.client.search(self._scope(), ACL_FIELDS, self.config.page_size):
            fields = issue.get("fields")
            if "id" not in issue or not isinstance(fields, dict):
                continue
            version = fields.get("updated")
            yield DocRef(
                str(issue["id"]),
                version if isinstance(version, str) else None,
                self.access.acl(fields),
            )

    def memberships(self) -> Iterator[tuple[str, str]]:
        """Members of every Jira group that an ACL of the last sync named (and of those
        in the configured projects' roles): ``(user:…, group:jira-…)``."""
        for key in self.config.projects:
            self.access.project(key)
        yield from self.access.memberships()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
