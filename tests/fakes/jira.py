"""A fake Jira Cloud REST API v3, stateful, for the jira connector's tests.

``FakeJira`` holds mutable state (issues, comments, project roles, security levels, groups)
and answers the endpoints the connector calls, in the documented shapes
(``tests/contract/fixtures/jira/*.json``): the enhanced search ``POST /rest/api/3/search/jql``
with ``nextPageToken``, the classic ``POST /rest/api/3/search`` with ``startAt``/``total``,
the ``startAt``/``isLast`` lists, an issue's comments (listed with ``expand=properties``,
created with ``POST``, their entity properties read one by one). It evaluates the small JQL
subset the connector writes, reading times in the API user's zone with minute resolution, as
Jira does.

Serve it through ``fake.transport()`` (``httpx.MockTransport``, see ``make_connector``) or
through a real local HTTP server with ``serve_jira(httpserver)`` (pytest-httpserver).
Requests must use basic auth ``EMAIL`` / ``TOKEN``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from connectors.jira.config import JiraConfig
from connectors.jira.connector import JiraConnector

FIXTURES = Path(__file__).parents[1] / "contract" / "fixtures" / "jira"
EMAIL, TOKEN = "mia@example.com", "jira-test-token"
TOKEN_ENV = "JIRA_CONTRACT_TEST_TOKEN"
API = "/rest/api/3"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def adf(text: str) -> dict[str, Any]:
    return {
        "type": "doc",
        "version": 1,
        "content": [{"type": "paragraph", "content": [{"type": "text", "text": text}]}],
    }


def jira_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


# -- a tiny JQL evaluator for the subset the connector writes ----------------------------

_TOKEN = re.compile(r'"[^"]*"|\(|\)|,|>=|[^\s(),]+')


class Jql:
    def __init__(self, text: str, zone: ZoneInfo) -> None:
        match = re.search(r"\s*\bORDER BY\s+(\w+)\s+(ASC|DESC)\s*$", text, re.IGNORECASE)
        self.ordered = match is not None
        body = text[: match.start()] if match else text
        self.zone = zone
        self.tokens = _TOKEN.findall(body)
        self.pos = 0
        self.predicate = self._or()
        assert self.pos == len(self.tokens), f"unparsed JQL: {text}"

    def _peek(self) -> str:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ""

    def _next(self) -> str:
        token = self._peek()
        self.pos += 1
        return token

    def _or(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self._and()]
        while self._peek().upper() == "OR":
            self._next()
            parts.append(self._and())
        return lambda issue: any(p(issue) for p in parts)

    def _and(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self._atom()]
        while self._peek().upper() == "AND":
            self._next()
            parts.append(self._atom())
        return lambda issue: all(p(issue) for p in parts)

    def _atom(self) -> Callable[[dict[str, Any]], bool]:
        if self._peek() == "(":
            self._next()
            inner = self._or()
            assert self._next() == ")"
            return inner
        name, op = self._next(), self._next().lower()
        get = _FIELDS[name]
        if op == "in":
            assert self._next() == "("
            values = set()
            while (token := self._next()) != ")":
                if token != ",":
                    values.add(token.strip('"'))
            return lambda issue: get(issue) in values
        if op == "is":
            assert self._next().lower() == "not" and self._next().upper() == "EMPTY"
            return lambda issue: bool(get(issue))
        if op == ">=":
            local = datetime.strptime(self._next().strip('"'), "%Y/%m/%d %H:%M")
            since = local.replace(tzinfo=self.zone)
            return lambda issue: _minute(get(issue)) >= since
        if op == "=":
            value = self._next().strip('"')
            return lambda issue: value in (get(issue) or [])
        raise AssertionError(f"unsupported JQL operator {op!r}")


def _minute(value: str) -> datetime:
    when = datetime.fromisoformat(value)
    return when.replace(second=0, microsecond=0)


_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "project": lambda i: i["fields"]["project"]["key"],
    "id": lambda i: i["id"],
    "level": lambda i: (i["fields"].get("security") or {}).get("id"),
    "updated": lambda i: i["fields"]["updated"],
    "labels": lambda i: i["fields"]["labels"],
}


# -- the fake ----------------------------------------------------------------------------


class FakeJira:
    """Jira Cloud's REST API v3, as much of it as the connector uses."""

    def __init__(self, base: str = "https://acme.atlassian.net") -> None:
        self.base = base
        self.zone = ZoneInfo("Europe/Paris")
        self.clock = datetime(2024, 1, 15, 8, 0, tzinfo=UTC)
        self.issues: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, list[dict[str, Any]]] = {}
        self.broken: set[str] = set()
        self.inline_comments = 20
        self.page_cap = 100
        self.next_id = 10001
        self.users = {
            "5b10a2844c20165700ede21g": "mia@example.com",
            "5b10ac8d82e05b22cc7d4ef5": "bob@example.com",
            "557058:f58131cb-b67d-43c7-b30d-6b58d40bd077": None,  # email hidden
        }
        self.roles: dict[str, dict[str, tuple[str, list[dict[str, Any]]]]] = {}
        self.hidden_roles: set[str] = set()
        self.levels: dict[str, list[dict[str, Any]]] = {}
        self.hidden_levels: set[str] = set()
        self.groups: dict[str, tuple[str, list[str]]] = {}
        self.inject: list[tuple[int, dict[str, str]]] = []
        #: The same, served only to comment ``POST``s.
        self.inject_writes: list[tuple[int, dict[str, str]]] = []
        #: The most comments one page of ``GET /issue/{id}/comment`` holds.
        self.comment_page_cap = 5000
        #: Whether ``expand=properties`` on the comment list is honoured; when not, the
        #: properties are only read one by one (``GET /comment/{id}/properties/{key}``).
        self.expand_properties = True
        #: Projects whose issues the account may browse but not comment on.
        self.no_comment: set[str] = set()
        self.next_comment_id = 20001
        self.log: list[tuple[str, str, dict[str, Any]]] = []
        self.add_project("ENG", developers=["group:jira-developers", "user:alice"])

    # state ---------------------------------------------------------------------------

    def tick(self) -> str:
        self.clock += timedelta(minutes=3)
        return jira_time(self.clock)

    def add_project(self, key: str, developers: list[str]) -> None:
        self.roles[key] = {"Developers": ("10360", [self.actor(p) for p in developers])}
        self.roles[key]["Administrators"] = ("10002", [self.actor("user:admin")])

    def actor(self, principal: str) -> dict[str, Any]:
        role = copy.deepcopy(fixture("role.json"))
        group, user = role["actors"]
        kind, name = principal.split(":", 1)
        if kind == "group":
            group_id = f"gid-{name}"
            group.update(displayName=name, name=name)
            group["actorGroup"] = {"name": name, "displayName": name, "groupId": group_id}
            self.groups.setdefault(name, (group_id, []))
            return dict(group)
        user["actorUser"] = {"accountId": name}
        user["displayName"] = name
        return dict(user)

    def add(self, summary: str, text: str, project: str = "ENG", **fields: Any) -> str:
        template = fixture("issue.json")
        issue_id = str(self.next_id)
        self.next_id += 1
        number = sum(1 for i in self.issues.values() if i["key"].startswith(project + "-")) + 1
        key = f"{project}-{number}"
        issue = {
            **template,
            "id": issue_id,
            "key": key,
            "self": f"{self.base}{API}/issue/{issue_id}",
        }
        issue["fields"] = {
            **template["fields"],
            "summary": summary,
            "description": adf(text),
            "labels": [],
            "project": {**template["fields"]["project"], "key": project, "name": project},
            "updated": self.tick(),
            **fields,
        }
        self.comments[issue_id] = list(issue["fields"].pop("comment")["comments"])
        self.issues[issue_id] = issue
        return issue_id

    def add_comment(
        self,
        issue_id: str,
        body: Any,
        *,
        author: str = "5b10a2844c20165700ede21g",
        properties: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A comment (ADF ``body``) as Jira stores it; the issue's ``updated`` moves."""
        comment_id = str(self.next_comment_id)
        self.next_comment_id += 1
        stamp = self.tick()
        comment = {
            "self": f"{self.base}{API}/issue/{issue_id}/comment/{comment_id}",
            "id": comment_id,
            "author": {"accountId": author, "displayName": author, "active": True},
            "body": body,
            "updateAuthor": {"accountId": author, "displayName": author, "active": True},
            "created": stamp,
            "updated": stamp,
            "jsdPublic": True,
            "properties": list(properties or []),
        }
        self.comments.setdefault(issue_id, []).append(comment)
        self.issues[issue_id]["fields"]["updated"] = stamp
        return comment

    def find(self, id_or_key: str) -> dict[str, Any] | None:
        if id_or_key in self.issues:
            return self.issues[id_or_key]
        return next((i for i in self.issues.values() if i["key"] == id_or_key), None)

    def update(self, issue_id: str, **fields: Any) -> None:
        self.issues[issue_id]["fields"].update(fields, updated=self.tick())

    def set_level(self, level_id: str, holders: list[dict[str, Any]], name: str = "") -> None:
        self.levels[level_id] = holders
        self.level_names = getattr(self, "level_names", {})
        self.level_names[level_id] = name or f"Level {level_id}"

    def security(self, level_id: str) -> dict[str, Any]:
        names = getattr(self, "level_names", {})
        return {
            "self": f"{self.base}{API}/securitylevel/{level_id}",
            "id": level_id,
            "name": names.get(level_id, f"Level {level_id}"),
            "description": "",
        }

    # HTTP ------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, params: dict[str, Any], body: Any, auth: str | None
    ) -> tuple[int, Any, dict[str, str]]:
        self.log.append((method, path, {**params, **(body or {})}))
        if self.inject_writes and method == "POST" and path.endswith("/comment"):
            status, headers = self.inject_writes.pop(0)
            return status, {"errorMessages": ["injected"]}, headers
        if self.inject:
            status, headers = self.inject.pop(0)
            return status, {"errorMessages": ["injected"]}, headers
        expected = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
        if auth != expected:
            return 401, {"errorMessages": ["Client must be authenticated."]}, {}
        route = path.removeprefix(API)
        if route == "/myself":
            return 200, fixture("myself.json"), {}
        if method == "POST" and route in ("/search/jql", "/search"):
            return 200, self.search(body, classic=route == "/search"), {}
        if m := re.fullmatch(r"/project/([A-Z0-9_]+)", route):
            if m[1] not in self.roles:
                return 404, {"errorMessages": ["No project could be found."]}, {}
            return 200, {"id": "10000", "key": m[1], "name": m[1]}, {}
        if m := re.fullmatch(r"/project/([A-Z0-9_]+)/role", route):
            if m[1] in self.hidden_roles:
                return 403, {"errorMessages": ["You cannot view project roles."]}, {}
            roles = self.roles.get(m[1], {})
            return (
                200,
                {n: f"{self.base}{API}/project/{m[1]}/role/{i}" for n, (i, _) in roles.items()},
                {},
            )
        if m := re.fullmatch(r"/project/([A-Z0-9_]+)/role/(\d+)", route):
            for name, (role_id, actors) in self.roles.get(m[1], {}).items():
                if role_id == m[2]:
                    role = fixture("role.json")
                    role.update(name=name, id=int(role_id), actors=actors)
                    return 200, role, {}
            return 404, {"errorMessages": ["no role"]}, {}
        if route == "/issuesecurityschemes/level/member":
            level_id = str(params["levelId"])
            if level_id in self.hidden_levels or level_id not in self.levels:
                return 403, {"errorMessages": ["Administer Jira permission needed"]}, {}
            values = [
                {
                    "id": str(n),
                    "issueSecurityLevelId": level_id,
                    "issueSecuritySchemeId": "10000",
                    "holder": h,
                }
                for n, h in enumerate(self.levels[level_id])
            ]
            return 200, self.paged(values, params), {}
        if route == "/group/member":
            for name, (group_id, members) in self.groups.items():
                if params.get("groupId") == group_id or params.get("groupname") == name:
                    template = fixture("group_members.json")["values"][0]
                    values = [
                        {
                            **template,
                            "accountId": a,
                            "displayName": a,
                            "emailAddress": self.users.get(a) or f"{a}@example.com",
                        }
                        for a in members
                    ]
                    return 200, self.paged(values, params), {}
            return 404, {"errorMessages": ["group not found"]}, {}
        if route == "/user":
            account = str(params["accountId"])
            user = {"accountId": account, "displayName": account, "active": True}
            if self.users.get(account):
                user["emailAddress"] = self.users[account]
            return 200, user, {}
        if m := re.fullmatch(r"/issue/([A-Z0-9_]+-\d+|\d+)", route):
            issue = self.find(m[1])
            if issue is None:
                return 404, {"errorMessages": ["Issue does not exist or you lack permission."]}, {}
            wanted = str(params.get("fields", "")).split(",")
            return 200, self.render(issue, [f for f in wanted if f]), {}
        if m := re.fullmatch(r"/comment/(\d+)/properties/([^/]+)", route):
            for comment in (c for cs in self.comments.values() for c in cs):
                if comment["id"] == m[1]:
                    for prop in comment.get("properties", []):
                        if prop["key"] == m[2]:
                            return 200, prop, {}
                    return 404, {"errorMessages": ["The property was not found."]}, {}
            return 404, {"errorMessages": ["The comment was not found."]}, {}
        if method == "POST" and (m := re.fullmatch(r"/issue/(\d+)/comment", route)):
            return self.post_comment(m[1], body)
        if m := re.fullmatch(r"/issue/(\d+)/comment", route):
            if m[1] in self.broken:
                return 500, {"errorMessages": ["Internal server error"]}, {}
            if m[1] not in self.issues:
                return 404, {"errorMessages": ["Issue does not exist or you lack permission."]}, {}
            start, size = int(params.get("startAt", 0)), int(params.get("maxResults", 50))
            size = min(size, self.comment_page_cap)
            comments = self.comments.get(m[1], [])
            expand = "properties" in str(params.get("expand", "")).split(",")
            shown = [
                _comment(c, properties=expand and self.expand_properties)
                for c in comments[start : start + size]
            ]
            return (
                200,
                {"startAt": start, "maxResults": size, "total": len(comments), "comments": shown},
                {},
            )
        return 404, {"errorMessages": [f"no route {method} {path}"]}, {}

    def post_comment(self, issue_id: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        """``POST /rest/api/3/issue/{id}/comment``: an ADF ``body`` and ``properties``."""
        issue = self.issues.get(issue_id)
        if issue is None:
            return 404, {"errorMessages": ["Issue does not exist or you lack permission."]}, {}
        if issue["fields"]["project"]["key"] in self.no_comment:
            message = "You do not have the permission to comment on this issue."
            return 403, {"errorMessages": [message], "errors": {}}, {}
        document = body.get("body") if isinstance(body, dict) else None
        if not isinstance(document, dict) or document.get("type") != "doc":
            return 400, {"errorMessages": [], "errors": {"comment": "Comment body is not ADF."}}, {}
        properties = body.get("properties", [])
        assert all(set(p) == {"key", "value"} for p in properties), properties
        comment = self.add_comment(
            issue_id, document, author=fixture("myself.json")["accountId"], properties=properties
        )
        return 201, _comment(comment, properties=False), {}

    def paged(self, values: list[Any], params: dict[str, Any]) -> dict[str, Any]:
        start, size = int(params.get("startAt", 0)), int(params.get("maxResults", 50))
        size = min(size, 50)
        return {
            "maxResults": size,
            "startAt": start,
            "total": len(values),
            "isLast": start + size >= len(values),
            "values": values[start : start + size],
        }

    def search(self, body: dict[str, Any], *, classic: bool) -> dict[str, Any]:
        query = Jql(body["jql"], self.zone)
        found = [i for i in self.issues.values() if query.predicate(i)]
        if query.ordered:
            found.sort(key=lambda i: (i["fields"]["updated"], int(i["id"])))
        size = min(int(body.get("maxResults", 50)), self.page_cap)
        if classic:
            start = int(body.get("startAt", 0))
        else:
            token = body.get("nextPageToken")
            start = int(base64.b64decode(token).decode()) if token else 0
        page = [self.render(i, body.get("fields", [])) for i in found[start : start + size]]
        if classic:
            return {
                "expand": "schema,names",
                "startAt": start,
                "maxResults": size,
                "total": len(found),
                "issues": page,
            }
        result: dict[str, Any] = {"issues": page, "isLast": start + size >= len(found)}
        if not result["isLast"]:
            result["nextPageToken"] = base64.b64encode(str(start + size).encode()).decode()
        return result

    def render(self, issue: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        out = copy.deepcopy(issue)
        out["fields"] = {k: v for k, v in out["fields"].items() if k in fields}
        if "comment" in fields:
            comments = self.comments.get(issue["id"], [])
            shown = comments[: self.inline_comments]
            if issue["id"] in self.broken:
                shown = shown[:0]
            total = len(comments) + (1 if issue["id"] in self.broken else 0)
            out["fields"]["comment"] = {
                "comments": [_comment(c, properties=False) for c in shown],
                "self": f"{self.base}{API}/issue/{issue['id']}/comment",
                "maxResults": len(shown),
                "total": total,
                "startAt": 0,
            }
        return out

    def transport(self) -> httpx.MockTransport:
        def respond(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content) if request.content else None
            status, payload, headers = self.handle(
                request.method,
                request.url.path,
                dict(request.url.params),
                body,
                request.headers.get("Authorization"),
            )
            return httpx.Response(status, json=payload, headers=headers)

        return httpx.MockTransport(respond)


def make_connector(
    fake: FakeJira, sleeps: list[float] | None = None, **config: Any
) -> JiraConnector:
    """A connector on ``fake`` through ``httpx.MockTransport``, basic auth with ``EMAIL`` and
    the token read from ``TOKEN_ENV`` (the caller sets it to ``TOKEN``); ``sleeps`` records
    the waits instead of waiting."""
    settings: dict[str, Any] = {
        "base_url": fake.base,
        "email": EMAIL,
        "api_token": {"env": TOKEN_ENV},
        "projects": ["ENG"],
        **config,
    }
    record = sleeps.append if sleeps is not None else (lambda _: None)
    return JiraConnector(
        JiraConfig.model_validate(settings), transport=fake.transport(), sleep=record
    )


def _comment(comment: dict[str, Any], *, properties: bool) -> dict[str, Any]:
    """A comment as the API shows it: its properties only when expanded."""
    out = copy.deepcopy(comment)
    if not properties:
        out.pop("properties", None)
    return out


def serve_jira(httpserver: Any, fake: FakeJira | None = None) -> tuple[FakeJira, str]:
    """Serve a ``FakeJira`` from a real local HTTP server (pytest-httpserver's ``httpserver``
    fixture); returns it and the ``base_url`` to configure. A ``fake`` passed in must have
    been made with ``base=httpserver.url_for("").rstrip("/")`` (its URLs point there)."""
    from werkzeug import Request, Response

    base = httpserver.url_for("").rstrip("/")
    fake = fake if fake is not None else FakeJira(base=base)

    def handler(request: Request) -> Response:
        body = json.loads(request.get_data()) if request.get_data() else None
        status, payload, headers = fake.handle(
            request.method,
            request.path,
            dict(request.args),
            body,
            request.headers.get("Authorization"),
        )
        return Response(
            json.dumps(payload), status=status, headers=headers, content_type="application/json"
        )

    httpserver.expect_request(re.compile(r"^/rest/.*")).respond_with_handler(handler)
    return fake, base
