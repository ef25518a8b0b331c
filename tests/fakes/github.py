"""A fake GitHub REST API, stateful, for the github connector's tests.

It answers what the connector calls, in GitHub's shapes (``tests/contract/fixtures/github``,
written from the REST reference): ``Link`` pagination, ``since``/``sort``/``direction`` on
the issues list, pull requests inside the issues list, ``Date`` headers, collaborators,
teams and members, and the issue comments (listed, and created with ``POST``). It holds
mutable state so a test can add, change, remove, restrict and break issues.

Serve it through ``httpx.MockTransport(fake.handler)`` (see ``make_connector``) or through a
real local HTTP server with ``serve_github(httpserver)`` (pytest-httpserver), under the
Enterprise-style prefix ``/api/v3``. Requests must carry ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import copy
import email.utils
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from connectors.github.config import GitHubConfig
from connectors.github.connector import GitHubConnector

FIXTURES = Path(__file__).parents[1] / "contract" / "fixtures" / "github"
TOKEN_ENV = "GH_FAKE_TOKEN"
TOKEN = "ghp_fake0123456789"
API = "https://github.test/api/v3"  # an Enterprise-style prefix: paths are kept below it
PREFIX = httpx.URL(API).path
#: The login of the token's owner: comments posted through the API are theirs.
BOT = "context-bot"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(t: str) -> datetime:
    return datetime.fromisoformat(t.replace("Z", "+00:00"))


class FakeRepo:
    def __init__(self, full_name: str, *, private: bool, org: bool) -> None:
        self.full_name = full_name
        self.private = private
        self.org = org
        self.collaborators: list[str] = []
        self.teams: list[str] = []
        self.issues: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.broken: set[int] = set()
        self.forbid_collaborators = False
        #: The token may read but not write (a read-only fine-grained token): POST → 403.
        self.read_only = False


class FakeGitHub:
    """GitHub's REST API, as much of it as the connector uses."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
        self.repos: dict[str, FakeRepo] = {}
        self.team_members: dict[tuple[str, str], list[str]] = {}
        self.requests: list[httpx.Request] = []
        self.faults: list[httpx.Response] = []  # served, in order, before normal answers
        self.write_faults: list[httpx.Response] = []  # the same, for POST requests only
        self.after_page: Callable[[], None] | None = None
        self._ids = 1000

    # -- state ----------------------------------------------------------------------------

    def tick(self) -> str:
        self.now += timedelta(minutes=1)
        return iso(self.now)

    def repo(self, full_name: str, *, private: bool = False, org: bool = True) -> FakeRepo:
        self.repos[full_name.lower()] = FakeRepo(full_name, private=private, org=org)
        return self.repos[full_name.lower()]

    def add_issue(
        self,
        repo: str,
        number: int,
        title: str,
        body: str,
        *,
        labels: tuple[str, ...] = (),
        pull_request: bool = False,
        author: str = "octocat",
    ) -> None:
        r = self.repos[repo.lower()]
        issue = copy.deepcopy(fixture("issue"))
        base = f"https://api.github.com/repos/{r.full_name}/issues/{number}"
        self._ids += 1
        stamp = self.tick()
        issue.update(
            id=self._ids,
            number=number,
            title=title,
            body=body,
            url=base,
            comments_url=f"{base}/comments",
            html_url=f"https://github.com/{r.full_name}/issues/{number}",
            created_at=stamp,
            updated_at=stamp,
            comments=0,
            labels=[{**fixture("issue")["labels"][0], "name": name} for name in labels],
        )
        issue["user"] = {**issue["user"], "login": author}
        if pull_request:
            issue.update(fixture("pull_request_issue"))
            issue["html_url"] = f"https://github.com/{r.full_name}/pull/{number}"
        r.issues[number] = issue
        r.comments[number] = []

    def update_issue(self, repo: str, number: int, **fields: Any) -> None:
        issue = self.repos[repo.lower()].issues[number]
        issue.update(fields)
        issue["updated_at"] = self.tick()

    def add_comment(
        self, repo: str, number: int, body: str, login: str = "hubot"
    ) -> dict[str, Any]:
        r = self.repos[repo.lower()]
        comment = copy.deepcopy(fixture("comment"))
        self._ids += 1
        stamp = self.tick()
        comment.update(
            id=self._ids,
            body=body,
            created_at=stamp,
            updated_at=stamp,
            url=f"https://api.github.com/repos/{r.full_name}/issues/comments/{self._ids}",
            html_url=f"{r.issues[number]['html_url']}#issuecomment-{self._ids}",
            issue_url=f"https://api.github.com/repos/{r.full_name}/issues/{number}",
        )
        comment["user"] = {**comment["user"], "login": login}
        r.comments[number].append(comment)
        # GitHub bumps the issue's updated_at when a comment is added.
        r.issues[number]["comments"] = len(r.comments[number])
        r.issues[number]["updated_at"] = stamp
        return comment

    def delete_issue(self, repo: str, number: int) -> None:
        del self.repos[repo.lower()].issues[number]

    # -- HTTP -----------------------------------------------------------------------------

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        date = {"Date": email.utils.format_datetime(self.now, usegmt=True)}
        if request.method == "POST" and self.write_faults:
            fault = self.write_faults.pop(0)
            return httpx.Response(fault.status_code, headers=fault.headers, content=fault.content)
        if self.faults:
            fault = self.faults.pop(0)
            return httpx.Response(fault.status_code, headers=fault.headers, content=fault.content)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json=fixture("bad_credentials"), headers=date)
        assert request.headers["Accept"] == "application/vnd.github+json"
        assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
        path = request.url.path.removeprefix(PREFIX)
        parts = path.strip("/").split("/")
        params = dict(request.url.params)
        not_found = httpx.Response(404, json=fixture("not_found"), headers=date)
        if request.method == "POST":
            return self._post(request, parts, date) or not_found
        if request.method != "GET":
            return not_found
        if parts == ["rate_limit"]:
            return httpx.Response(200, json=fixture("rate_limit"), headers=date)
        if parts[0] == "orgs" and len(parts) == 5 and parts[2] == "teams":
            members = self.team_members.get((parts[1], parts[3]))
            if members is None:
                return not_found
            users = [{**fixture("team_member"), "login": m} for m in members]
            return self._page(request, users, date)
        repo = self._repo(parts)
        if repo is None:
            return not_found
        rest = parts[3:]
        if not rest:
            return httpx.Response(200, json=self._repo_json(repo), headers=date)
        if rest == ["collaborators"]:
            if repo.forbid_collaborators:
                body = {"message": "Must have push access to view repository collaborators."}
                return httpx.Response(403, json=body, headers=date)
            users = [{**fixture("collaborator"), "login": c} for c in repo.collaborators]
            return self._page(request, users, date)
        if rest == ["teams"]:
            teams = [{**fixture("team"), "slug": s, "name": s.title()} for s in repo.teams]
            return self._page(request, teams, date)
        if rest == ["issues"]:
            response = self._page(request, self._issues(repo, params), date)
            if self.after_page is not None:
                self.after_page()
            return response
        if number := self._comments_of(repo, rest):
            if number in repo.broken:
                return httpx.Response(500, json={"message": "Server Error"}, headers=date)
            return self._page(request, repo.comments[number], date)
        return not_found

    def _repo(self, parts: list[str]) -> FakeRepo | None:
        if parts[0] != "repos" or len(parts) < 3:
            return None
        return self.repos.get(f"{parts[1]}/{parts[2]}".lower())

    @staticmethod
    def _comments_of(repo: FakeRepo, rest: list[str]) -> int | None:
        """The issue number of ``issues/{number}/comments`` when that issue exists."""
        if len(rest) != 3 or rest[0] != "issues" or rest[2] != "comments":
            return None
        return int(rest[1]) if rest[1].isdigit() and int(rest[1]) in repo.issues else None

    def _post(
        self, request: httpx.Request, parts: list[str], date: dict[str, str]
    ) -> httpx.Response | None:
        """``POST /repos/{owner}/{repo}/issues/{number}/comments``; ``None``: not found."""
        repo = self._repo(parts)
        number = self._comments_of(repo, parts[3:]) if repo is not None else None
        if repo is None or number is None:
            return None
        if repo.read_only:
            body = {
                "message": "Resource not accessible by personal access token",
                "documentation_url": "https://docs.github.com/rest/issues/comments",
                "status": "403",
            }
            return httpx.Response(403, json=body, headers=date)
        try:
            payload = json.loads(request.content)
        except ValueError:
            return httpx.Response(400, json={"message": "Problems parsing JSON"}, headers=date)
        if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
            return httpx.Response(422, json={"message": "Validation Failed"}, headers=date)
        comment = self.add_comment(repo.full_name, number, payload["body"], login=BOT)
        return httpx.Response(201, json=comment, headers=date)

    def _repo_json(self, repo: FakeRepo) -> dict[str, Any]:
        data = copy.deepcopy(fixture("repository"))
        owner, name = repo.full_name.split("/")
        data.update(
            name=name,
            full_name=repo.full_name,
            private=repo.private,
            visibility="private" if repo.private else "public",
        )
        data["owner"] = {
            **data["owner"],
            "login": owner,
            "type": "Organization" if repo.org else "User",
        }
        return data

    def _issues(self, repo: FakeRepo, params: dict[str, str]) -> list[dict[str, Any]]:
        assert params.get("state") == "all"
        items = list(repo.issues.values())
        if "since" in params:
            since = parse(params["since"])
            items = [i for i in items if parse(i["updated_at"]) >= since]
        key = "updated_at" if params.get("sort") == "updated" else "created_at"
        items.sort(key=lambda i: (i[key], i["number"]), reverse=params.get("direction") == "desc")
        return copy.deepcopy(items)

    def _page(
        self, request: httpx.Request, items: list[dict[str, Any]], headers: dict[str, str]
    ) -> httpx.Response:
        params = dict(request.url.params)
        per_page = int(params.get("per_page", 30))
        page = int(params.get("page", 1))
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = dict(headers)
        last = max(1, -(-len(items) // per_page))
        if page < last:

            def link(n: int) -> str:
                query = urlencode({**params, "page": str(n)})
                return str(request.url.copy_with(query=query.encode()))

            headers["Link"] = f'<{link(page + 1)}>; rel="next", <{link(last)}>; rel="last"'
        return httpx.Response(200, json=chunk, headers=headers)

    def calls(self, suffix: str, method: str | None = None) -> list[httpx.Request]:
        return [
            r
            for r in self.requests
            if r.url.path.endswith(suffix) and (method is None or r.method == method)
        ]


class Sleeps(list[float]):
    """A ``sleep`` that records instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_connector(
    fake: FakeGitHub,
    repositories: list[str] | None = None,
    *,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], datetime] | None = None,
    **config: Any,
) -> GitHubConnector:
    """A connector on ``fake`` through ``httpx.MockTransport``; the token is read from
    ``TOKEN_ENV``, which the caller sets to ``TOKEN``."""
    cfg = GitHubConfig.model_validate(
        {
            "base_url": API,
            "repositories": repositories or ["acme/handbook"],
            "token": {"env": TOKEN_ENV},
            **config,
        }
    )
    return GitHubConnector(
        cfg,
        transport=httpx.MockTransport(fake.handler),
        sleep=sleep if sleep is not None else Sleeps(),
        clock=clock or (lambda: fake.now),
    )


def serve_github(httpserver: Any, fake: FakeGitHub | None = None) -> tuple[FakeGitHub, str]:
    """Serve ``fake`` (a new one by default) from a real local HTTP server (pytest-httpserver's
    ``httpserver`` fixture) under ``/api/v3``; returns it and the ``base_url`` to configure.
    Requests must carry ``Authorization: Bearer TOKEN``."""
    from werkzeug import Request, Response

    fake = fake if fake is not None else FakeGitHub()

    def handle(request: Request) -> Response:
        url = httpx.URL(request.host_url.rstrip("/") + request.path).copy_with(
            query=request.query_string
        )
        answer = fake.handler(
            httpx.Request(
                request.method, url, headers=dict(request.headers), content=request.get_data()
            )
        )
        keep = {"link", "date", "content-type", "retry-after", "x-ratelimit-remaining"}
        headers = {k: v for k, v in answer.headers.items() if k.lower() in keep}
        return Response(answer.content, status=answer.status_code, headers=headers)

    httpserver.expect_request(re.compile(rf"^{PREFIX}/")).respond_with_handler(handle)
    return fake, httpserver.url_for(PREFIX)
