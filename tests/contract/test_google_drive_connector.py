"""The google_drive connector against a fake Drive v3 / Directory API, plus the real CLI.

``FakeDrive`` holds mutable state (files, contents, a change log, groups) and answers the
endpoints the connector calls with bodies shaped as Google documents them (the recorded
shapes are in ``fixtures/google_drive/``). It serves ``httpx.MockTransport`` in unit tests
and a real local HTTP server (pytest-httpserver) in the end-to-end test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from connectors import registry
from connectors.base import Acl
from connectors.errors import ConfigError, CredentialError
from connectors.google_drive.acl import acl_from_permissions
from connectors.google_drive.config import GoogleDriveConfig
from connectors.google_drive.connector import GoogleDriveCheckpoint, GoogleDriveConnector
from tests.contract.connector_contract import ConnectorContract, deletes, failures, run, upserts

FIXTURES = Path(__file__).parent / "fixtures" / "google_drive"
TOKEN_ENV = "GDRIVE_TEST_TOKEN"
GOOD_TOKEN = "ya29.fake-access-token"
DOC = "application/vnd.google-apps.document"
SHEET = "application/vnd.google-apps.spreadsheet"
SLIDES = "application/vnd.google-apps.presentation"
FOLDER = "application/vnd.google-apps.folder"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def perm_user(email: str, role: str = "reader") -> dict[str, Any]:
    return {"kind": "drive#permission", "type": "user", "role": role, "emailAddress": email}


def perm_group(email: str) -> dict[str, Any]:
    return {"kind": "drive#permission", "type": "group", "role": "reader", "emailAddress": email}


@dataclass
class Fault:
    path: str  # a regex searched in the request path
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class FakeDrive:
    """Drive v3 + Directory API state and responses (documented shapes, tiny scale)."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.content: dict[str, bytes] = {}
        self.log: list[tuple[str, dict[str, str]]] = []
        self.changes: list[tuple[int, str]] = []  # (change id, file id), one per file
        self.next_change = 100
        self.clock = 0
        self.page_size: int | None = None  # the server's own cap, to force pagination
        self.faults: list[Fault] = []
        self.file_faults: dict[str, str] = {}  # file id → error fixture for its content
        self.shared_permissions: dict[str, list[dict[str, Any]]] = {}
        self.groups: dict[str, list[dict[str, Any]]] = {}
        self.users: list[dict[str, Any]] = []
        self.token = GOOD_TOKEN
        self.expired_tokens: set[str] = set()

    # -- state changes (what users do in Drive) --------------------------------------------

    def _tick(self) -> str:
        self.clock += 1
        return f"2026-03-01T10:{self.clock // 60:02d}:{self.clock % 60:02d}.000Z"

    def _changed(self, file_id: str) -> None:
        # Drive lists a file once per changes read, in its latest state.
        self.changes = [(n, f) for n, f in self.changes if f != file_id]
        self.changes.append((self.next_change, file_id))
        self.next_change += 1

    def put(
        self,
        file_id: str,
        name: str,
        data: bytes,
        *,
        mime: str = DOC,
        permissions: list[dict[str, Any]] | None = None,
        parents: list[str] | None = None,
        drive_id: str | None = None,
    ) -> None:
        old = self.files.get(file_id, {})
        file: dict[str, Any] = {
            "kind": "drive#file",
            "id": file_id,
            "name": name,
            "mimeType": mime,
            "modifiedTime": self._tick(),
            "version": str(int(old.get("version", "0")) + 1),
            "webViewLink": f"https://docs.google.com/document/d/{file_id}/edit",
            "owners": [{"kind": "drive#user", "emailAddress": "owner@example.com"}],
            "lastModifyingUser": {"kind": "drive#user", "emailAddress": "editor@example.com"},
            "parents": parents if parents is not None else old.get("parents", ["root"]),
            "trashed": False,
        }
        if drive_id:
            file["driveId"] = drive_id
            file.pop("owners")
        elif permissions is not None or "permissions" in old:
            file["permissions"] = permissions if permissions is not None else old["permissions"]
        if not mime.startswith("application/vnd.google-apps."):
            file["md5Checksum"] = hashlib.md5(data).hexdigest()
            file["size"] = str(len(data))
        self.files[file_id] = file
        self.content[file_id] = data
        self._changed(file_id)

    def share(
        self, file_id: str, permissions: list[dict[str, Any]], *, touch: bool = False
    ) -> None:
        """A sharing change: Drive bumps ``version`` (and maybe ``modifiedTime``)."""
        file = self.files[file_id]
        file["permissions"] = permissions
        file["version"] = str(int(file["version"]) + 1)
        if touch:
            file["modifiedTime"] = self._tick()
        self._changed(file_id)

    def update(self, file_id: str, **fields: Any) -> None:
        self.files[file_id].update(fields)
        self.files[file_id]["modifiedTime"] = self._tick()
        self._changed(file_id)

    def delete(self, file_id: str) -> None:
        del self.files[file_id]
        self._changed(file_id)

    # -- the HTTP side -------------------------------------------------------------------

    def handle(
        self, method: str, path: str, params: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        self.log.append((path, params))
        for fault in self.faults:
            if re.search(fault.path, path):
                self.faults.remove(fault)
                return fault.status, fault.headers, json.dumps(fault.body).encode()
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {}, json.dumps(fixture("error_401.json")).encode()
        try:
            status, body = self._route(method, path, params)
        except KeyError:
            status, body = 404, fixture("error_not_found.json")
        if isinstance(body, bytes):
            return status, {"Content-Type": "application/octet-stream"}, body
        return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def _page(
        self, items: list[Any], params: dict[str, str], default: int
    ) -> tuple[list[Any], str]:
        size = int(params.get("pageSize") or params.get("maxResults") or default)
        if self.page_size:
            size = min(size, self.page_size)
        start = int(params.get("pageToken") or 0)
        end = start + size
        return items[start:end], (str(end) if end < len(items) else "")

    def _view(self, file: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(file))  # type: ignore[no-any-return]

    def _route(self, method: str, path: str, params: dict[str, str]) -> tuple[int, Any]:
        if path == "/drive/v3/about":
            return 200, {"kind": "drive#about", "user": {"emailAddress": "sync@example.com"}}
        if path == "/drive/v3/changes/startPageToken":
            return 200, {"kind": "drive#startPageToken", "startPageToken": str(self.next_change)}
        if path == "/drive/v3/changes":
            return self._changes(params)
        if path == "/drive/v3/files":
            return self._list(params)
        m = re.fullmatch(r"/drive/v3/files/([^/]+)(/export|/permissions)?", path)
        if m:
            file_id, sub = m.group(1), m.group(2)
            file = self.files[file_id]
            if sub == "/permissions":
                perms = self.shared_permissions.get(file_id, [])
                page, token = self._page(perms, params, 100)
                body: dict[str, Any] = {"kind": "drive#permissionList", "permissions": page}
                if token:
                    body["nextPageToken"] = token
                return 200, body
            if sub == "/export" or params.get("alt") == "media":
                if file_id in self.file_faults:
                    return 403, fixture(self.file_faults[file_id])
                native = file["mimeType"].startswith("application/vnd.google-apps.")
                if native != (sub == "/export"):
                    return 403, fixture("error_file_forbidden.json")
                return 200, self.content[file_id]
            return 200, self._view(file)
        m = re.fullmatch(r"/drive/v3/drives/([^/]+)", path)
        if m:
            return 200, {"kind": "drive#drive", "id": m.group(1), "name": "Shared"}
        if path == "/admin/directory/v1/groups":
            groups = [{"kind": "admin#directory#group", "email": g} for g in self.groups]
            page, token = self._page(groups, params, 200)
            body = {"kind": "admin#directory#groups", "groups": page}
            if token:
                body["nextPageToken"] = token
            return 200, body
        m = re.fullmatch(r"/admin/directory/v1/groups/([^/]+)/members", path)
        if m:
            page, token = self._page(self.groups[m.group(1)], params, 200)
            body = {"kind": "admin#directory#members", "members": page}
            if token:
                body["nextPageToken"] = token
            return 200, body
        if path == "/admin/directory/v1/users":
            page, token = self._page(self.users, params, 100)
            body = {"kind": "admin#directory#users", "users": page}
            if token:
                body["nextPageToken"] = token
            return 200, body
        raise KeyError(path)

    def _list(self, params: dict[str, str]) -> tuple[int, Any]:
        query = params.get("q", "")
        files = [f for f in self.files.values()]
        if "trashed = false" in query:
            files = [f for f in files if not f["trashed"]]
        parent = re.search(r"'([^']+)' in parents", query)
        if parent:
            files = [f for f in files if parent.group(1) in f["parents"]]
        if params.get("driveId"):
            files = [f for f in files if f.get("driveId") == params["driveId"]]
        else:
            files = [f for f in files if not f.get("driveId")]
        page, token = self._page([self._view(f) for f in files], params, 100)
        body: dict[str, Any] = {"kind": "drive#fileList", "files": page}
        if token:
            body["nextPageToken"] = token
        return 200, body

    def _changes(self, params: dict[str, str]) -> tuple[int, Any]:
        token = params["pageToken"]
        if token in self.expired_tokens:
            return 404, fixture("error_not_found.json")
        start = int(token)
        pending = [(n, f) for n, f in self.changes if n >= start]
        size = self.page_size or int(params.get("pageSize", 100))
        page = pending[:size]
        changes = []
        for _, file_id in page:
            file = self.files.get(file_id)
            change: dict[str, Any] = {
                "kind": "drive#change",
                "changeType": "file",
                "time": "2026-03-01T11:00:00.000Z",
                "fileId": file_id,
                "removed": file is None,
            }
            if file is not None:
                change["file"] = self._view(file)
            changes.append(change)
        body: dict[str, Any] = {"kind": "drive#changeList", "changes": changes}
        if len(pending) > size:
            body["nextPageToken"] = str(page[-1][0] + 1)
        else:
            body["newStartPageToken"] = str(self.next_change)
        return 200, body

    def transport(self) -> httpx.MockTransport:
        def respond(request: httpx.Request) -> httpx.Response:
            params = dict(request.url.params)
            status, headers, body = self.handle(
                request.method, request.url.path, params, dict(request.headers)
            )
            return httpx.Response(status, headers=headers, content=body)

        return httpx.MockTransport(respond)

    def export_count(self, file_id: str) -> int:
        return sum(1 for path, _ in self.log if path == f"/drive/v3/files/{file_id}/export")


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def drive(monkeypatch: pytest.MonkeyPatch) -> FakeDrive:
    monkeypatch.setenv(TOKEN_ENV, GOOD_TOKEN)
    return FakeDrive()


def make(drive: FakeDrive, sleep: Callable[[float], None] | None = None, **config: Any) -> Any:
    parsed = GoogleDriveConfig.model_validate(
        {"base_url": "https://drive.test", "token": {"env": TOKEN_ENV}, **config}
    )
    return GoogleDriveConnector(
        parsed, transport=drive.transport(), sleep=sleep if sleep is not None else Sleeps()
    )


def html(text: str) -> bytes:
    return f"<html><body><p>{text}</p></body></html>".encode()


# -- the shared contract ---------------------------------------------------------------------


class TestGoogleDriveContract(ConnectorContract):
    @pytest.fixture(autouse=True)
    def _drive(self, drive: FakeDrive) -> None:
        self.drive = drive

    def connector(self) -> Any:
        return make(self.drive)

    def external_id(self, name: str) -> str:
        return f"1doc-{name}"

    def add(self, name: str, text: str) -> None:
        self.drive.put(
            self.external_id(name),
            name.upper(),
            html(text),
            permissions=[perm_user("owner@example.com", "owner"), perm_group("staff@example.com")],
        )

    def change(self, name: str, text: str) -> None:
        file_id = self.external_id(name)
        self.drive.put(file_id, self.drive.files[file_id]["name"], html(text))

    def remove(self, name: str) -> None:
        self.drive.delete(self.external_id(name))

    def restrict(self, name: str, principal: str) -> Any:
        email = principal.split(":", 1)[1]
        self.drive.share(self.external_id(name), [perm_user(email)])
        return self.connector()

    def break_(self, name: str) -> None:
        self.drive.file_faults[self.external_id(name)] = "error_file_forbidden.json"


# -- listing, content, pagination -------------------------------------------------------------


def test_the_kind_is_registered() -> None:
    assert registry.connector_class("google_drive") is GoogleDriveConnector


def test_native_files_are_exported_and_uploads_downloaded(drive: FakeDrive) -> None:
    drive.put("d1", "Plan", html("the plan"), permissions=[perm_user("ada@example.com")])
    drive.put("s1", "Budget", b"a,b\n1,2\n", mime=SHEET, permissions=[perm_user("ada@example.com")])
    drive.put("p1", "Deck", b"slide one", mime=SLIDES, permissions=[perm_user("ada@example.com")])
    drive.put("f1", "report.pdf", b"%PDF-1.7 x", mime="application/pdf", permissions=[])
    drive.put("f2", "notes", b"plain", mime="text/plain", permissions=[])
    drive.put("i1", "photo.png", b"\x89PNG", mime="image/png", permissions=[])
    drive.put("x1", "Form", b"", mime="application/vnd.google-apps.form", permissions=[])
    drive.put("fo", "Folder", b"", mime=FOLDER, permissions=[])
    changes, checkpoint = run(make(drive), None)
    docs = upserts(changes)
    assert set(docs) == {"d1", "s1", "p1", "f1", "f2"}  # images, forms and folders skipped
    assert (docs["d1"].filename, docs["d1"].mime_type) == ("Plan.html", "text/html")
    assert docs["d1"].read() == html("the plan")
    assert (docs["s1"].filename, docs["s1"].mime_type) == ("Budget.csv", "text/csv")
    assert (docs["p1"].filename, docs["p1"].mime_type) == ("Deck.txt", "text/plain")
    assert docs["f1"].filename == "report.pdf" and docs["f2"].filename == "notes.txt"
    assert docs["d1"].url == "https://docs.google.com/document/d/d1/edit"
    assert docs["d1"].author == "owner@example.com" and docs["d1"].updated_at is not None
    # Uploads are hashed by Drive's md5 and downloaded only when read.
    assert drive.log[-1][0] != "/drive/v3/files/f1"
    assert docs["f1"].size == len(b"%PDF-1.7 x")
    assert docs["f1"].read() == b"%PDF-1.7 x"
    assert drive.log[-1] == ("/drive/v3/files/f1", {"alt": "media", "supportsAllDrives": "true"})
    assert set(checkpoint.files) == set(docs)
    assert checkpoint.files["f1"] == "" and checkpoint.files["d1"].startswith("2026-")


def test_docs_can_be_exported_as_plain_text(drive: FakeDrive) -> None:
    drive.put("d1", "Plan", b"the plan", permissions=[])
    (doc,) = upserts(run(make(drive, docs_format="text/plain"), None)[0]).values()
    assert doc.filename == "Plan.txt"
    export = [p for path, p in drive.log if path.endswith("/export")]
    assert export == [{"mimeType": "text/plain"}]


def test_listing_and_changes_follow_every_page(drive: FakeDrive) -> None:
    for n in range(5):
        drive.put(f"d{n}", f"Doc {n}", html(f"text {n}"), permissions=[])
    drive.page_size = 2
    changes, checkpoint = run(make(drive), None)
    assert set(upserts(changes)) == {f"d{n}" for n in range(5)}
    listed = [p for path, p in drive.log if path == "/drive/v3/files"]
    assert [p.get("pageToken") for p in listed] == [None, "2", "4"]
    assert listed[0]["q"] == "trashed = false" and listed[0]["pageSize"] == "1000"
    for n in range(5):
        drive.put(f"d{n}", f"Doc {n}", html(f"new text {n}"))
    drive.log.clear()
    again, after = run(make(drive), checkpoint)
    assert set(upserts(again)) == {f"d{n}" for n in range(5)}
    pages = [p["pageToken"] for path, p in drive.log if path == "/drive/v3/changes"]
    assert len(pages) == 3 and pages[0] == checkpoint.page_token
    assert after.page_token == str(drive.next_change)


def test_the_documented_shapes_parse() -> None:
    listing = fixture("files_list.json")
    doc, pdf, _folder = listing["files"]
    assert acl_from_permissions(doc["permissions"]) == Acl.of(
        ["user:ada@example.com", "group:eng@example.com", "group:domain-example.com"]
    )  # the link-only "anyone" permission does not make it public
    assert acl_from_permissions(pdf["permissions"]).public
    shared = acl_from_permissions(fixture("permissions_list.json")["permissions"])
    assert shared == Acl.of(["group:finance@example.com", "user:auditor@example.org"])


def test_changes_fixture_is_applied(drive: FakeDrive) -> None:
    body = fixture("changes_list.json")
    drive.faults.append(Fault("/drive/v3/changes$", 200, body))
    since = GoogleDriveCheckpoint(
        page_token="4200", files={"1docAAAAexampleDocumentId": "", "1pdfBBBBexamplePdfFileId": ""}
    )
    changes, after = run(make(drive), since)
    assert deletes(changes) == {"1docAAAAexampleDocumentId"}
    (pdf,) = upserts(changes).values()
    assert pdf.content_hash and pdf.acl == Acl.of(["user:bo@example.com"])
    assert after.page_token == "4242" and set(after.files) == {"1pdfBBBBexamplePdfFileId"}


# -- deletions ----------------------------------------------------------------------------------


def test_trashed_and_removed_files_are_deleted(drive: FakeDrive) -> None:
    for n in range(3):
        drive.put(f"d{n}", f"Doc {n}", html("x"), permissions=[])
    _, checkpoint = run(make(drive), None)
    drive.update("d0", trashed=True)
    drive.delete("d1")
    changes, after = run(make(drive), checkpoint)
    assert deletes(changes) == {"d0", "d1"} and not upserts(changes)
    assert set(after.files) == {"d2"}
    assert {r.external_id for r in make(drive).list_ids()} == {"d2"}


def test_an_expired_change_token_relists_and_deletes_what_is_gone(drive: FakeDrive) -> None:
    for n in range(3):
        drive.put(f"d{n}", f"Doc {n}", html("x"), permissions=[])
    _, checkpoint = run(make(drive), None)
    drive.delete("d1")
    drive.expired_tokens.add(checkpoint.page_token)
    changes, after = run(make(drive), checkpoint)
    assert set(upserts(changes)) == {"d0", "d2"} and deletes(changes) == {"d1"}
    assert drive.export_count("d0") == 1  # the stored hash was reused, not exported again
    assert after.page_token == str(drive.next_change)


# -- permissions and hashes -----------------------------------------------------------------------


def test_a_sharing_change_keeps_the_hash_and_updates_the_acl(drive: FakeDrive) -> None:
    drive.put("d1", "Plan", html("plan"), permissions=[perm_user("ada@example.com", "owner")])
    drive.put("f1", "a.pdf", b"%PDF", mime="application/pdf", permissions=[])
    first, checkpoint = run(make(drive), None)
    public = {"type": "anyone", "role": "reader", "allowFileDiscovery": True}
    link_only = {"type": "anyone", "role": "reader", "allowFileDiscovery": False}
    drive.share("d1", [perm_user("ada@example.com", "owner"), link_only])
    drive.share("f1", [public])
    again, _ = run(make(drive), checkpoint)
    before, after = upserts(first), upserts(again)
    for key in ("d1", "f1"):
        assert after[key].content_hash == before[key].content_hash
    assert after["d1"].acl == Acl.of(["user:ada@example.com"])  # link-only is not public
    assert after["f1"].acl.public
    assert drive.export_count("d1") == 1  # modifiedTime did not move: no second export


def test_a_sharing_change_that_touches_modified_time_still_keeps_the_hash(
    drive: FakeDrive,
) -> None:
    drive.put("d1", "Plan", html("plan"), permissions=[perm_user("ada@example.com")])
    first, checkpoint = run(make(drive), None)
    drive.share("d1", [perm_user("bo@example.com")], touch=True)
    again, _ = run(make(drive), checkpoint)
    assert upserts(again)["d1"].content_hash == upserts(first)["d1"].content_hash
    assert upserts(again)["d1"].acl == Acl.of(["user:bo@example.com"])
    assert drive.export_count("d1") == 2  # exported again to be sure, hashed the same


def test_a_rename_changes_the_hash(drive: FakeDrive) -> None:
    drive.put("f1", "a.pdf", b"%PDF", mime="application/pdf", permissions=[])
    first, checkpoint = run(make(drive), None)
    drive.update("f1", name="b.pdf")
    again, _ = run(make(drive), checkpoint)
    assert upserts(again)["f1"].content_hash != upserts(first)["f1"].content_hash


def test_permission_types_map_to_principals() -> None:
    acl = acl_from_permissions(
        [
            perm_user("Ada@Example.com", "writer"),
            perm_group("eng@example.com"),
            {
                "type": "domain",
                "role": "reader",
                "domain": "example.com",
                "allowFileDiscovery": True,
            },
            {
                "type": "domain",
                "role": "reader",
                "domain": "other.org",
                "allowFileDiscovery": False,
            },
            {"type": "user", "role": "reader", "emailAddress": "gone@example.com", "deleted": True},
            {"type": "user", "role": "reader", "emailAddress": "odd:name@example.com"},
            {"type": "user", "role": "bogus", "emailAddress": "who@example.com"},
        ]
    )
    assert acl == Acl.of(
        ["user:ada@example.com", "group:eng@example.com", "group:domain-example.com"]
    )
    assert not acl.public


def test_without_visible_permissions_only_the_owners_may_read(drive: FakeDrive) -> None:
    drive.put("d1", "Plan", html("plan"))  # the account cannot share it: no `permissions`
    (doc,) = upserts(run(make(drive), None)[0]).values()
    assert doc.acl == Acl.of(["user:owner@example.com"])


def test_shared_drive_permissions_are_listed_per_file(drive: FakeDrive) -> None:
    drive.put("d1", "Ledger", html("ledger"), drive_id="0Asd", parents=["0Asd"])
    drive.put("d2", "Mine", html("not in the drive"), permissions=[])
    drive.shared_permissions["d1"] = fixture("permissions_list.json")["permissions"]
    drive.page_size = 2
    changes, _ = run(make(drive, shared_drive_id="0Asd"), None)
    (doc,) = upserts(changes).values()
    assert doc.acl == Acl.of(["group:finance@example.com", "user:auditor@example.org"])
    assert doc.metadata["drive_id"] == "0Asd"
    listed = next(p for path, p in drive.log if path == "/drive/v3/files")
    assert (listed["corpora"], listed["driveId"], listed["includeItemsFromAllDrives"]) == (
        "drive",
        "0Asd",
        "true",
    )
    pages = [p.get("pageToken") for path, p in drive.log if path.endswith("/permissions")]
    assert pages == [None, "2"]
    start = next(p for path, p in drive.log if path.endswith("/startPageToken"))
    assert start["driveId"] == "0Asd"


# -- folder scope -------------------------------------------------------------------------------


def test_a_folder_tree_is_walked_and_moves_are_followed(drive: FakeDrive) -> None:
    drive.put("top", "Top", b"", mime=FOLDER, parents=["root"])
    drive.put("sub", "Sub", b"", mime=FOLDER, parents=["top"])
    drive.put("a", "A", html("in top"), parents=["top"], permissions=[])
    drive.put("b", "B", html("in sub"), parents=["sub"], permissions=[])
    drive.put("c", "C", html("elsewhere"), parents=["root"], permissions=[])
    connector = make(drive, folder_id="top")
    connector.check()
    changes, checkpoint = run(connector, None)
    assert set(upserts(changes)) == {"a", "b"}
    assert set(checkpoint.folders) == {"top", "sub"}
    # A file moved out of the tree is deleted; one moved in is added.
    drive.update("a", parents=["root"])
    drive.update("c", parents=["sub"])
    changes, checkpoint = run(make(drive, folder_id="top"), checkpoint)
    assert deletes(changes) == {"a"} and set(upserts(changes)) == {"c"}
    # A folder moved out takes its files along: the tree is listed again.
    drive.update("sub", parents=["root"])
    changes, checkpoint = run(make(drive, folder_id="top"), checkpoint)
    assert deletes(changes) == {"b", "c"} and checkpoint.folders == ["top"]


def test_check_refuses_a_missing_folder(drive: FakeDrive) -> None:
    with pytest.raises(ConfigError, match="folder_id"):
        make(drive, folder_id="nope").check()


# -- failures -----------------------------------------------------------------------------------


def test_an_export_over_the_limit_is_too_large(drive: FakeDrive) -> None:
    drive.put("big", "Huge sheet", b"", mime=SHEET, permissions=[])
    drive.put("ok", "Fine", html("fine"), permissions=[])
    drive.file_faults["big"] = "error_export_size.json"
    changes, checkpoint = run(make(drive), None)
    assert set(upserts(changes)) == {"ok"}
    assert failures(changes)["big"].reason == "too_large"
    assert "big" in checkpoint.files  # failing now is not deleted


def test_a_failing_download_surfaces_when_read(drive: FakeDrive) -> None:
    drive.put("f1", "a.pdf", b"%PDF", mime="application/pdf", permissions=[])
    drive.file_faults["f1"] = "error_file_forbidden.json"
    (doc,) = upserts(run(make(drive), None)[0]).values()
    with pytest.raises(OSError, match="forbidden"):
        doc.read()


# -- retries and credentials -----------------------------------------------------------------------


def test_429_with_retry_after_then_success(drive: FakeDrive) -> None:
    drive.put("d1", "Plan", html("plan"), permissions=[])
    drive.faults.append(Fault("/drive/v3/files$", 429, {}, {"Retry-After": "7"}))
    sleeps = Sleeps()
    changes, _ = run(make(drive, sleep=sleeps), None)
    assert set(upserts(changes)) == {"d1"}
    assert sleeps == [7.0]


def test_500_then_success(drive: FakeDrive) -> None:
    drive.put("d1", "Plan", html("plan"), permissions=[])
    drive.faults.append(Fault("/export$", 500, {"error": {"code": 500}}))
    sleeps = Sleeps()
    changes, _ = run(make(drive, sleep=sleeps), None)
    assert set(upserts(changes)) == {"d1"} and not failures(changes)
    assert len(sleeps) == 1


def test_403_user_rate_limit_is_retried_not_taken_for_bad_credentials(drive: FakeDrive) -> None:
    drive.put("d1", "Plan", html("plan"), permissions=[])
    drive.faults.append(Fault("/drive/v3/files$", 403, fixture("error_user_rate_limit.json")))
    sleeps = Sleeps()
    changes, _ = run(make(drive, sleep=sleeps), None)
    assert set(upserts(changes)) == {"d1"}
    assert len(sleeps) == 1


def test_bad_credentials_are_a_clear_error(
    drive: FakeDrive, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "ya29.revoked")
    with pytest.raises(CredentialError, match="401"):
        make(drive).check()
    with pytest.raises(CredentialError, match="401"):
        run(make(drive), None)
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        make(drive).check()


def test_the_config_refuses_plain_credentials() -> None:
    with pytest.raises(ValueError, match="reference"):
        GoogleDriveConfig.model_validate({"token": "ya29.plain"})
    with pytest.raises(ValueError, match="exactly one"):
        GoogleDriveConfig.model_validate({})
    with pytest.raises(ValueError, match="exactly one"):
        GoogleDriveConfig.model_validate(
            {"token": {"env": "A"}, "service_account_key": {"file": "/k.json"}}
        )
    with pytest.raises(ValueError, match="subject"):
        GoogleDriveConfig.model_validate({"token": {"env": "A"}, "subject": "ada@example.com"})
    with pytest.raises(ValueError, match="user:<name>"):
        GoogleDriveConfig.model_validate({"token": {"env": "A"}, "groups": {"x": ["ada"]}})


# -- service account -----------------------------------------------------------------------------


def test_a_service_account_key_is_exchanged_for_a_token(drive: FakeDrive, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    key_file = tmp_path / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "example",
                "private_key_id": "abc123",
                "private_key": pem,
                "client_email": "sync@example.iam.gserviceaccount.com",
                "client_id": "1234567890",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    grants: list[dict[str, Any]] = []
    issued = [GOOD_TOKEN, "ya29.second"]
    api = drive.transport()

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.host != "oauth.test":
            return api.handle_request(request)
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        head, claims, signature = form["assertion"].split(".")

        def unb64(part: str) -> bytes:
            return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

        private.public_key().verify(
            unb64(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        assert json.loads(unb64(head)) == {"alg": "RS256", "typ": "JWT"}
        grants.append(json.loads(unb64(claims)))
        token = issued[len(grants) - 1]
        return httpx.Response(
            200, json={"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        )

    config = GoogleDriveConfig.model_validate(
        {
            "base_url": "https://drive.test",
            "service_account_key": {"file": str(key_file)},
            "subject": "admin@example.com",
            "token_url": "https://oauth.test/token",
            "directory": True,
        }
    )
    drive.put("d1", "Plan", html("plan"), permissions=[])
    connector = GoogleDriveConnector(config, transport=httpx.MockTransport(respond))
    connector.check()
    assert set(upserts(run(connector, None)[0])) == {"d1"}
    assert len(grants) == 1  # cached for the token's lifetime
    claims = grants[0]
    assert claims["iss"] == "sync@example.iam.gserviceaccount.com"
    assert claims["sub"] == "admin@example.com"
    assert claims["aud"] == "https://oauth.test/token"
    assert claims["scope"].split() == [
        "https://www.googleapis.com/auth/drive.readonly",
        "https://www.googleapis.com/auth/admin.directory.group.readonly",
    ]
    assert claims["exp"] - claims["iat"] == 3600
    # The token is revoked before it expires: a 401 gets one new grant, then goes through.
    drive.token = "ya29.second"
    connector.check()
    assert len(grants) == 2
    connector.close()


def test_a_bad_service_account_key_is_a_config_error(drive: FakeDrive, tmp_path: Path) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text('{"client_email": "x@example.com", "private_key": "not a key"}')
    config = GoogleDriveConfig.model_validate(
        {"service_account_key": {"file": str(key_file)}, "base_url": "https://drive.test"}
    )
    with pytest.raises(ConfigError, match="PEM"):
        GoogleDriveConnector(config, transport=drive.transport()).check()


# -- groups -------------------------------------------------------------------------------------


def test_memberships_from_config_and_the_directory(drive: FakeDrive) -> None:
    drive.groups = {
        "eng@example.com": fixture("members_list.json")["members"],
        "all-staff@example.com": [
            {"kind": "admin#directory#member", "id": "C0xx", "role": "MEMBER", "type": "CUSTOMER"}
        ],
        "platform@example.com": [
            {"kind": "admin#directory#member", "email": "cy@example.com", "type": "USER"}
        ],
    }
    drive.users = fixture("users_list.json")["users"]
    drive.page_size = 1
    connector = make(
        drive,
        directory=True,
        domain="Example.com",
        groups={"contractors": ["user:zed@partner.org"]},
    )
    pairs = set(connector.memberships())
    assert pairs == {
        ("user:zed@partner.org", "group:contractors"),
        ("user:ada@example.com", "group:eng@example.com"),
        ("group:platform@example.com", "group:eng@example.com"),
        ("group:domain-example.com", "group:all-staff@example.com"),
        ("user:cy@example.com", "group:platform@example.com"),
        ("user:ada@example.com", "group:domain-example.com"),
    }
    groups_call = next(p for path, p in drive.log if path == "/admin/directory/v1/groups")
    assert groups_call["domain"] == "example.com"


def test_without_the_directory_only_config_groups(drive: FakeDrive) -> None:
    connector = make(drive, groups={"eng@example.com": ["user:ada@example.com"]})
    assert list(connector.memberships()) == [("user:ada@example.com", "group:eng@example.com")]
    assert drive.log == []


# -- docs ---------------------------------------------------------------------------------------


def test_every_config_key_is_documented() -> None:
    readme = (Path(__file__).parents[2] / "connectors" / "google_drive" / "README.md").read_text()
    missing = [k for k in GoogleDriveConfig.model_fields if f"`{k}`" not in readme]
    assert not missing


# -- end to end: the real CLI against a real local HTTP server ------------------------------------

BIN = Path(sys.executable).parent / "context-server"


@pytest.mark.model
def test_cli_sync_and_search_against_a_local_drive(
    httpserver: Any, tmp_path: Path, drive: FakeDrive
) -> None:
    from werkzeug import Request, Response

    drive.put(
        "1budget",
        "Budget 2027",
        html("The marketing budget for 2027 is 42,000 EUR, approved in October."),
        permissions=[perm_user("alice@example.com", "owner")],
    )
    drive.put(
        "1lunch",
        "Canteen",
        html("The canteen in Lyon serves lunch from noon; coffee is free."),
        permissions=[perm_group("staff@example.com")],
    )
    drive.put(
        "1secret",
        "Merger",
        html("Confidential merger talks are planned for the marketing budget review."),
        permissions=[perm_user("dana@example.com", "owner")],
    )

    def handler(request: Request) -> Response:
        status, headers, body = drive.handle(
            request.method,
            request.path,
            dict(request.args),
            {k.lower(): v for k, v in request.headers.items()},
        )
        return Response(body, status=status, headers=headers)

    httpserver.expect_request(re.compile(".*")).respond_with_handler(handler)
    base_url = httpserver.url_for("/").rstrip("/")
    (tmp_path / "drive.yaml").write_text(
        "name: gdrive\nkind: google_drive\nconfig:\n"
        f"  base_url: {base_url}\n"
        f"  token: {{env: {TOKEN_ENV}}}\n"
        "  groups:\n    staff@example.com: [user:bob@example.com, user:alice@example.com]\n"
    )
    (tmp_path / "principals.yaml").write_text(
        "users: [user:alice@example.com, user:bob@example.com, user:dana@example.com]\n"
    )
    env = dict(os.environ)
    env.update(CONTEXT_SERVER_HOME=str(tmp_path / "home"), **{TOKEN_ENV: GOOD_TOKEN})
    env.pop("CONTEXT_SERVER_DATABASE_URL", None)
    env.pop("CONTEXT_SERVER_QDRANT_URL", None)

    def cli(*args: str) -> Any:
        proc = subprocess.run(
            [str(BIN), *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return json.loads(proc.stdout)

    cli("principals", "load", str(tmp_path / "principals.yaml"), "--json")
    cli("sources", "add", str(tmp_path / "drive.yaml"), "--json")
    report = cli("sync", "gdrive", "--json")
    assert (report["upserted"], report["failed"]) == (3, 0), report

    def titles(who: str, query: str) -> list[str]:
        out = cli("search", query, "--as", who, "-k", "5", "--json")
        return [r["title"] for r in out["results"]]

    assert titles("user:alice@example.com", "marketing budget 2027")[0] == "Budget 2027"
    bob = titles("user:bob@example.com", "marketing budget 2027")
    assert "Budget 2027" not in bob and "Merger" not in bob
    assert "Canteen" in titles("user:bob@example.com", "where is lunch served")
    # An ACL-only change at the source reaches the index on the next (incremental) sync.
    drive.share("1budget", [perm_user("alice@example.com", "owner"), perm_user("bob@example.com")])
    again = cli("sync", "gdrive", "--json")
    assert again["chunks_embedded"] == 0
    assert "Budget 2027" in titles("user:bob@example.com", "marketing budget 2027")


def test_one_file_with_odd_metadata_is_a_failure_not_a_failed_sync(drive: FakeDrive) -> None:
    drive.put("ok", "Plan", html("the plan"), permissions=[perm_user("ada@example.com")])
    drive.put("odd", "Odd", html("odd"), permissions=[perm_user("ada@example.com")])
    drive.files["odd"]["lastModifyingUser"] = "editor@example.com"  # a string, not a user
    changes, checkpoint = run(make(drive), None)
    assert set(upserts(changes)) == {"ok"}
    assert failures(changes)["odd"].reason == "malformed"
    assert "odd" in checkpoint.files  # failed is not taken for deleted
    drive.put("odd", "Odd", html("odd, fixed"), permissions=[perm_user("ada@example.com")])
    again, _ = run(make(drive), checkpoint)
    assert "odd" in upserts(again) and not failures(again)
