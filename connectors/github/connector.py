"""The ``github`` connector: a repository's issues, with their comments, as markdown.

Per repository and sync:

1. The ACL: ``GET /repos/{owner}/{repo}``; a public repository makes public documents,
   any other (private, internal) is readable by its collaborators (``user:<login>``) and the
   teams with access (``group:github-<org>-<team-slug>``). Computed on every sync, so a
   permission change reaches every issue even when no issue changed.
2. The listing. Incremental: ``GET …/issues?state=all&sort=updated&direction=asc&since=``
   the cursor minus the overlap window. A *full listing* (``sort=created``: an issue
   updated meanwhile does not move, so none is skipped) instead when there is no state for
   the repository, when its ACL changed, or when ``reconcile_hours`` have passed: issues
   known before and not listed now were deleted or transferred, and are yielded as deletes.
3. Per issue: an issue whose ``updated_at`` is the one recorded is unchanged; it is
   yielded with its recorded content hash and read lazily (the pipeline reads it only if
   it lacks it). Any other issue's comments are fetched (only when it has any) and it is
   yielded with a fresh hash. An issue whose comments cannot be read is a ``Failure``
   and keeps its recorded state, so the next sync tries it again.

The cursor is the server's time (``Date``) when the listing started: everything updated
before it has been listed. Offset pagination over ``sort=updated`` can skip an item when
another one is updated mid-listing (it moves to the end); when that may have happened
(several pages, an item updated after the start) the cursor is not advanced.

A repository that cannot be read is one ``Failure`` named ``owner/repo/``: nothing under
it is taken for deleted.

Write-back (``post_comment``, the ``Commenter`` protocol) posts a comment on an issue. The
comment ends with a hidden marker, ``<!-- context-server:ship:{key} -->``; the issue's
comments are searched for it first, so calling again with the same key posts nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, Field

from connectors.base import (
    MALFORMED_ITEM,
    PRINCIPAL_RE,
    Acl,
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
from connectors.github.client import (
    GitHubClient,
    JsonObject,
    Refused,
    format_time,
    parse_time,
)
from connectors.github.config import GitHubConfig
from connectors.github.write_back import (
    ISSUE_ID,
    MAX_COMMENT_CHARS,
    WRITE_ATTEMPTS,
    WRITE_SCOPE,
    error_message,
    receipt,
    response_object,
    ship_marker,
)
from connectors.http import RETRY_STATUSES


class IssueState(BaseModel):
    updated_at: str
    hash: str


class RepositoryState(BaseModel):
    cursor: datetime | None = None
    reconciled_at: datetime | None = None
    acl: Acl | None = None
    issues: dict[str, IssueState] = Field(
        default_factory=dict, description="Issue number → its updated_at and content hash."
    )


class GitHubCheckpoint(Checkpoint):
    repositories: dict[str, RepositoryState] = Field(
        default_factory=dict, description="owner/name (lower case) → its sync state."
    )


@dataclass(frozen=True)
class _Repository:
    name: str  # as configured, for messages and metadata

    @property
    def key(self) -> str:
        # GitHub names are case-insensitive: ids must not change with the config's spelling.
        return self.name.lower()

    @property
    def path(self) -> str:
        return f"/repos/{self.name}"


class _RepositoryUnreadable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _principal(kind: str, name: str) -> str | None:
    """``kind:name`` when it is a well-formed principal; a login that is not (an app's
    ``name[bot]``) grants nothing rather than failing the whole ACL."""
    value = f"{kind}:{name}"
    return value if PRINCIPAL_RE.match(value) else None


def team_group(org: str, slug: str) -> str:
    """The group principal of an organization team."""
    return f"group:github-{org.lower()}-{slug.lower()}"


def _is_pull_request(issue: JsonObject) -> bool:
    return bool(issue.get("pull_request"))


def _login(obj: Any) -> str | None:
    if isinstance(obj, dict) and isinstance(obj.get("login"), str):
        return str(obj["login"])
    return None


def _refused(exc: Refused) -> _RepositoryUnreadable:
    reason = {403: "forbidden", 404: "not_found", 410: "gone", 451: "forbidden"}.get(
        exc.status, "unreadable"
    )
    return _RepositoryUnreadable(reason, str(exc))


class GitHubConnector:
    kind: ClassVar[str] = "github"
    config_model: ClassVar[type[GitHubConfig]] = GitHubConfig
    checkpoint_model: ClassVar[type[GitHubCheckpoint]] = GitHubCheckpoint

    def __init__(
        self,
        config: GitHubConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.repositories = [_Repository(name) for name in config.repositories]
        self.client = GitHubClient(config.base_url, config.token, transport=transport, sleep=sleep)
        self._clock = clock
        self._sleep = sleep

    # -- checks -----------------------------------------------------------------------------

    def check(self) -> None:
        # /rate_limit answers any valid token (classic, fine-grained, app) and costs no quota.
        self.client.get("/rate_limit")
        for repo in self.repositories:
            if self.client.get_object(repo.path, allow=(404,)) is None:
                raise ConfigError(
                    f"repository {repo.name} was not found at {self.config.base_url} "
                    "(or the token cannot see it)"
                )

    # -- ACLs and groups --------------------------------------------------------------------

    def _repository(self, repo: _Repository) -> JsonObject:
        try:
            meta = self.client.get_object(repo.path, allow=(403, 404, 410, 451))
        except SourceError as exc:
            raise _RepositoryUnreadable("unreadable", str(exc)) from exc
        if meta is None:
            raise _RepositoryUnreadable("not_found", f"repository {repo.name} is not readable")
        return meta

    def _items(
        self, path: str, params: dict[str, Any] | None = None, *, allow: tuple[int, ...] = ()
    ) -> Iterator[JsonObject]:
        query = {"per_page": self.config.per_page, **(params or {})}
        for page in self.client.pages(path, query, allow=allow):
            yield from page.items

    def _teams(self, repo: _Repository, meta: JsonObject) -> list[tuple[str, str]]:
        """(org, team slug) of the teams with access; only organizations have teams."""
        owner = meta.get("owner")
        if not isinstance(owner, dict) or owner.get("type") != "Organization":
            return []
        org = str(owner.get("login") or repo.name.split("/")[0])
        return [
            (org, str(t["slug"]))
            for t in self._items(f"{repo.path}/teams", allow=(403, 404))
            if isinstance(t.get("slug"), str)
        ]

    def _acl(self, repo: _Repository, meta: JsonObject) -> Acl:
        if self._acl_is_public(meta):
            return Acl(public=True)
        # Private and internal repositories: only who GitHub lists as having access. An
        # internal repository's enterprise-wide readers are not enumerable: they are left
        # out (fail closed).
        try:
            users = [
                _principal("user", login)
                for c in self._items(
                    f"{repo.path}/collaborators", {"affiliation": "all"}, allow=(403, 404)
                )
                if (login := _login(c)) is not None
                and (c.get("permissions") or {}).get("pull", True)
            ]
            groups = [team_group(org, slug) for org, slug in self._teams(repo, meta)]
        except Refused as exc:
            raise _RepositoryUnreadable(
                "forbidden",
                f"cannot list who may read private repository {repo.name} ({exc}); the token "
                "needs push access to list collaborators (read:org for teams)",
            ) from exc
        return Acl.of([p for p in [*users, *groups] if p is not None])

    def memberships(self) -> Iterator[tuple[str, str]]:
        """(user, team group) for the teams with access to the non-public repositories."""
        seen: set[tuple[str, str]] = set()
        teams: set[tuple[str, str]] = set()
        for repo in self.repositories:
            meta = self.client.get_object(repo.path)
            assert meta is not None
            if self._acl_is_public(meta):
                continue
            try:
                teams.update(self._teams(repo, meta))
            except Refused as exc:
                raise SourceError(f"cannot list the teams of {repo.name}: {exc}") from exc
        for org, slug in sorted(teams):
            group = team_group(org, slug)
            try:
                for page in self.client.pages(
                    f"/orgs/{org}/teams/{slug}/members",
                    {"per_page": self.config.per_page},
                    allow=(404,),
                ):
                    for member in page.items:
                        login = _login(member)
                        user = _principal("user", login) if login else None
                        if user is not None and (user, group) not in seen:
                            seen.add((user, group))
                            yield user, group
            except Refused:
                continue  # the team was deleted since the repository listed it

    @staticmethod
    def _acl_is_public(meta: JsonObject) -> bool:
        visibility = meta.get("visibility") or ("private" if meta.get("private") else "public")
        return visibility == "public" and not meta.get("private")

    # -- documents --------------------------------------------------------------------------

    def external_id(self, repo: _Repository, number: int | str) -> str:
        return f"{repo.key}/issues/{number}"

    def _comments(self, repo: _Repository, issue: JsonObject) -> list[JsonObject]:
        if not issue.get("comments"):
            return []
        return list(self._items(f"{repo.path}/issues/{issue['number']}/comments"))

    @staticmethod
    def _text(issue: JsonObject, comments: list[JsonObject]) -> str:
        title = str(issue.get("title") or "").strip()
        parts = [f"# {title}" if title else f"# #{issue.get('number')}"]
        body = str(issue.get("body") or "").strip()
        if body:
            parts.append(body)
        if comments:
            parts.append("## Comments")
            for comment in comments:
                who = _login(comment.get("user")) or "ghost"
                when = str(comment.get("created_at") or "")
                parts.append(f"### {who} commented on {when}".rstrip())
                text = str(comment.get("body") or "").strip()
                if text:
                    parts.append(text)
        return "\n\n".join(parts) + "\n"

    def _metadata(self, repo: _Repository, issue: JsonObject) -> dict[str, str]:
        labels = [
            str(label.get("name") if isinstance(label, dict) else label)
            for label in issue.get("labels") or []
        ]
        return {
            "state": str(issue.get("state") or ""),
            "labels": ", ".join(labels),
            "number": str(issue.get("number")),
            "repository": repo.name,
            "type": "pull_request" if _is_pull_request(issue) else "issue",
        }

    @staticmethod
    def _hash(text: str, issue: JsonObject, metadata: dict[str, str]) -> str:
        # Everything the index shows except the ACL: an ACL-only change keeps the hash.
        payload = {
            "text": text,
            "title": issue.get("title"),
            "url": issue.get("html_url"),
            "author": _login(issue.get("user")),
            "metadata": metadata,
        }
        canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return "sha256:" + hashlib.sha256(canonical).hexdigest()

    def _document(
        self,
        repo: _Repository,
        issue: JsonObject,
        acl: Acl,
        content_hash: str,
        read: Callable[[], bytes],
        size: int | None,
    ) -> SourceDocument:
        number = issue["number"]
        updated = issue.get("updated_at")
        return SourceDocument(
            external_id=self.external_id(repo, number),
            title=str(issue.get("title") or f"#{number}"),
            acl=acl,
            content_hash=content_hash,
            read=read,
            filename=f"{number}.md",
            url=issue.get("html_url"),
            mime_type="text/markdown",
            size=size,
            version=str(updated) if updated else None,
            updated_at=parse_time(updated) if isinstance(updated, str) else None,
            author=_login(issue.get("user")),
            metadata=self._metadata(repo, issue),
        )

    def _fresh(self, repo: _Repository, issue: JsonObject, acl: Acl) -> SourceDocument:
        """Fetch the comments now; the document's bytes are ready."""
        text = self._text(issue, self._comments(repo, issue))
        data = text.encode("utf-8")
        content_hash = self._hash(text, issue, self._metadata(repo, issue))
        return self._document(repo, issue, acl, content_hash, lambda: data, len(data))

    def _lazy(
        self, repo: _Repository, issue: JsonObject, acl: Acl, content_hash: str
    ) -> SourceDocument:
        """An issue unchanged since its hash was recorded: comments fetched only if read."""

        def read() -> bytes:
            return self._text(issue, self._comments(repo, issue)).encode("utf-8")

        return self._document(repo, issue, acl, content_hash, read, None)

    # -- the contract -----------------------------------------------------------------------

    def sync(self, since: GitHubCheckpoint | None) -> Generator[Change, None, GitHubCheckpoint]:
        previous = since.repositories if since is not None else {}
        states: dict[str, RepositoryState] = {}
        try:
            for repo in self.repositories:
                before = previous.get(repo.key)
                state: RepositoryState | None
                try:
                    state = yield from self._sync_repository(repo, before)
                except _RepositoryUnreadable as exc:
                    yield Failure(f"{repo.key}/", exc.reason, exc.detail)
                    state = before
                if state is not None:
                    states[repo.key] = state
        finally:
            self.client.close()
        return GitHubCheckpoint(repositories=states)

    def _full_listing(self, before: RepositoryState | None, acl: Acl, now: datetime) -> bool:
        if before is None or before.cursor is None or before.acl != acl:
            return True
        if before.reconciled_at is None:
            return True
        return now - before.reconciled_at >= timedelta(hours=self.config.reconcile_hours)

    def _sync_repository(
        self, repo: _Repository, before: RepositoryState | None
    ) -> Generator[Change, None, RepositoryState]:
        meta = self._repository(repo)
        try:
            acl = self._acl(repo, meta)
        except SourceError as exc:  # not CredentialError: a refused token stops the sync
            raise _RepositoryUnreadable("unreadable", str(exc)) from exc
        known = before.issues if before is not None else {}
        full = self._full_listing(before, acl, self._clock())
        params: dict[str, Any] = {
            "state": "all",
            "sort": "created" if full else "updated",
            "direction": "asc",
            "per_page": self.config.per_page,
        }
        if not full:
            assert before is not None and before.cursor is not None
            since = before.cursor - timedelta(seconds=self.config.overlap_seconds)
            params["since"] = format_time(since)

        issues: dict[str, IssueState] = {} if full else dict(known)
        started: datetime | None = None
        newest: datetime | None = None
        pages = 0
        retry_from: datetime | None = None  # the oldest issue that failed: list it again
        try:
            for page in self.client.pages(f"{repo.path}/issues", params, allow=(404, 410)):
                pages += 1
                started = started or page.server_time
                for issue in page.items:
                    if not isinstance(issue, dict):
                        continue  # no number to name it by
                    updated = issue.get("updated_at")
                    if not isinstance(updated, str) or not isinstance(issue.get("number"), int):
                        continue
                    number = str(issue["number"])
                    recorded = known.get(number)
                    try:
                        stamp = parse_time(updated)
                    except MALFORMED_ITEM as exc:  # one odd issue, never the whole sync
                        if recorded is not None:
                            issues[number] = recorded
                        yield malformed(self.external_id(repo, number), exc, "updated_at")
                        continue
                    newest = max(newest, stamp) if newest else stamp
                    if _is_pull_request(issue) and not self.config.include_pull_requests:
                        continue
                    try:
                        if recorded is not None and recorded.updated_at == updated:
                            lazy = self._lazy(repo, issue, acl, recorded.hash)
                            issues[number] = recorded
                            yield Upsert(lazy)
                            continue
                        document = self._fresh(repo, issue, acl)
                    except MALFORMED_ITEM as exc:
                        if recorded is not None:
                            issues[number] = recorded
                        yield malformed(self.external_id(repo, number), exc)
                        continue
                    except SourceError as exc:
                        yield Failure(self.external_id(repo, number), "unreadable", str(exc))
                        if recorded is not None:
                            issues[number] = recorded
                        retry_from = min(retry_from, stamp) if retry_from else stamp
                        continue
                    issues[number] = IssueState(updated_at=updated, hash=document.content_hash)
                    yield Upsert(document)
        except Refused as exc:
            raise _refused(exc) from exc
        except SourceError as exc:
            raise _RepositoryUnreadable("unreadable", str(exc)) from exc

        if full:
            for number in sorted(known.keys() - issues.keys(), key=int):
                yield Delete(self.external_id(repo, number))

        start = started or self._clock()
        cursor: datetime | None = start
        if not full and pages > 1 and newest is not None and newest >= start:
            # An issue updated mid-listing moved to the end and may have shifted one we had
            # not reached onto a page we had: list this window again next time.
            cursor = before.cursor if before is not None else None
        if retry_from is not None and cursor is not None:
            cursor = min(cursor, retry_from)
        reconciled = start if full else (before.reconciled_at if before is not None else None)
        return RepositoryState(cursor=cursor, reconciled_at=reconciled, acl=acl, issues=issues)

    def list_ids(self) -> Iterator[DocRef]:
        try:
            for repo in self.repositories:
                try:
                    meta = self._repository(repo)
                    acl = self._acl(repo, meta)
                except _RepositoryUnreadable as exc:
                    raise SourceError(f"repository {repo.name}: {exc.detail}") from exc
                params = {"state": "all", "sort": "created", "direction": "asc"}
                for issue in self._items(f"{repo.path}/issues", params):
                    if not isinstance(issue, dict) or not isinstance(issue.get("number"), int):
                        continue  # as sync() does: nothing to name it by
                    if _is_pull_request(issue) and not self.config.include_pull_requests:
                        continue
                    updated = issue.get("updated_at")
                    yield DocRef(
                        self.external_id(repo, issue["number"]),
                        str(updated) if updated else None,
                        acl,
                    )
        finally:
            self.client.close()

    # -- write-back -------------------------------------------------------------------------

    def _issue_ref(self, external_id: str) -> tuple[_Repository, int]:
        """The configured repository and the issue number an ``external_id`` names."""
        match = ISSUE_ID.match(external_id)
        if match is None:
            raise SourceError(
                f"{external_id!r} is not a GitHub issue id (expected owner/repo/issues/<number>)"
            )
        for repo in self.repositories:
            if repo.key == match[1].lower():
                return repo, int(match[2])
        raise SourceError(
            f"{external_id}: repository {match[1]} is not one of this source's repositories "
            f"({', '.join(r.name for r in self.repositories)})"
        )

    def _marked(self, path: str, marker: str, external_id: str) -> JsonObject | None:
        """The first comment of the issue whose body carries ``marker``."""
        try:
            for comment in self._items(path, allow=(404, 410)):
                if marker in str(comment.get("body") or ""):
                    return comment
        except Refused as exc:
            raise SourceError(
                f"issue {external_id} cannot be found ({exc.status}): deleted, transferred, "
                "or not visible to the token"
            ) from exc
        return None

    def post_comment(self, external_id: str, body: str, idempotency_key: str) -> CommentReceipt:
        """Comment ``body`` (markdown) on the issue, ending with a hidden marker that holds
        ``idempotency_key``, unless a comment of the issue already carries that marker."""
        repo, number = self._issue_ref(external_id)
        marker = ship_marker(idempotency_key)
        if not body.strip():
            raise SourceError("nothing to post: the comment body is empty")
        text = f"{body.rstrip()}\n\n{marker}"
        if len(text) > MAX_COMMENT_CHARS:
            raise SourceError(
                f"the comment for {external_id} has {len(text)} characters; GitHub takes at "
                f"most {MAX_COMMENT_CHARS}"
            )
        path = f"{repo.path}/issues/{number}/comments"
        sent = False  # a POST answered with a 5xx may have created the comment all the same
        last = ""
        try:
            for attempt in range(WRITE_ATTEMPTS + 1):
                found = self._marked(path, marker, external_id)
                if found is not None:
                    return receipt(found, already_posted=not sent)
                if attempt == WRITE_ATTEMPTS:
                    break
                response = self.client.post(
                    path, {"body": text}, allow=(403, 404, 410, *RETRY_STATUSES)
                )
                status = response.status_code
                if status < 300:
                    return receipt(response_object(response), already_posted=False)
                if status in RETRY_STATUSES:
                    sent, last = True, f"{status} {response.reason_phrase}"
                    self._sleep(2.0**attempt)
                    continue
                detail = error_message(response)
                if status == 410:
                    raise SourceError(f"GitHub refused to comment on {external_id} (410): {detail}")
                raise CredentialError(
                    f"GitHub refused to comment on {external_id} ({status}: {detail}): "
                    + WRITE_SCOPE
                )
        finally:
            self.client.close()
        raise SourceError(
            f"commenting on {external_id} failed {WRITE_ATTEMPTS} times; last: {last}"
        )
