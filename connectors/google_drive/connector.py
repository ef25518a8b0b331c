"""The ``google_drive`` connector: Drive files with their sharing, via the changes API.

A full sync (no checkpoint) takes a changes start token first, then lists the scope with
``files.list`` (the whole corpus, one shared drive, or a folder tree walked breadth-first);
an incremental sync reads ``changes.list`` from the stored token until
``newStartPageToken``, which becomes the next checkpoint. A change with ``removed`` or a
trashed file is a ``Delete``.

Content: Google Docs, Sheets and Slides are exported (HTML or plain text, CSV, plain text);
other files are downloaded (``alt=media``) when the pipeline reads them.

``content_hash`` covers the title and the content, never the permissions: Drive bumps a
file's ``version`` on a sharing change, so ``version`` is useless here.

- uploaded files: Drive's ``md5Checksum`` of the bytes, known from the listing;
- Google-native files have no checksum: they are exported during the sync and the export
  hashed. The checkpoint remembers ``modifiedTime`` and that hash per file, and a file whose
  ``modifiedTime`` has not moved reuses it (an edit always moves ``modifiedTime``; a sharing
  change at worst costs one export that hashes the same). The export is kept for ``read``,
  so a changed document is downloaded once.

Imports: stdlib, httpx, connectors.
"""

from __future__ import annotations

import hashlib
import mimetypes
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
from pydantic import Field

from connectors.base import (
    MALFORMED_ITEM,
    Acl,
    Change,
    Checkpoint,
    Delete,
    DocRef,
    Failure,
    SourceDocument,
    Upsert,
    malformed,
)
from connectors.errors import ConfigError, SourceError
from connectors.google_drive.acl import (
    acl_from_owners,
    acl_from_permissions,
    domain_group,
    principal,
)
from connectors.google_drive.auth import BearerAuth, ServiceAccountTokens, StaticToken, TokenSource
from connectors.google_drive.client import FileError, GoogleApi
from connectors.google_drive.config import GoogleDriveConfig

DRIVE = "/drive/v3"
DIRECTORY = "/admin/directory/v1"
FOLDER = "application/vnd.google-apps.folder"
NATIVE = "application/vnd.google-apps."

PERMISSION_FIELDS = "type,role,emailAddress,domain,allowFileDiscovery,deleted"
FILE_FIELDS = (
    "id,name,mimeType,modifiedTime,md5Checksum,version,webViewLink,"
    "owners(emailAddress),lastModifyingUser(emailAddress),"
    f"permissions({PERMISSION_FIELDS}),parents,size,trashed,driveId"
)
#: Google-native types that export to text: MIME type → (export MIME type, file extension).
EXPORTS: dict[str, tuple[str, str]] = {
    "application/vnd.google-apps.spreadsheet": ("text/csv", ".csv"),
    "application/vnd.google-apps.presentation": ("text/plain", ".txt"),
}
DOC = "application/vnd.google-apps.document"

SCOPE_DRIVE = "https://www.googleapis.com/auth/drive.readonly"
SCOPE_GROUPS = "https://www.googleapis.com/auth/admin.directory.group.readonly"
SCOPE_USERS = "https://www.googleapis.com/auth/admin.directory.user.readonly"


class GoogleDriveCheckpoint(Checkpoint):
    page_token: str = Field(description="The changes API token to read from next.")
    folders: list[str] = Field(
        default_factory=list, description="Folder ids inside `folder_id`'s tree, when set."
    )
    files: dict[str, str] = Field(
        default_factory=dict,
        description="Indexed file id → '<modifiedTime> <sha256>' of its last export "
        "(empty for files Drive checksums itself).",
    )


def _fixed(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _safe_name(name: str) -> str:
    return name.replace("/", "_").replace("\\", "_").strip() or "untitled"


class GoogleDriveConnector:
    kind: ClassVar[str] = "google_drive"
    config_model: ClassVar[type[GoogleDriveConfig]] = GoogleDriveConfig
    checkpoint_model: ClassVar[type[GoogleDriveCheckpoint]] = GoogleDriveCheckpoint

    def __init__(
        self,
        config: GoogleDriveConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        tokens: TokenSource
        if config.service_account_key is not None:
            scopes = [SCOPE_DRIVE]
            if config.directory:
                scopes.append(SCOPE_GROUPS)
                if config.domain:
                    scopes.append(SCOPE_USERS)
            tokens = ServiceAccountTokens(
                config.service_account_key,
                token_url=config.token_url,
                scopes=scopes,
                subject=config.subject,
                transport=transport,
                clock=clock,
            )
        else:
            assert config.token is not None  # the config demands one of the two
            tokens = StaticToken(config.token)
        self._tokens = tokens
        self.api = GoogleApi(config.base_url, BearerAuth(tokens), transport=transport, sleep=sleep)

    def close(self) -> None:
        self.api.close()
        if isinstance(self._tokens, ServiceAccountTokens):
            self._tokens.close()

    # -- check ----------------------------------------------------------------------------

    def check(self) -> None:
        self.api.get_json(f"{DRIVE}/about", {"fields": "user"})
        drive = self.config.shared_drive_id
        if drive is not None:
            response = self.api.get(
                f"{DRIVE}/drives/{quote(drive, safe='')}",
                {"fields": "id,name"},
                allow=frozenset({404}),
            )
            if response.status_code == 404:
                raise ConfigError(f"shared drive {drive!r} does not exist or is not visible")
        folder = self.config.folder_id
        if folder is not None:
            response = self.api.get(
                f"{DRIVE}/files/{quote(folder, safe='')}",
                {"fields": "id,mimeType,trashed", "supportsAllDrives": "true"},
                allow=frozenset({404}),
            )
            meta = response.json() if response.status_code == 200 else None
            if not isinstance(meta, dict) or meta.get("mimeType") != FOLDER:
                raise ConfigError(f"folder_id {folder!r} is not a folder these credentials see")

    # -- listing --------------------------------------------------------------------------

    def _scope_params(self) -> dict[str, str]:
        params = {"supportsAllDrives": "true"}
        if self.config.shared_drive_id:
            params["driveId"] = self.config.shared_drive_id
            params["includeItemsFromAllDrives"] = "true"
        elif self.config.folder_id:
            params["includeItemsFromAllDrives"] = "true"
        return params

    def _list(self, query: str) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {
            **self._scope_params(),
            "q": query,
            "fields": f"nextPageToken,files({FILE_FIELDS})",
            "pageSize": 1000,
        }
        if self.config.shared_drive_id:
            params["corpora"] = "drive"
        return self.api.pages(f"{DRIVE}/files", params, "files")

    def _listing(self, folders: set[str]) -> Iterator[dict[str, Any]]:
        """Every non-folder file in scope; fills ``folders`` with a folder tree's ids."""
        root = self.config.folder_id
        if root is None:
            for file in self._list("trashed = false"):
                if file.get("mimeType") != FOLDER:
                    yield file
            return
        queue = deque([root])
        folders.add(root)
        while queue:
            parent = queue.popleft()
            escaped = parent.replace("\\", "\\\\").replace("'", "\\'")
            for file in self._list(f"'{escaped}' in parents and trashed = false"):
                file_id = file.get("id")
                if file.get("mimeType") == FOLDER:
                    if isinstance(file_id, str) and file_id not in folders:
                        folders.add(file_id)
                        queue.append(file_id)
                else:
                    yield file

    def _start_token(self) -> str:
        params = {"supportsAllDrives": "true"}
        if self.config.shared_drive_id:
            params["driveId"] = self.config.shared_drive_id
        token = self.api.get_json(f"{DRIVE}/changes/startPageToken", params).get("startPageToken")
        if not isinstance(token, str) or not token:
            raise ConfigError("Drive returned no changes startPageToken")
        return token

    # -- one file -------------------------------------------------------------------------

    def _wanted(self, file: dict[str, Any]) -> bool:
        mime = str(file.get("mimeType", ""))
        if not isinstance(file.get("id"), str) or mime == FOLDER:
            return False
        if mime.startswith(NATIVE):
            return mime == DOC or mime in EXPORTS  # forms, drawings, shortcuts: no text
        return not any(fnmatchcase(mime, pattern) for pattern in self.config.exclude_mime_types)

    def _acl(self, file: dict[str, Any]) -> Acl:
        if file.get("driveId"):
            # Shared drive items never carry `permissions` in a listing (Drive documents
            # this); their list, inherited drive membership included, is fetched per file.
            params = {
                "supportsAllDrives": "true",
                "fields": f"nextPageToken,permissions({PERMISSION_FIELDS})",
                "pageSize": 100,
            }
            path = f"{DRIVE}/files/{quote(file['id'], safe='')}/permissions"
            return acl_from_permissions(self.api.file_pages(path, params, "permissions"))
        permissions = file.get("permissions")
        if isinstance(permissions, list):
            return acl_from_permissions(p for p in permissions if isinstance(p, dict))
        # Drive shows permissions only to those who may share the file: with none, its
        # owners are all we know may read it.
        return acl_from_owners(o for o in file.get("owners") or [] if isinstance(o, dict))

    def _export(self, file: dict[str, Any]) -> tuple[str, str, str]:
        """``(path, export MIME type or "", file extension)`` to fetch the content."""
        file_id = quote(file["id"], safe="")
        mime = str(file.get("mimeType", ""))
        if mime == DOC:
            doc_format = self.config.docs_format
            ext = ".html" if doc_format == "text/html" else ".txt"
            return f"{DRIVE}/files/{file_id}/export", doc_format, ext
        if mime in EXPORTS:
            fmt, ext = EXPORTS[mime]
            return f"{DRIVE}/files/{file_id}/export", fmt, ext
        return f"{DRIVE}/files/{file_id}", "", ""

    def _fetch(self, path: str, export_mime: str) -> bytes:
        if export_mime:
            return self.api.content(path, {"mimeType": export_mime})
        return self.api.content(path, {"alt": "media", "supportsAllDrives": "true"})

    def _document(
        self, file: dict[str, Any], memo: dict[str, str], files: dict[str, str]
    ) -> Change | None:
        """One listed file → an ``Upsert`` or a ``Failure``; ``None`` when not ingested.
        Records the file (and its export memo) in ``files``."""
        file_id: str = file["id"]
        name = str(file.get("name") or file_id)
        mime = str(file.get("mimeType", ""))
        modified = str(file.get("modifiedTime", ""))
        path, export_mime, ext = self._export(file)
        try:
            acl = self._acl(file)
            data: bytes | None = None
            md5 = file.get("md5Checksum")
            if isinstance(md5, str) and md5 and not export_mime:
                digest, entry = f"md5:{md5}", ""
            else:
                previous = memo.get(file_id, "").split(" ", 1)
                if len(previous) == 2 and modified and previous[0] == modified:
                    digest = previous[1]
                else:
                    data = self._fetch(path, export_mime)
                    digest = "sha256:" + hashlib.sha256(data).hexdigest()
                entry = f"{modified} {digest}"
        except FileError as exc:
            # Unreadable for now is not deleted: keep what we knew, so that a later
            # removal is still propagated.
            files[file_id] = memo.get(file_id, "")
            return Failure(file_id, exc.reason, exc.detail)
        files[file_id] = entry
        content_hash = hashlib.sha256(f"{name}\x00{digest}".encode()).hexdigest()

        filename = _safe_name(name)
        if ext:
            filename += ext
        elif "." not in filename.rsplit("/", 1)[-1]:
            filename += mimetypes.guess_extension(mime) or ""
        size: int | None = len(data) if data is not None else None
        if size is None and not export_mime and str(file.get("size", "")).isdigit():
            size = int(file["size"])
        if data is not None:
            read = _fixed(data)
        else:

            def read() -> bytes:
                try:
                    return self._fetch(path, export_mime)
                except FileError as exc:
                    raise OSError(f"{exc.reason}: {exc.detail}") from exc

        owners = [o.get("emailAddress") for o in file.get("owners") or [] if isinstance(o, dict)]
        modifier = (file.get("lastModifyingUser") or {}).get("emailAddress")
        author = next((o for o in owners if isinstance(o, str)), None) or modifier
        metadata = {"mime_type": mime}
        if file.get("driveId"):
            metadata["drive_id"] = str(file["driveId"])
        return Upsert(
            SourceDocument(
                external_id=file_id,
                title=name,
                acl=acl,
                content_hash="sha256:" + content_hash,
                read=read,
                filename=filename,
                url=file.get("webViewLink") if isinstance(file.get("webViewLink"), str) else None,
                mime_type=export_mime or mime or None,
                size=size,
                version=modified or None,
                updated_at=_timestamp(file.get("modifiedTime")),
                author=author if isinstance(author, str) else None,
                metadata=metadata,
            )
        )

    def _change(
        self, file: dict[str, Any], memo: dict[str, str], files: dict[str, str]
    ) -> Change | None:
        """:meth:`_document`, with a file whose metadata is not what Drive documents (a
        missing field, a bad permission or principal) as a ``malformed`` failure: one odd
        file never fails the sync. Its last state is kept, so it is not taken for deleted."""
        file_id = file.get("id")
        if not isinstance(file_id, str) or not file_id:
            return None  # nothing to name it by
        try:
            return self._document(file, memo, files)
        except MALFORMED_ITEM as exc:
            files[file_id] = memo.get(file_id, "")
            return malformed(file_id, exc, f"file {file.get('name')!r}")

    # -- the contract ---------------------------------------------------------------------

    def _relist(
        self, memo: dict[str, str], known: set[str]
    ) -> Generator[Change, None, tuple[set[str], dict[str, str]]]:
        """List the whole scope; ids in ``known`` not listed now are deleted."""
        folders: set[str] = set()
        files: dict[str, str] = {}
        for file in self._listing(folders):
            if self._wanted(file):
                change = self._change(file, memo, files)
                if change is not None:
                    yield change
        for gone in sorted(known - files.keys()):
            yield Delete(gone)
        return folders, files

    def sync(
        self, since: GoogleDriveCheckpoint | None
    ) -> Generator[Change, None, GoogleDriveCheckpoint]:
        if since is None:
            token = self._start_token()  # first: what changes while we list is seen next
            folders, files = yield from self._relist({}, set())
            return GoogleDriveCheckpoint(page_token=token, folders=sorted(folders), files=files)

        files = dict(since.files)
        folders = set(since.folders)
        scoped = self.config.folder_id is not None
        relist = False
        params: dict[str, Any] = {
            **self._scope_params(),
            "includeRemoved": "true",
            "pageSize": 1000,
            "fields": f"nextPageToken,newStartPageToken,changes(changeType,removed,fileId,"
            f"file({FILE_FIELDS}))",
        }
        token = since.page_token
        while True:
            response = self.api.get(
                f"{DRIVE}/changes", {**params, "pageToken": token}, allow=frozenset({400, 404})
            )
            if response.status_code in (400, 404) and token == since.page_token:
                # The stored token expired or was never valid: list everything again,
                # deleting what is gone, and read changes from a fresh token next time.
                token = self._start_token()
                folders, files = yield from self._relist(files, set(files))
                return GoogleDriveCheckpoint(page_token=token, folders=sorted(folders), files=files)
            if response.status_code != 200:
                raise SourceError(
                    f"Drive rejected a changes page token mid-listing ({response.status_code}); "
                    "the next sync reads from the last checkpoint again"
                )
            body = response.json()
            for change in body.get("changes") or []:
                if not isinstance(change, dict) or change.get("changeType", "file") != "file":
                    continue
                file_id = change.get("fileId")
                file = change.get("file")
                if not isinstance(file_id, str):
                    continue
                gone = bool(change.get("removed")) or not isinstance(file, dict)
                if gone or (isinstance(file, dict) and file.get("trashed")):
                    if file_id in folders:
                        relist = True
                    if file_id in files:
                        del files[file_id]
                        yield Delete(file_id)
                    continue
                assert isinstance(file, dict)
                file.setdefault("id", file_id)
                parents = {p for p in file.get("parents") or [] if isinstance(p, str)}
                in_scope = not scoped or bool(parents & folders)
                if file.get("mimeType") == FOLDER:
                    # A folder moved into, out of or within the tree: its contents have no
                    # change entries of their own, so the tree is listed again.
                    if scoped and (file_id in folders or in_scope):
                        relist = True
                    continue
                if in_scope and self._wanted(file):
                    result = self._change(file, files, files)
                    if result is not None:
                        yield result
                elif file_id in files:
                    del files[file_id]
                    yield Delete(file_id)
            next_token = body.get("nextPageToken")
            if isinstance(next_token, str) and next_token:
                token = next_token
                continue
            new_start = body.get("newStartPageToken")
            if not isinstance(new_start, str) or not new_start:
                raise ConfigError("Drive's changes list ended without a newStartPageToken")
            token = new_start
            break
        if relist:
            folders, files = yield from self._relist(files, set(files))
        return GoogleDriveCheckpoint(page_token=token, folders=sorted(folders), files=files)

    def list_ids(self) -> Iterator[DocRef]:
        for file in self._listing(set()):
            if not self._wanted(file):
                continue
            if not isinstance(file.get("id"), str):
                continue
            try:
                acl = self._acl(file)
            except FileError:
                continue
            except MALFORMED_ITEM:  # as sync(): a failure, not listed
                continue
            version = file.get("md5Checksum") or file.get("modifiedTime")
            yield DocRef(file["id"], str(version) if version else None, acl)

    # -- groups ---------------------------------------------------------------------------

    def memberships(self) -> Iterator[tuple[str, str]]:
        for group_name, members in self.config.groups.items():
            for listed in members:
                yield listed, f"group:{group_name}"
        if not self.config.directory:
            return
        domain = self.config.domain
        everyone = domain_group(domain) if domain else None
        scope: dict[str, Any] = {"domain": domain} if domain else {"customer": "my_customer"}
        groups = self.api.pages(f"{DIRECTORY}/groups", {**scope, "maxResults": 200}, "groups")
        for group in groups:
            name = principal("group", group.get("email"))
            if name is None:
                continue
            path = f"{DIRECTORY}/groups/{quote(str(group['email']), safe='@')}/members"
            for member in self.api.pages(path, {"maxResults": 200}, "members"):
                if member.get("status") == "SUSPENDED":
                    continue
                kind = member.get("type")
                who: str | None = None
                if kind == "USER":
                    who = principal("user", member.get("email"))
                elif kind == "GROUP":
                    who = principal("group", member.get("email"))
                elif kind == "CUSTOMER":  # "everyone in the organisation"
                    who = everyone
                if who is not None:
                    yield who, name
        if everyone is not None:
            users = self.api.pages(
                f"{DIRECTORY}/users",
                {
                    "domain": domain,
                    "maxResults": 500,
                    "fields": "nextPageToken,users(primaryEmail,suspended)",
                },
                "users",
            )
            for user in users:
                who = principal("user", user.get("primaryEmail"))
                if who is not None and not user.get("suspended"):
                    yield who, everyone
