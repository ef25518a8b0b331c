"""One markdown page → title, metadata and the markdown text handed to the pipeline.

Pure functions of a page's bytes, its path and the site's URL scheme: nothing here looks at
other files, so a page's rendering (and its content hash) changes only when the page or the
URL settings do. That is what lets the connector skip unchanged pages by mtime and size.

Page URLs: ``a/b/page.md`` → ``<base_url>/a/b/page``; an index page (``a/b/index.md``) →
``<base_url>/a/b``; the top index → ``<base_url>/``. Relative links in the text (inline
``[x](y)``, images, reference definitions ``[x]: y``, HTML ``href``/``src``) are resolved
against the page's folder (``/``-rooted ones against the wiki's root) and rewritten to
absolute URLs by the same rule; a link to another file (an image) keeps its extension. A
link that climbs out of the root is refused: it keeps its text and loses its target. Links
inside fenced code blocks and code spans are left alone.

A path may hold non-UTF-8 bytes (lone surrogates, as ``os`` gives them): URLs quote the real
bytes and a title taken from the file name is escaped (:mod:`connectors.names`).

Imports: stdlib, connectors.safe_yaml (pyyaml, bounded) and connectors.names.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from urllib.parse import unquote

from connectors import safe_yaml
from connectors.names import escape_name, quote_name

PAGE_SUFFIXES = (".md", ".markdown")
#: Limits of a page's front matter (connectors.safe_yaml): a few keys, not a data file.
FRONT_MATTER_MAX_BYTES = 64 * 1024
FRONT_MATTER_MAX_NODES = 5_000

_FRONT_MATTER_END = ("---", "...")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_ATX_H1_EMPTY = re.compile(r"^ {0,3}#[ \t]*$")
_SETEXT_H1 = re.compile(r"^ {0,3}=+[ \t]*$")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
# [text](target "title") and ![alt](target): one level of nested brackets in the text, one
# level of parentheses in the target (wiki/Foo_(bar) style), an optional <...> target.
_INLINE_LINK = re.compile(
    r"(?P<bang>!?)\[(?P<text>(?:[^\[\]\\]|\\.|\[[^\[\]]*\])*)\]"
    r"\([ \t]*(?P<target><[^<>\n]*>|(?:[^\s()\\]|\\.|\([^\s()]*\))+)"
    r"(?P<title>[ \t]+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^()\n]*\)))?[ \t]*\)"
)
_REF_DEF = re.compile(
    r"^(?P<lead> {0,3}\[(?P<label>[^\]^][^\]]*)\]:[ \t]*)(?P<target><[^<>\n]*>|\S+)(?P<rest>.*)$",
    re.MULTILINE,
)
_HTML_ATTR = re.compile(
    r"(?P<lead>\b(?:href|src)[ \t]*=[ \t]*)(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)')",
    re.IGNORECASE,
)


class PageError(ValueError):
    """The page cannot be taken as a markdown page (not UTF-8, bad front matter)."""


@dataclass(frozen=True)
class Site:
    """How page paths become URLs."""

    base_url: str  # without a trailing slash
    index_names: Sequence[str] = ("index",)

    def url_for(self, relpath: str) -> str:
        """URL of a file or folder given by its path relative to the root ('' for the root)."""
        stem, suffix = posixpath.splitext(relpath)
        path = stem if suffix.lower() in PAGE_SUFFIXES else relpath
        head, name = posixpath.split(path)
        if name in self.index_names or name == "":
            path = head
        return f"{self.base_url}/{quote_name(path)}"

    def rewrite_target(self, target: str, page: str) -> str | None:
        """The absolute URL for a link ``target`` found in ``page``; ``None`` when refused."""
        if not target or _SCHEME.match(target) or target.startswith("//"):
            return target
        if target.startswith("#"):
            return self.url_for(page) + target
        path, hash_, fragment = target.partition("#")
        path, mark, query = path.partition("?")
        path = unquote(path)
        joined = (
            path.lstrip("/")
            if path.startswith("/")
            else posixpath.join(posixpath.dirname(page), path)
        )
        resolved = posixpath.normpath(joined) if joined else "."
        if resolved == ".." or resolved.startswith("../"):
            return None
        url = self.url_for("" if resolved == "." else resolved)
        return url + mark + query + hash_ + fragment


@dataclass(frozen=True)
class Page:
    title: str
    text: str  # the markdown handed to the pipeline
    author: str | None = None
    access: tuple[str, ...] | None = None  # front matter ``access``, not yet validated
    metadata: dict[str, str] = field(default_factory=dict)


def split_front_matter(text: str) -> tuple[dict[str, object], str]:
    """``(front matter, body)``; a page without a closed ``---`` block has none."""
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != "---":
        return {}, text
    for i in range(1, len(lines)):
        if lines[i].rstrip() in _FRONT_MATTER_END:
            block = "\n".join(lines[1:i])
            try:
                data = safe_yaml.load(
                    block,
                    what="front matter",
                    max_bytes=FRONT_MATTER_MAX_BYTES,
                    max_nodes=FRONT_MATTER_MAX_NODES,
                )
            except safe_yaml.YamlError as exc:
                raise PageError(str(exc)) from None
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise PageError("front matter is not a mapping of keys to values")
            return {str(k): v for k, v in data.items()}, "\n".join(lines[i + 1 :])
    return {}, text


def _scalar(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return None


def _text_value(value: object) -> str | None:
    """A scalar, or a list of scalars joined by commas; ``None`` for anything else."""
    if isinstance(value, list):
        items = [_scalar(v) for v in value]
        return ", ".join(i for i in items if i) if all(i is not None for i in items) else None
    return _scalar(value)


def _prose_segments(body: str) -> list[tuple[bool, str]]:
    """``(is_prose, text)`` runs of ``body``: fenced code blocks are not prose."""
    segments: list[tuple[bool, str]] = []
    current: list[str] = []
    fence: str | None = None
    for line in body.split("\n"):
        match = _FENCE.match(line)
        if fence is None and match:
            if current:
                segments.append((True, "\n".join(current)))
            current, fence = [line], match.group(1)
        elif fence is not None:
            current.append(line)
            stripped = line.strip()
            if stripped.startswith(fence) and stripped == stripped[0] * len(stripped):
                segments.append((False, "\n".join(current)))
                current, fence = [], None
        else:
            current.append(line)
    if current:
        segments.append((fence is None, "\n".join(current)))
    return segments


def _outside_code_spans(prose: str, fn: Callable[[str], str]) -> str:
    out: list[str] = []
    last = 0
    for span in _CODE_SPAN.finditer(prose):
        out.append(fn(prose[last : span.start()]))
        out.append(span.group(0))
        last = span.end()
    out.append(fn(prose[last:]))
    return "".join(out)


def rewrite_links(body: str, page: str, site: Site) -> str:
    """``body`` with relative links made absolute (see the module docstring)."""

    def target_of(raw: str) -> str:
        return raw[1:-1] if raw.startswith("<") and raw.endswith(">") else raw

    def inline(m: re.Match[str]) -> str:
        url = site.rewrite_target(target_of(m.group("target")), page)
        if url is None:
            return m.group("text")
        if " " in url:  # a query or fragment kept verbatim may hold spaces
            url = f"<{url}>"
        return f"{m.group('bang')}[{m.group('text')}]({url}{m.group('title') or ''})"

    def ref_def(m: re.Match[str]) -> str:
        url = site.rewrite_target(target_of(m.group("target")), page)
        if url is None:
            return ""
        return f"{m.group('lead')}{url}{m.group('rest')}"

    def html_attr(m: re.Match[str]) -> str:
        raw = m.group("dq") if m.group("dq") is not None else m.group("sq")
        url = site.rewrite_target(raw, page)
        return f'{m.group("lead")}"{(url if url is not None else "#").replace(chr(34), "%22")}"'

    def prose(text: str) -> str:
        text = _INLINE_LINK.sub(inline, text)
        text = _REF_DEF.sub(ref_def, text)
        return _HTML_ATTR.sub(html_attr, text)

    return "".join(
        _outside_code_spans(text, prose) if is_prose else text
        for is_prose, text in _join_segments(_prose_segments(body))
    )


def _join_segments(segments: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
    """Segments with the newline between them attached, so joining restores the body."""
    return [(p, t + "\n") for p, t in segments[:-1]] + segments[-1:]


def first_heading(body: str) -> str | None:
    """The text of the first level-1 heading outside code blocks (ATX or setext)."""
    for is_prose, text in _prose_segments(body):
        if not is_prose:
            continue
        lines = text.split("\n")
        for i, line in enumerate(lines):
            match = _ATX_H1.match(line)
            if match and not _ATX_H1_EMPTY.match(line):
                return match.group(1).strip()
            if (
                i + 1 < len(lines)
                and line.strip()
                and not line.startswith(("    ", "\t"))
                and _SETEXT_H1.match(lines[i + 1])
            ):
                return line.strip()
    return None


def _starts_with_h1(body: str) -> bool:
    for line in body.split("\n"):
        if line.strip():
            return bool(_ATX_H1.match(line))
    return False


def render(data: bytes, relpath: str, site: Site) -> Page:
    """Read one page. Raises :class:`PageError` when it is not UTF-8 or its front matter
    is not a YAML mapping."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PageError(f"not UTF-8 text: {exc}") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    front, body = split_front_matter(text)
    body = rewrite_links(body.lstrip("\n"), relpath, site)

    declared = _scalar(front.get("title"))
    declared = declared.strip() if declared else None
    title = declared or first_heading(body) or _fallback_title(relpath, site)
    if declared and not _starts_with_h1(body):
        body = f"# {declared}\n\n{body}"

    access: tuple[str, ...] | None = None
    if "access" in front:
        raw = front["access"]
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(a, str) for a in items):
            raise PageError("front matter 'access' must be a list of principals")
        access = tuple(items)

    metadata = {
        key: value
        for key, raw in front.items()
        if key not in ("title", "access", "author") and (value := _text_value(raw)) is not None
    }
    return Page(
        title=title,
        text=body,
        author=_text_value(front.get("author")) or None,
        access=access,
        metadata=metadata,
    )


def _fallback_title(relpath: str, site: Site) -> str:
    """The file's name without extension; for an index page, its folder's name."""
    head, name = posixpath.split(relpath)
    stem = posixpath.splitext(name)[0]
    if stem in site.index_names and head:
        return escape_name(posixpath.basename(head))
    return escape_name(stem)
