"""Wikitext → markdown, for the subset that carries meaning in an index.

Converted: headings, bulleted/numbered/definition lists, bold and italic, internal links
(to their label: the text a reader sees), external links (to markdown links), simple
tables (to markdown tables), ``<pre>``/``<syntaxhighlight>`` (to fenced code), ``<code>``,
``<br>``, horizontal rules and HTML entities.

Dropped: templates and parser functions (``{{…}}``: their expansion needs the wiki),
comments, ``<ref>`` footnotes, galleries, file/image embeds, magic words (``__TOC__``) and
other HTML tags (their text is kept). Category links are removed from the text and
returned apart, for metadata.

Pure functions, stdlib only: this module is tested on its own.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_NOWIKI = re.compile(r"<nowiki\s*>(.*?)</nowiki\s*>|<nowiki\s*/>", re.S | re.I)
_CODE_BLOCK = re.compile(r"<(pre|syntaxhighlight|source)(\s[^>]*)?>(.*?)</\1\s*>", re.S | re.I)
_LANG = re.compile(r"""lang\s*=\s*["']?([\w+-]+)""", re.I)
_DROPPED_BLOCKS = re.compile(
    r"<(ref|gallery|math|timeline|score|imagemap|templatedata)(\s[^>]*)?>.*?</\1\s*>"
    r"|<(ref|references)(\s[^>]*)?/>"
    r"|<references(\s[^>]*)?>.*?</references\s*>",
    re.S | re.I,
)
_INLINE_CODE = re.compile(r"<(code|tt|kbd|samp)(\s[^>]*)?>(.*?)</\1\s*>", re.S | re.I)
_BR = re.compile(r"<br\s*/?>", re.I)
_TAGS = re.compile(
    r"</?(span|div|small|big|center|font|u|s|strike|del|ins|sup|sub|blockquote|p|b|i|em|"
    r"strong|abbr|cite|poem|onlyinclude|includeonly|noinclude|mark|q|var|dfn|table|tr|td|th|"
    r"tbody|thead|caption|ul|ol|li|dl|dt|dd|h[1-6]|hr)(\s[^>]*)?/?>",
    re.I,
)
_MAGIC = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^(={1,6})\s*(.+?)\s*\1\s*$")
_LIST = re.compile(r"^([*#:;]+)\s*(.*)$")
_RULE = re.compile(r"^-{4,}\s*$")
_EXTERNAL = re.compile(r"\[((?:https?:|ftp:)?//[^\s\]]+|mailto:[^\s\]]+)(?:\s+([^\]]*))?\]")
_BOLD_ITALIC = re.compile(r"'''''(.+?)'''''")
_BOLD = re.compile(r"'''(.+?)'''")
_ITALIC = re.compile(r"''(.+?)''")
_BLANKS = re.compile(r"\n{3,}")

#: Namespaces whose links embed or classify rather than point (English and canonical).
_FILE_PREFIXES = ("file:", "image:", "media:")
_CATEGORY_PREFIX = "category:"


@dataclass
class Converted:
    markdown: str
    categories: list[str] = field(default_factory=list)


def to_markdown(wikitext: str) -> str:
    """The markdown for ``wikitext`` (see the module docstring for what is kept)."""
    return convert(wikitext).markdown


def convert(wikitext: str) -> Converted:
    held: list[str] = []

    def hold(text: str) -> str:
        held.append(text)
        return f"\x00{len(held) - 1}\x00"

    text = wikitext.replace("\r\n", "\n")
    text = _NOWIKI.sub(lambda m: hold(html.escape(m.group(1) or "", quote=False)), text)
    text = _COMMENT.sub("", text)
    text = _CODE_BLOCK.sub(lambda m: "\n" + hold(_fence(m)) + "\n", text)
    text = _DROPPED_BLOCKS.sub("", text)
    text = strip_templates(text)
    text = _INLINE_CODE.sub(lambda m: hold(f"`{html.unescape(m.group(3))}`"), text)
    categories: list[str] = []
    text = _links(text, categories)
    text = _EXTERNAL.sub(_external, text)
    text = _BR.sub("\n", text)
    text = _TAGS.sub("", text)
    text = _MAGIC.sub("", text)
    text = _blocks(text)
    text = html.unescape(text)
    text = re.sub(r"\x00(\d+)\x00", lambda m: held[int(m.group(1))], text)
    text = _BLANKS.sub("\n\n", text).strip()
    return Converted(text + "\n" if text else "", categories)


def strip_templates(text: str) -> str:
    """Remove every ``{{…}}`` (nested, multi-line, ``{{{params}}}`` included)."""
    out: list[str] = []
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        if text.startswith("{{", i):
            depth += 1
            i += 2
        elif depth and text.startswith("}}", i):
            depth -= 1
            i += 2
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def _fence(m: re.Match[str]) -> str:
    attrs = m.group(2) or ""
    lang = _LANG.search(attrs)
    body = m.group(3).strip("\n")
    if m.group(1).lower() == "pre":
        body = html.unescape(body)
    return f"```{lang.group(1) if lang else ''}\n{body}\n```"


def _links(text: str, categories: list[str]) -> str:
    """``[[…]]`` links, innermost first so a file caption's links do not break it."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        if not text.startswith("[[", i):
            out.append(text[i])
            i += 1
            continue
        # Find the matching ]] allowing nested [[…]] (image captions hold links).
        depth, j = 0, i
        while j < n:
            if text.startswith("[[", j):
                depth += 1
                j += 2
            elif text.startswith("]]", j):
                depth -= 1
                j += 2
                if depth == 0:
                    break
            else:
                j += 1
        if depth != 0:  # unbalanced: keep the rest as text
            out.append(text[i:])
            break
        out.append(_link(text[i + 2 : j - 2], categories))
        i = j
    return "".join(out)


def _link(inner: str, categories: list[str]) -> str:
    target, _, label = inner.partition("|")
    target = target.strip()
    lowered = target.lower()
    if lowered.startswith(_FILE_PREFIXES):
        return ""
    if lowered.startswith(_CATEGORY_PREFIX):
        categories.append(target[len(_CATEGORY_PREFIX) :].strip().replace("_", " "))
        return ""
    if label:
        return _links(label, categories).strip()
    if "|" in inner:  # the pipe trick, [[Help:Contents|]] → Contents
        return target.split(":", 1)[-1].split("(")[0].strip()
    shown = target.lstrip(":")
    if shown.startswith("#"):
        shown = shown[1:]
    return shown.replace("_", " ")


def _external(m: re.Match[str]) -> str:
    url, label = m.group(1), (m.group(2) or "").strip()
    if url.startswith("//"):
        url = "https:" + url
    return f"[{label}]({url})" if label else f"<{url}>"


def _inline(line: str) -> str:
    line = _BOLD_ITALIC.sub(r"***\1***", line)
    line = _BOLD.sub(r"**\1**", line)
    line = _ITALIC.sub(r"*\1*", line)
    return line.replace("'''", "").replace("''", "")


def _blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("{|"):
            j = i + 1
            depth = 1
            while j < len(lines) and depth:
                s = lines[j].strip()
                if s.startswith("{|"):
                    depth += 1
                elif s.startswith("|}"):
                    depth -= 1
                j += 1
            out.extend(["", *_table(lines[i + 1 : j - 1]), ""])
            i = j
            continue
        heading = _HEADING.match(stripped)
        if heading:
            level = len(heading.group(1))
            out.extend(["", "#" * level + " " + _inline(heading.group(2)), ""])
        elif _RULE.match(stripped):
            out.extend(["", "---", ""])
        elif _LIST.match(line):
            out.append(_list_item(line))
        else:
            out.append(_inline(line.rstrip()))
        i += 1
    return "\n".join(out)


def _list_item(line: str) -> str:
    m = _LIST.match(line)
    assert m is not None
    marks, body = m.group(1), _inline(m.group(2).strip())
    indent = "  " * (len(marks) - 1)
    last = marks[-1]
    if last == "*":
        return f"{indent}- {body}"
    if last == "#":
        return f"{indent}1. {body}"
    if last == ";":
        term, sep, definition = body.partition(" : ")
        return f"{indent}**{term.strip()}**" + (f": {definition.strip()}" if sep else "")
    return f"{indent}{body}"  # ':' is indentation only


def _cell(raw: str) -> str:
    # "style=… | content": the text after a single '|' outside links is the content.
    depth = 0
    for k, ch in enumerate(raw):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "|" and depth <= 0:
            raw = raw[k + 1 :]
            break
    return _inline(raw.strip()).replace("|", "\\|").replace("\n", " ")


def _table(lines: list[str]) -> list[str]:
    rows: list[list[str]] = []
    header_rows = 0
    caption = ""
    current: list[str] | None = None
    for line in lines:
        s = line.strip()
        if s.startswith("|+"):
            caption = _cell(s[2:])
        elif s.startswith("|-"):
            current = None
        elif s.startswith(("!", "|")):
            if current is None:
                current = []
                rows.append(current)
            separator = "!!" if s.startswith("!") else "||"
            current.extend(_cell(c) for c in s[1:].split(separator))
            if s.startswith("!") and len(rows) == 1:
                header_rows = 1
        elif current is not None and s and current:
            current[-1] = (current[-1] + " " + _inline(s)).strip()
    rows = [r for r in rows if r]
    if not rows:
        return [caption] if caption else []
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    head = rows[0] if header_rows else [""] * width
    body = rows[1:] if header_rows else rows
    out = [f"**{caption}**", ""] if caption else []
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * width)
    out.extend("| " + " | ".join(r) + " |" for r in body)
    return out
