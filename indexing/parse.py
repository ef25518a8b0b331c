"""Parsing: document bytes → ordered, categorised text elements, or a ``ParseFailure`` value.

``parse(data, filename=…, mime_type=…, max_bytes=…, limits=…)`` never raises for a bad
document: it returns a :class:`ParsedDocument` (elements with category, page, heading path,
and their character spans in ``full_text``) or a :class:`ParseFailure` with a stable reason
code.

Bounds (:class:`ParseLimits`), checked cheaply *before* a parser sees the bytes where they
can be: a zip-based container (docx/pptx/xlsx/odt/epub/zip/…) is refused as ``too_large``
when its central directory declares more inflated bytes, members, nesting or a higher
compression ratio than allowed, and as ``corrupt`` when it cannot be read (Python's zipfile,
which every OOXML reader here uses, never inflates a member past its declared size: it stops
there and fails the CRC check, so declared sizes bound what is inflated). An email with
more parts or decoded bytes than allowed, a .msg with too many attachments: ``too_large``.
Markup nested deeper than libxml2's limit (256), which lxml would silently cut off:
``too_deep`` (never an ``empty`` that loses the text). Text longer than
``max_text_chars`` after parsing: ``too_large`` (recorded, not silently truncated). A parser
running out of memory (``MemoryError`` under the child's address-space limit):
``too_large``. Time and memory are bounded by running ``parse`` in a child process
(indexing/isolate.py).

How each type is read (type = content sniffing by ``unstructured`` + the file extension):

* md, html, docx, pptx, xlsx/xls, eml, msg, csv/tsv, json/ndjson, xml: ``unstructured``'s
  partitioner for that type. Email attachments are not parsed (``process_attachments=False``);
  the subject becomes the leading title.
* pdf: ``pypdfium2`` page text, split into paragraphs here. ``unstructured.partition.pdf``
  cannot even be imported without the ``[pdf]`` extra (it needs ``pi_heif``), and that extra
  brings torchvision, which breaks sentence-transformers. pdfium (a C library, installed by
  base unstructured) read the 619-page sample in 1.1 s; pdfminer.six took 40 s. No OCR: a
  scanned PDF without a text layer is ``empty``.
* txt (and rst/org, read as plain text since pandoc is absent): unstructured's decoding and
  paragraph grouping, then cheap regex classification. ``partition_text`` classifies every
  paragraph with spaCy (28 KB/s: 83 s for a 3 MB book), three times slower than embedding it.
* doc, ppt, rtf, odt, epub, images, archives: ``unsupported_type`` (they need LibreOffice,
  pandoc or OCR, none of which are installed).

Imports: stdlib, unstructured, pypdfium2, lxml, oxmsg; indexing.offline.
"""

from __future__ import annotations

import email
import email.policy
import importlib
import io
import math
import re
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from indexing.offline import prepare_unstructured

if TYPE_CHECKING:
    from unstructured.file_utils.model import FileType

FailureReason = Literal[
    "too_large", "too_deep", "timeout", "empty", "encrypted", "corrupt", "unsupported_type"
]

MiB: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """What one document may cost to parse (the defaults are Settings' defaults)."""

    max_inflated_bytes: int = 256 * MiB  # declared uncompressed bytes of a container, in all
    max_compression_ratio: float = 200.0  # of one member inflating past 1 MiB
    max_archive_members: int = 10_000  # members of a container, nested ones included
    max_archive_depth: int = 2  # containers inside containers (a docx embedding an xlsx: 1)
    max_email_parts: int = 1_000  # MIME parts of an eml; attachments of a msg
    max_text_chars: int = 10_000_000  # extracted text (~2.5 M tokens, ~12 000 chunks)


DEFAULT_LIMITS: Final = ParseLimits()
_RATIO_FLOOR: Final = MiB  # small members may compress well (a sheet of empty cells)

_OBJECT_REPR = re.compile(r":?\s*<[\w.]+ object at 0x[0-9a-f]+>")

#: Separator between elements in ``ParsedDocument.full_text``.
ELEMENT_SEPARATOR: Final = "\n\n"


@dataclass(frozen=True, slots=True)
class Element:
    """One block of text: ``full_text[span_start:span_end] == text``."""

    text: str
    category: str  # unstructured's names: Title, NarrativeText, ListItem, Table, …
    page: int | None  # 1-based page (pdf, docx with rendered breaks), slide or sheet
    section: tuple[str, ...]  # heading path, outermost first; a Title's path ends with itself
    span_start: int
    span_end: int


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    filetype: str  # lower-case unstructured FileType name: "pdf", "docx", "md", …
    elements: tuple[Element, ...]
    full_text: str  # element texts joined by ELEMENT_SEPARATOR


@dataclass(frozen=True, slots=True)
class ParseFailure:
    reason: FailureReason
    detail: str = ""


class Part(NamedTuple):
    """An element before it has a span; :func:`assemble` lays parts out into full text."""

    text: str
    category: str
    page: int | None = None
    section: tuple[str, ...] = ()


def assemble(filetype: str, parts: Iterable[Part]) -> ParsedDocument:
    """Join parts (stripped, empty ones dropped) into a document with element spans."""
    elements: list[Element] = []
    pos = 0
    for part in parts:
        # NUL bytes are legal in extracted text but rejected by PostgreSQL text columns; a
        # lone surrogate (from a parser building text of code points) by every encoder.
        text = _clean(part.text).strip()
        if not text:
            continue
        if elements:
            pos += len(ELEMENT_SEPARATOR)
        elements.append(Element(text, part.category, part.page, part.section, pos, pos + len(text)))
        pos += len(text)
    full_text = ELEMENT_SEPARATOR.join(e.text for e in elements)
    return ParsedDocument(filetype, tuple(elements), full_text)


class _Raw(NamedTuple):
    text: str
    category: str
    page: int | None = None
    depth: int | None = None  # heading level of a Title (unstructured's category_depth)
    page_name: str | None = None  # sheet name (xlsx)


class _EncryptedError(Exception):
    pass


def _clean(text: str) -> str:
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> "?"
    return text


class _LimitError(Exception):
    """A bound of :class:`ParseLimits` was crossed: ``reason`` is too_large or too_deep."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: FailureReason = reason


def parse(
    data: bytes,
    *,
    filename: str,
    mime_type: str | None,
    max_bytes: int,
    limits: ParseLimits = DEFAULT_LIMITS,
) -> ParsedDocument | ParseFailure:
    """Parse one document. Returns a failure value for anything unreadable; never raises."""
    if len(data) > max_bytes:
        return ParseFailure("too_large", f"{len(data)} bytes > max_bytes={max_bytes}")
    if not data.strip():
        return ParseFailure("empty", "no content" if not data else "only whitespace")
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        refused = check_zip(data, limits)
        if refused is not None:
            return refused
    _LIMITS.value = limits
    # Encrypted OOXML (docx/pptx/xlsx) is an OLE container holding an "EncryptedPackage"
    # stream; sniff it before type detection, which would call it doc/msg or unknown.
    if data.startswith(_OLE_MAGIC) and "EncryptedPackage".encode("utf-16-le") in data:
        return ParseFailure("encrypted", "password-protected Office document")
    prepare_unstructured()  # outside the try: a broken installation is not a bad document
    try:
        name = _detect(data, filename, mime_type).name.lower()
        handler = _HANDLERS.get(name)
        if handler is None:
            return ParseFailure("unsupported_type", _unsupported_detail(name))
        if name in ("html", "xml"):
            _check_depth(data, name)
        doc = assemble(name, _sections(handler(data), page_scoped=name in _PAGE_SCOPED_TYPES))
    except _EncryptedError as exc:
        return ParseFailure("encrypted", str(exc))
    except _LimitError as exc:
        return ParseFailure(exc.reason, str(exc))
    except MemoryError:
        return ParseFailure("too_large", "parsing it needed more memory than the parse limit")
    except RecursionError:
        return ParseFailure("too_deep", "nested too deeply to parse (recursion limit)")
    except Exception as exc:  # a bad document must never escape: record it, go on
        # Without object reprs (<_io.BytesIO object at 0x…>): the same file, the same detail.
        detail = _OBJECT_REPR.sub("", f"{type(exc).__name__}: {exc}")[:2000].rstrip(" :")
        if isinstance(exc, ImportError):  # an optional dependency of this format is missing
            return ParseFailure("unsupported_type", detail)
        if "Excessive depth" in str(exc):  # libxml2's nesting limit (XML)
            return ParseFailure("too_deep", detail)
        if re.search(r"password|encrypt", str(exc), re.IGNORECASE):
            return ParseFailure("encrypted", detail)
        return ParseFailure("corrupt", detail)
    finally:
        _LIMITS.value = DEFAULT_LIMITS
    if len(doc.full_text) > limits.max_text_chars:
        return ParseFailure(
            "too_large",
            f"{len(doc.full_text)} characters of text > max_text_chars={limits.max_text_chars}",
        )
    if not doc.elements:
        hint = " (scanned? OCR is not available)" if name == "pdf" else ""
        return ParseFailure("empty", f"no extractable text in {name} document{hint}")
    return doc


# ------------------------------------------------------------------------------ bounds

# The limits of the parse under way (handlers deep in the call take no arguments).
_LIMITS: Final = threading.local()
_LIMITS.value = DEFAULT_LIMITS
_ARCHIVE_MAGIC: Final = (b"PK\x03\x04", b"PK\x05\x06")


def _limits() -> ParseLimits:
    limits: ParseLimits = getattr(_LIMITS, "value", DEFAULT_LIMITS)
    return limits


def check_zip(data: bytes, limits: ParseLimits) -> ParseFailure | None:
    """Refuse a zip container from its central directory alone (nothing inflated), except
    nested archives, which are read (up to their declared size, within the budget) and
    checked in turn. ``None``: within every limit."""
    try:
        _check_zip(data, limits, depth=0, budget=[limits.max_inflated_bytes, 0])
    except _LimitError as exc:
        return ParseFailure(exc.reason, str(exc))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        return ParseFailure("corrupt", f"unreadable zip container: {type(exc).__name__}: {exc}")
    except NotImplementedError as exc:  # an unknown compression method
        return ParseFailure("corrupt", f"unreadable zip container: {exc}")
    return None


def _check_zip(data: bytes, limits: ParseLimits, *, depth: int, budget: list[int]) -> None:
    """``budget``: [inflated bytes left, members seen], shared with nested archives."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = zf.infolist()
        budget[1] += len(members)
        if budget[1] > limits.max_archive_members:
            raise _LimitError(
                "too_large",
                f"more than {limits.max_archive_members} archive members (max_archive_members)",
            )
        for info in members:
            budget[0] -= info.file_size
            if budget[0] < 0:
                raise _LimitError(
                    "too_large",
                    f"its members inflate to more than {limits.max_inflated_bytes} bytes "
                    f"(max_inflated_bytes); {info.filename!r} alone to {info.file_size}",
                )
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > _RATIO_FLOOR and ratio > limits.max_compression_ratio:
                raise _LimitError(
                    "too_large",
                    f"{info.filename!r} inflates {ratio:.0f}x ({info.compress_size} -> "
                    f"{info.file_size} bytes; max_compression_ratio="
                    f"{limits.max_compression_ratio:g})",
                )
        for info in members:
            if info.is_dir() or info.file_size < 4:
                continue
            with zf.open(info) as member:
                head = member.read(4)
                if not head.startswith(_ARCHIVE_MAGIC):
                    continue
                if depth + 1 > limits.max_archive_depth:
                    raise _LimitError(
                        "too_large",
                        f"archives nested more than {limits.max_archive_depth} deep "
                        f"({info.filename!r}; max_archive_depth)",
                    )
                # zipfile stops at the declared size, already counted against the budget.
                inner = head + member.read(info.file_size)
            _check_zip(inner, limits, depth=depth + 1, budget=budget)


def _check_depth(data: bytes | str, name: str) -> None:
    """lxml (libxml2) stops at 256 levels of nesting and, for HTML, silently drops the rest:
    the text would be lost without a reason. Parse once (C, fast) and look at its log."""
    import lxml.etree
    import lxml.html

    parser = lxml.html.HTMLParser() if name != "xml" else lxml.etree.XMLParser()
    try:
        lxml.etree.fromstring(data.encode() if isinstance(data, str) else data, parser)
    except lxml.etree.XMLSyntaxError as exc:
        if "Excessive depth" in str(exc):
            raise _LimitError("too_deep", f"{name} nested deeper than 256 levels: {exc}") from exc
        return  # the partitioner reports its own errors
    except ValueError:
        return
    for entry in parser.error_log:
        if entry.type_name == "ERR_RESOURCE_LIMIT" or "Excessive depth" in entry.message:
            raise _LimitError("too_deep", f"{name} nested deeper than 256 levels ({entry.message})")


def _check_email_parts(data: bytes) -> None:
    """Parts and decoded size of an eml, counted before unstructured builds every part."""
    limits = _limits()
    # Each MIME part starts at a boundary line ("--boundary"): a cheap upper bound first.
    boundaries = len(re.findall(rb"(?m)^--[^\r\n]", data))
    if boundaries > 2 * limits.max_email_parts + 2:
        raise _LimitError(
            "too_large", f"more than {limits.max_email_parts} MIME parts (max_email_parts)"
        )
    message = email.message_from_bytes(data, policy=email.policy.default)
    decoded = 0
    for parts, part in enumerate(message.walk(), start=1):
        if parts > limits.max_email_parts:
            raise _LimitError(
                "too_large", f"more than {limits.max_email_parts} MIME parts (max_email_parts)"
            )
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            decoded += len(payload) if isinstance(payload, bytes) else 0
            if decoded > limits.max_inflated_bytes:
                raise _LimitError(
                    "too_large",
                    f"its parts decode to more than {limits.max_inflated_bytes} bytes "
                    "(max_inflated_bytes)",
                )


# ----------------------------------------------------------------------------- type detection

_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Container formats whose extension we trust over a "text"/"zip" sniff, so that garbage named
# .docx is reported as a corrupt docx rather than read as text.
_CONTAINER_EXTS: Final = {"pdf", "docx", "pptx", "xlsx", "xls", "msg", "doc", "ppt", "odt", "epub"}
_PAGE_SCOPED_TYPES: Final = {"pptx", "xlsx", "xls"}  # a slide/sheet starts a fresh heading path
_NEEDS: Final = {
    **dict.fromkeys(("doc", "ppt"), "LibreOffice"),
    **dict.fromkeys(("rtf", "odt", "epub"), "pandoc"),
    **dict.fromkeys(("bmp", "heic", "jpg", "png", "tiff", "webp"), "OCR"),
}


def _detect(data: bytes, filename: str, mime_type: str | None) -> FileType:
    from unstructured.file_utils.filetype import detect_filetype
    from unstructured.file_utils.model import FileType

    suffix = PurePath(filename).suffix.lower() if filename else ""
    by_ext = FileType.from_extension(suffix) if suffix else None
    sniffed = detect_filetype(
        file=io.BytesIO(data),
        metadata_file_path=filename or None,
        # a declared MIME type would override sniffing; use it only without a known extension
        content_type=None if by_ext else mime_type,
    )
    if by_ext and by_ext.name.lower() in _CONTAINER_EXTS and sniffed.name in {"TXT", "ZIP", "UNK"}:
        return by_ext
    if sniffed is FileType.UNK:
        return by_ext or FileType.from_mime_type(mime_type) or FileType.UNK
    return sniffed


def _unsupported_detail(name: str) -> str:
    if name in _NEEDS:
        return f"{name} documents need {_NEEDS[name]}, which is not installed"
    return f"{name} documents are not supported"


# ------------------------------------------------------------------ unstructured partitioners


def _from_elements(elements: Iterable[Any]) -> Iterator[_Raw]:
    for el in elements:
        category = str(el.category)
        # Page furniture repeats on every page; it would pollute every chunk it lands in.
        if category in {"PageBreak", "Header", "Footer", "PageNumber"}:
            continue
        md = el.metadata
        text = str(el.text)
        if category == "Table" and md.text_as_html:
            text = _table_rows(str(md.text_as_html)) or text
        yield _Raw(text, category, md.page_number, md.category_depth, md.page_name)


def _table_rows(html: str) -> str:
    """One line per row, cells joined by " | ": unstructured's flat text loses the rows."""
    import lxml.html

    rows = []
    for tr in lxml.html.fromstring(html).iter("tr"):
        cells = [" ".join(td.text_content().split()) for td in tr if td.tag in ("td", "th")]
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


def _partitioner(module: str, function: str, **kwargs: Any) -> Callable[[bytes], list[_Raw]]:
    # languages=[""]: skip unstructured's per-document language detection (langdetect), which
    # nothing here uses and which was ~45% of parsing a markdown page.
    kwargs.setdefault("languages", [""])

    def run(data: bytes) -> list[_Raw]:
        partition = getattr(importlib.import_module(f"unstructured.partition.{module}"), function)
        return list(_from_elements(partition(file=io.BytesIO(data), **kwargs)))

    return run


def _markdown(data: bytes) -> list[_Raw]:
    """unstructured's partition_md (markdown -> HTML -> partition_html), with the HTML's
    nesting checked in between: python-markdown nests blockquotes and lists as deep as the
    source does, and lxml would drop what lies past 256 levels."""
    import markdown
    from unstructured.file_utils.encoding import read_txt_file
    from unstructured.file_utils.model import FileType
    from unstructured.partition.html import partition_html

    _, text = read_txt_file(file=data)
    html = markdown.markdown(text, extensions=["tables", "fenced_code"])
    _check_depth(html, "markdown")
    elements = partition_html(text=html, metadata_file_type=FileType.MD, languages=[""])
    return list(_from_elements(elements))


def _table_or_text(module: str, function: str) -> Callable[[bytes], list[_Raw]]:
    """csv/tsv: pandas rejects ragged or UTF-16 files that are still perfectly readable text."""
    table = _partitioner(module, function)

    def run(data: bytes) -> list[_Raw]:
        try:
            return table(data)
        except Exception:
            return _text(data)

    return run


def _email(data: bytes, kind: str) -> list[_Raw]:
    if kind == "email":
        _check_email_parts(data)
    subject = _email_subject(data, kind)
    partition = _partitioner(kind, f"partition_{kind}", process_attachments=False)
    body = partition(data)
    return ([_Raw(subject, "Title", depth=0)] if subject else []) + body


def _email_subject(data: bytes, kind: str) -> str:
    """The subject, raising ``_EncryptedError`` for a PGP/S-MIME encrypted message."""
    if kind == "msg":
        from oxmsg import Message

        msg = Message.load(io.BytesIO(data))
        limit = _limits().max_email_parts
        if len(msg.attachments) > limit:
            raise _LimitError(
                "too_large",
                f"{len(msg.attachments)} attachments > {limit} (max_email_parts)",
            )
        content_type = str(msg.message_headers.get("Content-Type") or "")
        smime = msg.message_class.startswith("IPM.Note.SMIME") and "Signed" not in msg.message_class
        subject = str(msg.subject or "")
    else:
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        content_type = str(parsed.get("Content-Type") or "")
        smime = False
        subject = str(parsed.get("Subject") or "")
    if (
        "multipart/encrypted" in content_type
        or smime
        or ("pkcs7-mime" in content_type and "signed-data" not in content_type)
    ):
        raise _EncryptedError(f"encrypted email ({content_type or 'S/MIME'})")
    return " ".join(subject.split())


# ------------------------------------------------------------------------- plain text and PDF

_BULLET_RE: Final = re.compile(
    r"^[\u2022\u2023\u2043\u2219\u25aa\u25cf\u25e6\u00b7*\-\u2013\u2014]\s+"
)
_NUMBERED_RE: Final = re.compile(r"^\(?(\d{1,3}|[a-zA-Z]|[ivxIVX]{1,4})[.)]\s+\S")
_END_PUNCT_RE: Final = re.compile(r"[.,;:!?]['\"\u201d\u2019)\]]*$")


def _classify(text: str) -> tuple[str, str]:
    """Cheap Title/ListItem/NarrativeText guess for one paragraph (no spaCy: it is the cost)."""
    if bullet := _BULLET_RE.match(text):
        return "ListItem", text[bullet.end() :]
    if _NUMBERED_RE.match(text):
        return "ListItem", text
    visible = [c for c in text if not c.isspace()]
    alpha = sum(c.isalpha() for c in visible)
    if (
        "\n" not in text
        and len(text.split()) <= 12
        and not _END_PUNCT_RE.search(text)
        and alpha >= 0.5 * len(visible)
        and text[0].isalnum()
        and not text[0].islower()
    ):
        return "Title", text
    return ("NarrativeText" if alpha >= 0.5 * len(visible) else "UncategorizedText"), text


def _text(data: bytes) -> list[_Raw]:
    from unstructured.cleaners.core import auto_paragraph_grouper
    from unstructured.file_utils.encoding import read_txt_file
    from unstructured.nlp.patterns import PARAGRAPH_PATTERN

    # The same decoding (BOMs, UTF-16/32, legacy code pages) and paragraph grouping as
    # unstructured's partition_text, without its per-paragraph spaCy classification.
    _, text = read_txt_file(file=data)
    raws = []
    for paragraph in re.split(PARAGRAPH_PATTERN, auto_paragraph_grouper(text).strip()):
        if paragraph.strip():
            category, clean = _classify(paragraph.strip())
            raws.append(_Raw(clean, category))
    return raws


# pdfium is not thread-safe: every call into it must hold this lock.
_PDFIUM_LOCK: Final = threading.Lock()
_PDF_JUNK_RE: Final = re.compile(r"[\ufffe\x00-\x08\x0b-\x1f]")  # \ufffe: pdfium's soft hyphen
_PAGE_NUMBER_RE: Final = re.compile(
    r"^(page\s*)?[-\u2013]?\s*\d{1,4}\s*[-\u2013]?(\s*(of|/)\s*\d{1,4})?$", re.I
)


def _pdf(data: bytes) -> list[_Raw]:
    import pypdfium2 as pdfium

    pages: list[str] = []
    with _PDFIUM_LOCK:
        try:
            doc = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                raise _EncryptedError(f"password-protected PDF: {exc}") from exc
            raise
        try:
            for index in range(len(doc)):
                page = doc[index]
                textpage = page.get_textpage()
                pages.append(textpage.get_text_range())
                textpage.close()
                page.close()
        finally:
            doc.close()
    raws = []
    for number, page_text in enumerate(pages, start=1):
        text = _PDF_JUNK_RE.sub("", page_text.replace("\r\n", "\n"))
        paragraphs = list(_pdf_paragraphs(text.split("\n")))
        for i, paragraph in enumerate(paragraphs):
            # A page number printed at the top or bottom of the page is furniture, not text.
            if i in (0, len(paragraphs) - 1) and _PAGE_NUMBER_RE.match(paragraph):
                continue
            category, clean = _classify(paragraph)
            raws.append(_Raw(clean, category, number))
    return raws


def _pdf_paragraphs(lines: list[str]) -> Iterator[str]:
    """Rejoin a page's lines into paragraphs.

    PDF text has line breaks but no paragraph marks. A line clearly shorter than the page's
    typical full line ends a paragraph (a wrapped paragraph's lines run to the margin; its
    last line and headings do not); so does a blank line or a following list item.
    """
    lengths = sorted(len(ln.strip()) for ln in lines if ln.strip())
    if not lengths:
        return
    full = lengths[math.ceil(0.9 * (len(lengths) - 1))]  # robust to one over-long line
    current: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped:
            current.append(stripped)
        following = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if current and (
            not stripped
            or len(stripped) < 0.75 * full
            or not following
            or _BULLET_RE.match(following)
            or _NUMBERED_RE.match(following)
        ):
            yield " ".join(current)
            current = []
    if current:
        yield " ".join(current)


# --------------------------------------------------------------------------------- sections


def _sections(raws: Iterable[_Raw], *, page_scoped: bool) -> Iterator[Part]:
    """Give every element the path of headings above it (a stack keyed by heading depth)."""
    stack: list[tuple[int, str]] = []
    page: int | None = None
    for raw in raws:
        if page_scoped and raw.page != page:
            stack = []
        page = raw.page
        text = raw.text.strip()
        if raw.category == "Title" and text:
            depth = raw.depth or 0
            while stack and stack[-1][0] >= depth:
                stack.pop()
            stack.append((depth, " ".join(text.split())[:200]))
        root = (raw.page_name,) if page_scoped and raw.page_name else ()
        yield Part(raw.text, raw.category, raw.page, root + tuple(t for _, t in stack))


_HANDLERS: Final[dict[str, Callable[[bytes], list[_Raw]]]] = {
    "pdf": _pdf,
    "txt": _text,
    "rst": _text,
    "org": _text,
    "md": _markdown,
    "html": _partitioner("html", "partition_html"),
    "docx": _partitioner("docx", "partition_docx"),
    "pptx": _partitioner("pptx", "partition_pptx"),
    "xlsx": _partitioner("xlsx", "partition_xlsx"),
    "xls": _partitioner("xlsx", "partition_xlsx"),
    "xml": _partitioner("xml", "partition_xml"),
    "json": _partitioner("json", "partition_json"),
    "ndjson": _partitioner("ndjson", "partition_ndjson"),
    "csv": _table_or_text("csv", "partition_csv"),
    "tsv": _table_or_text("tsv", "partition_tsv"),
    "eml": lambda data: _email(data, "email"),
    "msg": lambda data: _email(data, "msg"),
}
