"""indexing.parse on real files of every supported format, built in tmp_path at test time,
plus a robustness sweep over the shared example documents (skipped when they are absent)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from indexing.chunk import chunk
from indexing.parse import ParsedDocument, ParseFailure, parse

SENTENCE = "The zebra committee approved the harbour budget on Tuesday."
MB = 1_000_000


def _docx(path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading("Annual Report", level=1)
    d.add_paragraph("An opening paragraph that introduces the report to its readers.")
    d.add_heading("Finance", level=2)
    d.add_paragraph(SENTENCE)
    table = d.add_table(rows=2, cols=2)
    for r, row in enumerate([("Item", "Cost"), ("Harbour", "120")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    d.save(str(path))


def _pptx(path: Path) -> None:
    import pptx

    prs = pptx.Presentation()
    first = prs.slides.add_slide(prs.slide_layouts[1])
    first.shapes.title.text = "Overview"
    first.placeholders[1].text = "A first slide with an introduction to the topic."
    second = prs.slides.add_slide(prs.slide_layouts[1])
    second.shapes.title.text = "Decision"
    second.placeholders[1].text = SENTENCE
    prs.save(str(path))


def _xlsx(path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "Minutes"
    ws.append(["Date", "Note"])
    ws.append(["2024-01-02", SENTENCE])
    wb.save(str(path))


def _pdf(path: Path, *, text: str = SENTENCE, password: str | None = None) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "Introduction\n\nA first page that talks about other matters at length.")
    pdf.add_page()
    pdf.multi_cell(0, 8, text)
    pdf.set_y(-20)
    pdf.cell(0, 8, "2")  # a printed page number: page furniture, to be dropped
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    path.write_bytes(bytes(pdf.output()))


def _eml(path: Path) -> None:
    msg = EmailMessage()
    msg["Subject"] = "Harbour budget"
    msg["From"] = "clerk@example.com"
    msg["To"] = "council@example.com"
    msg.set_content(f"Hello all,\n\n{SENTENCE}\n\nRegards,\nThe clerk\n")
    path.write_bytes(bytes(msg))


def _csv(path: Path, delimiter: str = ",") -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter)
    writer.writerows([["id", "note"], ["1", SENTENCE], ["2", "Another row."]])
    path.write_text(buf.getvalue())


BUILDERS: dict[str, Callable[[Path], object]] = {
    "report.docx": _docx,
    "deck.pptx": _pptx,
    "sheet.xlsx": _xlsx,
    "paper.pdf": _pdf,
    "mail.eml": _eml,
    "table.csv": _csv,
    "table.tsv": lambda p: _csv(p, "\t"),
    "page.html": lambda p: p.write_text(
        f"<html><head><title>t</title></head><body><h1>News</h1><p>{SENTENCE}</p></body></html>"
    ),
    "notes.md": lambda p: p.write_text(f"# News\n\n{SENTENCE}\n\n- item one\n- item two\n"),
    "notes.txt": lambda p: p.write_text(f"News\n\n{SENTENCE}\n"),
    "notes.rst": lambda p: p.write_text(f"News\n====\n\n{SENTENCE}\n"),
    "data.json": lambda p: p.write_text(json.dumps({"title": "News", "body": SENTENCE})),
    "data.ndjson": lambda p: p.write_text(
        json.dumps({"n": 1, "body": SENTENCE}) + "\n" + json.dumps({"n": 2, "body": "x"}) + "\n"
    ),
    "data.xml": lambda p: p.write_text(f"<doc><title>News</title><body>{SENTENCE}</body></doc>"),
}


def _parse_file(path: Path, max_bytes: int = MB) -> ParsedDocument | ParseFailure:
    return parse(path.read_bytes(), filename=path.name, mime_type=None, max_bytes=max_bytes)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_supported_format_yields_the_sentence(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    BUILDERS[name](path)
    doc = _parse_file(path)
    assert isinstance(doc, ParsedDocument), doc
    assert SENTENCE in " ".join(doc.full_text.split())
    for el in doc.elements:
        assert doc.full_text[el.span_start : el.span_end] == el.text
    assert chunk(doc), "a parsed document yields at least one chunk"


def test_docx_heading_path(tmp_path: Path) -> None:
    _docx(tmp_path / "r.docx")
    doc = _parse_file(tmp_path / "r.docx")
    assert isinstance(doc, ParsedDocument)
    sentence = next(e for e in doc.elements if e.text == SENTENCE)
    assert sentence.section == ("Annual Report", "Finance")
    table = next(e for e in doc.elements if e.category == "Table")
    assert table.text == "Item | Cost\nHarbour | 120"


def test_pptx_slides_are_pages_with_their_own_titles(tmp_path: Path) -> None:
    _pptx(tmp_path / "d.pptx")
    doc = _parse_file(tmp_path / "d.pptx")
    assert isinstance(doc, ParsedDocument)
    sentence = next(e for e in doc.elements if e.text == SENTENCE)
    assert (sentence.page, sentence.section) == (2, ("Decision",))


def test_xlsx_sheet_name_roots_the_section(tmp_path: Path) -> None:
    _xlsx(tmp_path / "s.xlsx")
    doc = _parse_file(tmp_path / "s.xlsx")
    assert isinstance(doc, ParsedDocument)
    assert {e.section[0] for e in doc.elements} == {"Minutes"}


def test_pdf_pages_and_page_numbers(tmp_path: Path) -> None:
    _pdf(tmp_path / "p.pdf")
    doc = _parse_file(tmp_path / "p.pdf")
    assert isinstance(doc, ParsedDocument)
    sentence = next(e for e in doc.elements if SENTENCE in e.text)
    assert sentence.page == 2
    assert doc.elements[0].text == "Introduction" and doc.elements[0].category == "Title"
    assert all(e.text != "2" for e in doc.elements)


def test_encrypted_pdf(tmp_path: Path) -> None:
    _pdf(tmp_path / "e.pdf", password="secret")
    failure = _parse_file(tmp_path / "e.pdf")
    assert isinstance(failure, ParseFailure) and failure.reason == "encrypted", failure


def test_encrypted_docx(tmp_path: Path) -> None:
    ooxml = pytest.importorskip("msoffcrypto.format.ooxml")
    _docx(tmp_path / "plain.docx")
    out = io.BytesIO()
    with (tmp_path / "plain.docx").open("rb") as plain:
        ooxml.OOXMLFile(plain).encrypt("secret", out)
    result = parse(out.getvalue(), filename="locked.docx", mime_type=None, max_bytes=MB)
    assert isinstance(result, ParseFailure) and result.reason == "encrypted", result


def test_pdf_without_text_layer_is_empty(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")  # a drawing, as in a scan: no text objects
    result = parse(bytes(pdf.output()), filename="scan.pdf", mime_type=None, max_bytes=MB)
    assert isinstance(result, ParseFailure) and result.reason == "empty", result


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.docx").write_bytes(b"")
    result = _parse_file(tmp_path / "empty.docx")
    assert isinstance(result, ParseFailure) and result.reason == "empty"


def test_garbage_named_docx_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "fake.docx").write_bytes(bytes(range(256)) * 8)
    result = _parse_file(tmp_path / "fake.docx")
    assert isinstance(result, ParseFailure) and result.reason == "corrupt", result
    assert result.detail


def test_oversized_file(tmp_path: Path) -> None:
    _pdf(tmp_path / "big.pdf")
    size = (tmp_path / "big.pdf").stat().st_size
    result = _parse_file(tmp_path / "big.pdf", max_bytes=size - 1)
    assert isinstance(result, ParseFailure) and result.reason == "too_large"


# ------------------------------------------------------------------ shared example documents

SHARED_DOCS = Path(__file__).parents[2] / ".." / "shared" / "data" / "drive-example-docs"
SWEEP_MAX_BYTES = 8 * MB  # above every file there (largest: 3.6 MB)


@pytest.mark.shared_data
def test_shared_example_documents_never_raise() -> None:
    if not SHARED_DOCS.is_dir():
        pytest.skip(f"{SHARED_DOCS} is absent")
    outcomes: Counter[str] = Counter()
    timings: list[tuple[float, str, str]] = []
    started = time.perf_counter()
    for path in sorted(p for p in SHARED_DOCS.rglob("*") if p.is_file()):
        name = str(path.relative_to(SHARED_DOCS))
        if path.stat().st_size > SWEEP_MAX_BYTES:
            outcomes["skipped_too_large"] += 1
            continue
        t0 = time.perf_counter()
        result = _parse_file(path, max_bytes=SWEEP_MAX_BYTES)  # must not raise
        elapsed = time.perf_counter() - t0
        if isinstance(result, ParseFailure):
            assert result.reason in {
                "too_large",
                "empty",
                "encrypted",
                "corrupt",
                "unsupported_type",
            }
            assert result.detail, name
            outcomes[result.reason] += 1
            timings.append((elapsed, name, f"{result.reason}: {result.detail[:80]}"))
        else:
            assert result.elements and result.full_text.strip(), name
            outcomes["parsed"] += 1
            timings.append((elapsed, name, f"{len(result.elements)} elements"))
    total = time.perf_counter() - started

    print(f"\nparsed {sum(outcomes.values())} files in {total:.1f} s: {dict(outcomes)}")
    for elapsed, name, what in sorted(timings, reverse=True)[:8]:
        print(f"  {elapsed:6.2f} s  {name}  ({what})")
    for _, name, what in timings:
        if "corrupt" in what:
            print(f"  corrupt: {name}: {what}")
    assert outcomes["parsed"] > 150
    assert total < 180
