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

Write-back
    ``post_comment`` (the ``Commenter`` protocol) comments on an issue. The comment carries
    the entity property ``context-server`` = ``{"idempotency_key": key}``; the issue's
    comments are searched for it first, so calling again with the same key posts nothing.

Imports: stdlib, httpx, connectors.*.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import Field

from connectors.base import (
    MALFORMED_ITEM,
    Change,
    Checkpoint,
    CommentReceipt,
    Delete,
    DocRef,
    Failure,
    SourceDocument,
    Upsert,
    malformed,
)
from connectors.errors import ConfigError, CredentialError, SourceError
from connectors.http import RETRY_STATUSES
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
#: The comment entity property that holds a write-back's idempotency key.
PROPERTY_KEY = "context-server"
#: Jira Cloud refuses a comment longer than this many characters.
MAX_COMMENT_CHARS = 32767
#: A comment ``POST`` answered with a 5xx is tried this often. The issue's comments are
#: searched for the key before every try: a comment that landed despite the error is found,
#: not posted twice.
WRITE_ATTEMPTS = 3
_ISSUE_REF = re.compile(r"^(?:[0-9]+|[A-Z][A-Z0-9_]*-[0-9]+)$")
_BLANK_LINE = re.compile(r"\n[ \t]*(?:\n[ \t]*)*\n")


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


def markdown_to_adf(text: str) -> JsonObject:
    """A plain ADF document for ``text``: one paragraph per block between blank lines, its
    lines joined by hard breaks. Markdown syntax is kept as written, not rendered."""
    paragraphs: list[JsonObject] = []
    for block in _BLANK_LINE.split(text.strip()):
        content: list[JsonObject] = []
        for n, line in enumerate(block.splitlines()):
            if n:
                content.append({"type": "hardBreak"})
            if line.rstrip():
                content.append({"type": "text", "text": line.rstrip()})
        if content:
            paragraphs.append({"type": "paragraph", "content": content})
    return {"type": "doc", "version": 1, "content": paragraphs}


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
            if not isinstance(issue, dict):
                continue  # nothing to name it by
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
            except MALFORMED_ITEM as exc:  # one odd issue, never the whole sync
                failed[issue_id] = updated
                yield malformed(issue_id, exc, key)
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
            fields = issue.get("fields") if isinstance(issue, dict) else None
            if not isinstance(issue, dict) or "id" not in issue or not isinstance(fields, dict):
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

    # -- write-back -----------------------------------------------------------------------

    def _commentable(self, external_id: str) -> tuple[str, str, str]:
        """The issue's id, key and project key, once it is known to be in this source."""
        if not _ISSUE_REF.match(external_id):
            raise SourceError(
                f"{external_id!r} is not a Jira issue id (e.g. 10001) or key (e.g. ENG-1)"
            )
        issue = self.client.issue(external_id, ["project"])
        if issue is None or "id" not in issue:
            raise SourceError(
                f"Jira issue {external_id} does not exist or is not visible to this account"
            )
        fields = issue.get("fields")
        project = name_of(fields.get("project") if isinstance(fields, dict) else None, "key")
        key = str(issue.get("key") or external_id)
        if self.config.projects and project not in self.config.projects:
            raise SourceError(
                f"Jira issue {key} is in project {project or '?'}, not one of this source's "
                f"projects ({', '.join(self.config.projects)})"
            )
        return str(issue["id"]), key, project

    def _marked(self, issue_id: str, idempotency_key: str) -> JsonObject | None:
        """The first comment of the issue whose ``context-server`` property holds the key."""
        for comment in self.client.comments(issue_id, 0, expand="properties"):
            properties = comment.get("properties")
            if not isinstance(properties, list):
                # The listing did not expand the properties: ask for ours, comment by comment.
                found = self.client.comment_property(str(comment.get("id")), PROPERTY_KEY)
                properties = [found] if found is not None else []
            for prop in properties:
                if not isinstance(prop, dict) or prop.get("key") != PROPERTY_KEY:
                    continue
                value = prop.get("value")
                if isinstance(value, dict) and value.get("idempotency_key") == idempotency_key:
                    return comment
        return None

    def _receipt(self, key: str, comment: JsonObject, *, already_posted: bool) -> CommentReceipt:
        comment_id = comment.get("id")
        if comment_id is None:
            raise SourceError(f"Jira answered a comment on {key} without its id")
        return CommentReceipt(
            comment_id=str(comment_id),
            url=f"{self.config.browse_url}/browse/{key}?focusedCommentId={comment_id}",
            already_posted=already_posted,
        )

    def post_comment(self, external_id: str, body: str, idempotency_key: str) -> CommentReceipt:
        """Comment ``body`` (markdown, sent as plain ADF paragraphs) on the issue, with the
        ``context-server`` property holding ``idempotency_key``, unless a comment of the issue
        already has that property."""
        if not idempotency_key.strip():
            raise SourceError("the idempotency key is empty")
        if not body.strip():
            raise SourceError("nothing to post: the comment body is empty")
        issue_id, key, project = self._commentable(external_id)
        if len(body) > MAX_COMMENT_CHARS:
            raise SourceError(
                f"the comment for {key} has {len(body)} characters; Jira takes at most "
                f"{MAX_COMMENT_CHARS}"
            )
        payload = {
            "body": markdown_to_adf(body),
            "properties": [{"key": PROPERTY_KEY, "value": {"idempotency_key": idempotency_key}}],
        }
        sent = False  # a POST answered with a 5xx may have created the comment all the same
        last = ""
        for attempt in range(WRITE_ATTEMPTS + 1):
            found = self._marked(issue_id, idempotency_key)
            if found is not None:
                return self._receipt(key, found, already_posted=not sent)
            if attempt == WRITE_ATTEMPTS:
                break
            response = self.client.add_comment(
                issue_id, payload, allow=(400, 403, 404, *RETRY_STATUSES)
            )
            status = response.status_code
            if status < 300:
                try:
                    created = response.json()
                except ValueError:
                    created = None
                if not isinstance(created, dict):
                    raise SourceError(f"Jira did not return the comment it made on {key}")
                return self._receipt(key, created, already_posted=False)
            if status in RETRY_STATUSES:
                sent, last = True, f"{status} {response.reason_phrase}"
                (self._sleep or time.sleep)(2.0**attempt)
                continue
            detail = _error_messages(response)
            if status == 400 and "permission" not in detail.lower():
                raise SourceError(f"Jira refused the comment on {key} (400): {detail}")
            raise CredentialError(
                f"Jira refused to comment on {key} ({status}: {detail}): the account may lack "
                f"the Add comments permission in project {project or '?'} (an OAuth token "
                "also needs the write:jira-work scope)"
            )
        raise SourceError(f"commenting on {key} failed {WRITE_ATTEMPTS} times; last: {last}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _error_messages(response: httpx.Response) -> str:
    """Jira's ``errorMessages`` and ``errors``, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        messages = [str(m) for m in data.get("errorMessages") or []]
        errors = data.get("errors")
        if isinstance(errors, dict):
            messages += [f"{k}: {v}" for k, v in errors.items()]
        if messages:
            return "; ".join(messages)
    return " ".join(response.text.split())[:300]
