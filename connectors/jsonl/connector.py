"""The ``jsonl`` connector: one document per line of a JSON-lines export file.

Each line is parsed on its own: a line that is not a JSON object, has no usable id, repeats
an id or has a field of the wrong type is a ``Failure`` (``malformed``) and the sync goes
on. Ids listed in the previous checkpoint and absent now are yielded as deletes; a document
whose line is malformed (its id still readable) is not taken for deleted.

Every sync reads the whole file and yields every document: the pipeline skips those whose
content hash it already has, so an unchanged file costs one read and no embedding.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar
from urllib.parse import quote

from pydantic import Field, ValidationError

from connectors.base import (
    Acl,
    AclSpec,
    Change,
    Checkpoint,
    Delete,
    DocRef,
    Failure,
    SourceDocument,
    Upsert,
)
from connectors.errors import ConfigError
from connectors.jsonl.config import JsonlConfig

_BOM = b"\xef\xbb\xbf"
_TEXT_SEPARATOR = "\n\n"


class JsonlCheckpoint(Checkpoint):
    mtime_ns: int = 0
    size: int = 0
    documents: dict[str, str] = Field(
        default_factory=dict, description="Document id → content hash at the last sync."
    )


@dataclass(frozen=True)
class _Record:
    """One well-formed line."""

    external_id: str
    title: str
    text: str
    acl: Acl

    @property
    def data(self) -> bytes:
        return self.text.encode("utf-8")

    @property
    def content_hash(self) -> str:
        # The title is indexed with every chunk (it heads the embedded text), so a changed
        # title must change the hash or the pipeline would keep the stale one.
        digest = hashlib.sha256(self.title.encode("utf-8") + b"\x00" + self.data)
        return "sha256:" + digest.hexdigest()


def _reader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
    )


def _bounded_lines(f: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The file's lines, each read with at most ``limit`` bytes held; a longer line is
    drained in blocks of that size and given as ``None``."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or (line.endswith(b"\n") and len(line) == limit + 1):
            yield line
            continue
        while not line.endswith(b"\n"):
            line = f.readline(limit)
            if not line:
                break
        yield None


class JsonlConnector:
    kind: ClassVar[str] = "jsonl"
    config_model: ClassVar[type[JsonlConfig]] = JsonlConfig
    checkpoint_model: ClassVar[type[JsonlCheckpoint]] = JsonlCheckpoint

    def __init__(self, config: JsonlConfig) -> None:
        self.config = config
        self.path = config.path.expanduser().resolve()
        self.acl = config.acl.to_acl()

    def check(self) -> None:
        if not self.path.exists():
            raise ConfigError(f"jsonl file {self.path} does not exist")
        if not self.path.is_file():
            raise ConfigError(f"jsonl path {self.path} is not a file")
        try:
            # Opening is the real test: permission bits say little to root or over a share.
            with self.path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"jsonl file {self.path} is not readable: {exc}") from exc

    # -- lines ----------------------------------------------------------------------------

    def _parse(self, raw: bytes, line: int) -> _Record | Failure | None:
        """One line → a record, a failure, or ``None`` for a blank line."""
        if line == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if not raw.strip():
            return None
        where = f"line:{line}"
        try:
            obj: Any = json.loads(raw)
        except ValueError as exc:  # bad JSON and bad UTF-8 alike
            return Failure(where, "malformed", f"line {line}: not valid JSON: {exc}")
        if not isinstance(obj, dict):
            kind = type(obj).__name__
            return Failure(where, "malformed", f"line {line}: expected a JSON object, got {kind}")
        id_field = self.config.id_field
        raw_id = obj.get(id_field)
        # bool is an int to Python, but never an id anyone meant.
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or not str(raw_id).strip():
            return Failure(where, "malformed", f"line {line}: no usable id in field {id_field!r}")
        external_id = str(raw_id)

        def bad(detail: str) -> Failure:
            return Failure(external_id, "malformed", f"line {line}: {detail}")

        title = obj.get(self.config.title_field)
        if title is None:
            title = ""
        if not isinstance(title, str):
            return bad(f"field {self.config.title_field!r} is not a string")
        parts: list[str] = []
        for name in self.config.text_fields:
            value = obj.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                return bad(f"field {name!r} is not a string")
            if value.strip():
                parts.append(value.strip())
        acl = self.acl
        if self.config.acl_field is not None and obj.get(self.config.acl_field) is not None:
            try:
                acl = AclSpec.model_validate(obj[self.config.acl_field]).to_acl()
            except ValidationError as exc:
                # Never fall back to the source-wide ACL: it may be wider than the line's.
                return bad(f"bad {self.config.acl_field!r}: {_errors(exc)}")
        title = title.strip()
        # A line with a title and no text is still worth finding: its title is its text.
        text = _TEXT_SEPARATOR.join(parts) or title
        return _Record(external_id, title, text, acl)

    def _records(self) -> Iterator[_Record | Failure]:
        """Every non-blank line in file order; a repeated id is a failure of its line."""
        self.check()
        first_line: dict[str, int] = {}
        try:
            with self.path.open("rb") as f:
                for number, raw in enumerate(_bounded_lines(f, self.config.max_line_bytes), 1):
                    item = (
                        self._parse(raw, number)
                        if raw is not None
                        else Failure(
                            f"line:{number}",
                            "too_large",
                            f"line {number} is longer than max_line_bytes "
                            f"({self.config.max_line_bytes}); skipped",
                        )
                    )
                    if item is None:
                        continue
                    if isinstance(item, Failure) and item.external_id.startswith("line:"):
                        yield item
                        continue
                    external_id = item.external_id
                    if external_id in first_line:
                        yield Failure(
                            f"line:{number}",
                            "malformed",
                            f"line {number}: duplicate id {external_id!r} "
                            f"(first on line {first_line[external_id]})",
                        )
                        continue
                    first_line[external_id] = number
                    yield item
        except OSError as exc:  # the file vanished or the share dropped mid-read
            raise ConfigError(f"cannot read jsonl file {self.path}: {exc}") from exc

    def _url(self, external_id: str) -> str | None:
        if self.config.url_template is None:
            return None
        return self.config.url_template.format(id=quote(external_id))

    def _document(self, record: _Record) -> SourceDocument:
        data = record.data
        digest = record.content_hash
        return SourceDocument(
            external_id=record.external_id,
            title=record.title or record.external_id,
            acl=record.acl,
            content_hash=digest,
            read=_reader(data),
            filename=f"{record.external_id}.txt",
            url=self._url(record.external_id),
            mime_type="text/plain",
            size=len(data),
            version=digest,
        )

    # -- the contract ---------------------------------------------------------------------

    def sync(self, since: JsonlCheckpoint | None) -> Generator[Change, None, JsonlCheckpoint]:
        self.check()
        st = self.path.stat()
        previous = since.documents if since else {}
        documents: dict[str, str] = {}
        for item in self._records():
            if isinstance(item, Failure):
                if item.external_id in previous:
                    # Malformed for now is not deleted: keep what we knew until it is fixed.
                    documents.setdefault(item.external_id, previous[item.external_id])
                yield item
                continue
            document = self._document(item)
            documents[document.external_id] = document.content_hash
            yield Upsert(document)
        for external_id in sorted(previous.keys() - documents.keys()):
            yield Delete(external_id)
        return JsonlCheckpoint(mtime_ns=st.st_mtime_ns, size=st.st_size, documents=documents)

    def list_ids(self) -> Iterator[DocRef]:
        for item in self._records():
            if isinstance(item, _Record):
                yield DocRef(item.external_id, item.content_hash, item.acl)
