"""Artifacts as HTML: markdown with raw HTML off, citation markers turned into links.

A marker ``[n]`` becomes a link to ``#evidence-n`` only when ``n`` numbers an evidence item,
and only in text (never inside a tag, a link, or code), so the substitution cannot open a
way to inject markup: markdown-it has already escaped every character of the text.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from markdown_it import MarkdownIt
from markupsafe import Markup

_markdown = MarkdownIt("commonmark", {"html": False})
_TAG = re.compile(r"(<[^>]*>)")
_CITATION = re.compile(r"\[(\d{1,4})\]")
#: Inside these, a ``[n]`` is literal: code shows it verbatim; a link cannot hold a link.
_VERBATIM = ("a", "code", "pre")


def render_artifact(markdown: str, citations: Collection[int]) -> Markup:
    html = _markdown.render(markdown)
    return Markup(link_citations(html, citations))


def link_citations(html: str, citations: Collection[int]) -> str:
    """``[n]`` in text nodes of ``html`` → ``<a href="#evidence-n">[n]</a>``."""
    out: list[str] = []
    depth = 0  # how many verbatim elements we are inside
    for part in _TAG.split(html):
        if part.startswith("<"):
            name = part.strip("</>").split()[0].lower() if part.strip("</>") else ""
            if name in _VERBATIM and not part.endswith("/>"):
                depth += -1 if part.startswith("</") else 1
            out.append(part)
        elif depth > 0:
            out.append(part)
        else:
            out.append(_CITATION.sub(lambda m: _link(m, citations), part))
    return "".join(out)


def _link(match: re.Match[str], citations: Collection[int]) -> str:
    n = int(match.group(1))
    if n not in citations:
        return match.group(0)
    return f'<a class="cite" href="#evidence-{n}" aria-label="evidence {n}">[{n}]</a>'
