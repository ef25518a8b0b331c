"""indexing.parse on small in-memory documents: failure codes, sections, spans, text rules."""

from __future__ import annotations

import os
from email.message import EmailMessage

import pytest

from indexing.parse import (
    ELEMENT_SEPARATOR,
    ParsedDocument,
    ParseFailure,
    Part,
    assemble,
    parse,
)

MB = 1_000_000


def _ok(data: bytes, filename: str, mime_type: str | None = None) -> ParsedDocument:
    result = parse(data, filename=filename, mime_type=mime_type, max_bytes=MB)
    assert isinstance(result, ParsedDocument), result
    for el in result.elements:
        assert result.full_text[el.span_start : el.span_end] == el.text
    return result


def _failure(data: bytes, filename: str, mime_type: str | None = None) -> ParseFailure:
    result = parse(data, filename=filename, mime_type=mime_type, max_bytes=MB)
    assert isinstance(result, ParseFailure), result
    return result


def test_assemble_lays_out_spans_and_drops_blank_parts() -> None:
    doc = assemble(
        "txt", [Part(" Title ", "Title"), Part("  ", "Text"), Part("a\x00b", "NarrativeText")]
    )
    assert doc.full_text == f"Title{ELEMENT_SEPARATOR}ab"
    assert [(e.text, e.span_start, e.span_end) for e in doc.elements] == [
        ("Title", 0, 5),
        ("ab", 7, 9),
    ]


def test_too_large_is_checked_before_anything_else() -> None:
    result = parse(b"x" * 11, filename="a.txt", mime_type=None, max_bytes=10)
    assert result == ParseFailure("too_large", "11 bytes > max_bytes=10")


@pytest.mark.parametrize("data", [b"", b"  \n\t \n"])
def test_no_content_is_empty(data: bytes) -> None:
    assert _failure(data, "a.txt").reason == "empty"


def test_markdown_heading_path() -> None:
    md = b"# Guide\n\nIntro text here.\n\n## Setup\n\nRun the installer first.\n\n# Other\n\nEnd."
    doc = _ok(md, "guide.md")
    assert doc.filetype == "md"
    by_text = {e.text: e for e in doc.elements}
    assert by_text["Guide"].category == "Title"
    assert by_text["Intro text here."].section == ("Guide",)
    assert by_text["Run the installer first."].section == ("Guide", "Setup")
    assert by_text["End."].section == ("Other",)


def test_html_tables_keep_rows() -> None:
    html = (
        b"<html><body><h1>Prices</h1><table><tr><th>Item</th><th>Cost</th></tr>"
        b"<tr><td>Tea</td><td>3</td></tr></table></body></html>"
    )
    doc = _ok(html, "p.html")
    table = next(e for e in doc.elements if e.category == "Table")
    assert table.text == "Item | Cost\nTea | 3"
    assert table.section == ("Prices",)


def test_plain_text_paragraphs_are_classified_cheaply() -> None:
    text = (
        b"Release Notes\n\n"
        b"This release fixes the login bug. It also speeds up search.\n\n"
        b"* faster indexing\n"
        b"* fewer crashes\n\n"
        b"1. Upgrade the server.\n"
    )
    doc = _ok(text, "notes.txt")
    assert [(e.category, e.text) for e in doc.elements] == [
        ("Title", "Release Notes"),
        ("NarrativeText", "This release fixes the login bug. It also speeds up search."),
        ("ListItem", "faster indexing"),
        ("ListItem", "fewer crashes"),
        ("ListItem", "1. Upgrade the server."),
    ]
    assert all(e.section == ("Release Notes",) for e in doc.elements)


def test_utf16_text_is_decoded() -> None:
    doc = _ok("Grüße aus Köln, sagte sie.".encode("utf-16"), "g.txt")
    assert doc.full_text == "Grüße aus Köln, sagte sie."


def test_type_from_mime_when_name_has_no_extension() -> None:
    doc = _ok(b"# Heading\n\nBody text.", "README", mime_type="text/markdown")
    assert doc.filetype in {"md", "txt"}
    assert "Body text." in doc.full_text


def test_email_subject_leads() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Quarterly   numbers"
    msg["From"] = "ann@example.com"
    msg["To"] = "bob@example.com"
    msg.set_content("The numbers are attached and look good.\n")
    doc = _ok(bytes(msg), "q.eml")
    assert doc.filetype == "eml"
    assert doc.elements[0].text == "Quarterly numbers"
    assert doc.elements[0].category == "Title"
    assert "The numbers are attached and look good." in doc.full_text


def test_encrypted_email() -> None:
    data = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; boundary="b"; protocol="application/pgp-encrypted"'
        b"\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n"
        b"--b--\r\n"
    )
    assert _failure(data, "x.eml").reason == "encrypted"


def test_encrypted_office_container_is_sniffed() -> None:
    fake = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64 + "EncryptedPackage".encode("utf-16-le")
    )
    assert _failure(fake, "secret.docx").reason == "encrypted"


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"this is not a word document", "fake.docx"),
        (b"PK\x03\x04 definitely not a zip", "fake.pptx"),
        (b"%PDF-1.7 truncated", "broken.pdf"),
        (b"\x00\x01\x02garbage\xff" * 20, "fake.xlsx"),
        (b'{"unterminated": ', "bad.json"),
    ],
)
def test_broken_documents_are_corrupt(data: bytes, filename: str) -> None:
    failure = _failure(data, filename)
    assert failure.reason == "corrupt"
    assert ":" in failure.detail  # "ExceptionType: message"


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"{\\rtf1\\ansi Hello}", "a.rtf"),
        (b"PK\x05\x06" + bytes(18), "archive.zip"),  # a readable (empty) zip; garbage is corrupt
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "image.png"),
    ],
)
def test_unsupported_types(data: bytes, filename: str) -> None:
    assert _failure(data, filename).reason == "unsupported_type"


@pytest.mark.parametrize("ext", ["pdf", "docx", "pptx", "xlsx", "xls", "eml", "msg", "html", "csv"])
def test_random_bytes_never_raise(ext: str) -> None:
    for seed in range(5):
        data = os.urandom(64 + 97 * seed)
        result = parse(data, filename=f"r.{ext}", mime_type=None, max_bytes=MB)
        if isinstance(result, ParseFailure):
            assert result.reason in {"corrupt", "empty", "unsupported_type", "encrypted"}
