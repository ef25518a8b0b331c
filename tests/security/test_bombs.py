"""Decompression bombs, huge and deeply nested documents, slow and memory-hungry parses.

Every bomb is built here, in tmp_path, at test time (never a large checked-in file), beside
good files. Each test asserts the recorded reason, that the good files are indexed, and
that the next sync over the same bytes does not parse the bomb again (``known_failures``).
Limits are set low through Settings so that the bombs stay small and quick to build.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from context_server.runtime import Runtime
from context_server.settings import Settings
from context_server.specs import SourceSpec
from indexing.embed import FakeHashEmbedder
from indexing.parse import ParsedDocument, ParseFailure, parse

MiB = 1 << 20
LIMITS: dict[str, Any] = {
    "max_inflated_bytes": 4 * MiB,
    "max_archive_members": 200,
    "max_email_parts": 50,
    "max_text_chars": 200_000,
    "parse_timeout_seconds": 3,
    "parse_memory_bytes": 512 * MiB,
}
GOOD = {
    "good/welcome.md": b"# Welcome\n\nThe office opens at nine. Lunch is at noon.",
    "good/travel.txt": b"Book trains for trips under four hours.",
}


def zeros_zip(members: dict[str, int | bytes], *, stored: dict[str, bytes] | None = None) -> bytes:
    """A zip whose members inflate to ``size`` zero bytes (streamed: never all in memory)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (stored or {}).items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_STORED)
        for name, size in members.items():
            if isinstance(size, bytes):
                zf.writestr(name, size)
                continue
            with zf.open(name, "w", force_zip64=True) as out:
                block = b"\0" * MiB
                for _ in range(size // MiB):
                    out.write(block)
    return buf.getvalue()


def make_runtime(tmp_path: Path, files: dict[str, bytes], **overrides: Any) -> Runtime:
    root = tmp_path / "share"
    for rel, data in {**GOOD, **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    settings = Settings(home=tmp_path / "home", **{**LIMITS, **overrides})
    rt = Runtime(settings, embedder=FakeHashEmbedder())
    rt.add_source(
        SourceSpec(
            name="drive",
            kind="filesystem",
            config={"root": str(root), "acl_rules": [{"glob": "**", "allow": ["group:all"]}]},
        )
    )
    return rt


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    made: list[Runtime] = []
    yield made
    for rt in made:
        rt.close()


def assert_recorded(rt: Runtime, bomb: str, reason: str) -> None:
    """The bomb is a recorded failure with ``reason``; the good files are indexed; the next
    sync over the same bytes reports it again without parsing it."""
    (first,) = rt.sync("drive")
    assert first.status == "completed"
    failures = {e: r for e, r, _ in first.report.failures}
    assert failures == {bomb: reason}, first.report.failures
    assert first.report.upserted == len(GOOD)
    assert {f["external_id"]: f["reason"] for f in rt.failures("drive")} == {bomb: reason}
    titles = {r.title for r in rt.search("office trains", "group:all", k=10)}
    assert {"welcome.md", "travel.txt"} <= titles
    (again,) = rt.sync("drive")
    assert again.report.known_failures == 1  # the bomb was not parsed again
    assert {e: r for e, r, _ in again.report.failures} == {bomb: reason}
    assert {f["external_id"]: f["reason"] for f in rt.failures("drive")} == {bomb: reason}


OOXML = {
    "docx": "word/document.xml",
    "xlsx": "xl/worksheets/sheet1.xml",
    "pptx": "ppt/slides/slide1.xml",
    "odt": "content.xml",
    "epub": "OEBPS/chapter1.xhtml",
    "zip": "data/zeros.bin",
}


@pytest.mark.parametrize("ext", sorted(OOXML))
def test_a_container_that_inflates_past_the_limit_is_too_large(
    tmp_path: Path, runtimes: list[Runtime], ext: str
) -> None:
    bomb = zeros_zip({OOXML[ext]: 16 * MiB, "[Content_Types].xml": b"<Types/>"})
    assert len(bomb) < 100_000  # a few KB on disk
    rt = make_runtime(tmp_path, {f"bomb.{ext}": bomb})
    runtimes.append(rt)
    assert_recorded(rt, f"bomb.{ext}", "too_large")


def test_a_nested_zip_bomb_is_too_large(tmp_path: Path, runtimes: list[Runtime]) -> None:
    inner = zeros_zip({"zeros.bin": 16 * MiB})
    outer = zeros_zip({"inner.zip": inner, "word/document.xml": b"<w:document/>"})
    rt = make_runtime(tmp_path, {"nested.docx": outer})
    runtimes.append(rt)
    assert_recorded(rt, "nested.docx", "too_large")


def test_a_zip_with_too_many_members_is_too_large(tmp_path: Path, runtimes: list[Runtime]) -> None:
    bomb = zeros_zip({f"word/m{i}.xml": b"" for i in range(500)})
    rt = make_runtime(tmp_path, {"many.docx": bomb})
    runtimes.append(rt)
    assert_recorded(rt, "many.docx", "too_large")


def test_a_zip_that_lies_about_its_sizes_is_not_inflated(tmp_path: Path) -> None:
    """Declared sizes are not trusted alone: a member whose header claims 10 bytes but that
    inflates to 16 MiB must not be read to its end."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", b"\0" * (16 * MiB))
    bomb = bytearray(buf.getvalue())
    cd = bytes(bomb).rfind(b"PK\x01\x02")  # the central directory entry of the member
    assert int.from_bytes(bomb[cd + 24 : cd + 28], "little") == 16 * MiB
    bomb[cd + 24 : cd + 28] = (10).to_bytes(4, "little")  # its declared uncompressed size
    result = parse(bytes(bomb), filename="liar.docx", mime_type=None, max_bytes=50 * MiB)
    assert isinstance(result, ParseFailure) and result.reason in ("corrupt", "too_large")


def test_an_unreadable_zip_is_corrupt(tmp_path: Path, runtimes: list[Runtime]) -> None:
    rt = make_runtime(tmp_path, {"broken.docx": b"PK\x03\x04" + b"\x00garbage" * 100})
    runtimes.append(rt)
    assert_recorded(rt, "broken.docx", "corrupt")


def test_an_email_with_too_many_parts_is_too_large(tmp_path: Path, runtimes: list[Runtime]) -> None:
    msg = EmailMessage()
    msg["Subject"] = "Many parts"
    msg.set_content("Hello")
    for i in range(200):
        msg.add_attachment(f"part {i}".encode(), maintype="application", subtype="octet-stream")
    rt = make_runtime(tmp_path, {"many.eml": msg.as_bytes()})
    runtimes.append(rt)
    assert_recorded(rt, "many.eml", "too_large")


def test_an_email_with_a_huge_part_is_too_large(tmp_path: Path, runtimes: list[Runtime]) -> None:
    msg = EmailMessage()
    msg["Subject"] = "Huge part"
    msg.set_content("Hello")
    msg.add_attachment(b"\0" * (6 * MiB), maintype="application", subtype="octet-stream")
    rt = make_runtime(tmp_path, {"huge.eml": msg.as_bytes()})
    runtimes.append(rt)
    assert_recorded(rt, "huge.eml", "too_large")


def test_a_text_past_the_text_limit_is_too_large_not_truncated(
    tmp_path: Path, runtimes: list[Runtime]
) -> None:
    text = ("A sentence about nothing in particular. " * 20 + "\n\n") * 400  # ~330 K chars
    rt = make_runtime(tmp_path, {"huge.txt": text.encode()})
    runtimes.append(rt)
    assert_recorded(rt, "huge.txt", "too_large")


@pytest.mark.parametrize("depth", [300, 10**6])
def test_deeply_nested_html_is_too_deep_not_empty(
    tmp_path: Path, runtimes: list[Runtime], depth: int
) -> None:
    html = b"<html><body><p>Intro.</p>" + b"<div>" * depth + b"lost"
    html += b"</div>" * depth + b"</body></html>"
    rt = make_runtime(tmp_path, {"deep.html": html})
    runtimes.append(rt)
    assert_recorded(rt, "deep.html", "too_deep")


def test_deeply_nested_markdown_is_too_deep_not_silently_cut(tmp_path: Path) -> None:
    md = b"# Title\n\n" + b"> " * 400 + b"the quoted text\n"
    result = parse(md, filename="deep.md", mime_type=None, max_bytes=50 * MiB)
    assert isinstance(result, ParseFailure) and result.reason == "too_deep", result


# -- parses that take too long or too much memory (a test-only parser, run in the child) ----


def slow_or_greedy_parse(
    data: bytes, *, filename: str, mime_type: str | None, max_bytes: int, **kw: Any
) -> ParsedDocument | ParseFailure:
    """Sleeps on SLOW, allocates without end on GREEDY, else parses normally."""
    if data.startswith(b"SLOW"):
        time.sleep(3600)
    if data.startswith(b"GREEDY"):
        hoard = []
        while True:
            hoard.append(bytearray(64 * MiB))
    return parse(data, filename=filename, mime_type=mime_type, max_bytes=max_bytes, **kw)


TEST_PARSER = f"{__name__}:slow_or_greedy_parse"


def test_a_parse_that_exceeds_the_time_limit_is_killed_and_recorded(
    tmp_path: Path, runtimes: list[Runtime]
) -> None:
    rt = make_runtime(
        tmp_path, {"slow.txt": b"SLOW text"}, parse_timeout_seconds=2, parse_target=TEST_PARSER
    )
    runtimes.append(rt)
    started = time.monotonic()
    assert_recorded(rt, "slow.txt", "timeout")
    assert time.monotonic() - started < 60


def test_a_parse_that_exceeds_the_memory_limit_is_recorded(
    tmp_path: Path, runtimes: list[Runtime]
) -> None:
    rt = make_runtime(tmp_path, {"greedy.txt": b"GREEDY text"}, parse_target=TEST_PARSER)
    runtimes.append(rt)
    assert_recorded(rt, "greedy.txt", "too_large")
