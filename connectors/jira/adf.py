"""Atlassian Document Format (ADF) → markdown, for indexing Jira descriptions and comments.

ADF is a JSON tree (``{"type": "doc", "version": 1, "content": [...]}``) of block nodes
(paragraph, heading, bulletList, orderedList, codeBlock, blockquote, panel, table, rule,
mediaSingle, expand, taskList, decisionList) holding inline nodes (text with marks, mention,
emoji, hardBreak, inlineCard, date, status). The markdown only has to read well to a person
and to the embedder: unknown nodes are not errors, their text content is kept.

Anything that is not ADF (a plain string from an older API, ``None``) is handled too.

Imports: stdlib only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

Node = Mapping[str, Any]


def to_markdown(document: object) -> str:
    """Markdown for an ADF document (or a plain string); ``""`` for nothing."""
    if document is None:
        return ""
    if isinstance(document, str):
        return document.strip()
    if not isinstance(document, Mapping):
        return ""
    return _blocks(_children(document)).strip()


def _children(node: Node) -> list[Node]:
    content = node.get("content")
    if not isinstance(content, Sequence) or isinstance(content, str):
        return []
    return [c for c in content if isinstance(c, Mapping)]


def _attrs(node: Node) -> Mapping[str, Any]:
    attrs = node.get("attrs")
    return attrs if isinstance(attrs, Mapping) else {}


def _blocks(nodes: Sequence[Node]) -> str:
    parts = [_block(n) for n in nodes]
    return "\n\n".join(p for p in parts if p.strip())


def _block(node: Node) -> str:
    kind = node.get("type")
    attrs = _attrs(node)
    if kind == "paragraph":
        return _inline(_children(node))
    if kind == "heading":
        level = attrs.get("level", 1)
        level = level if isinstance(level, int) and 1 <= level <= 6 else 1
        return "#" * level + " " + _inline(_children(node)).replace("\n", " ")
    if kind == "bulletList":
        return _list(node, ordered=False)
    if kind == "orderedList":
        start = attrs.get("order", 1)
        return _list(node, ordered=True, start=start if isinstance(start, int) else 1)
    if kind == "taskList":
        return "\n".join(_task(item) for item in _children(node))
    if kind == "decisionList":
        return "\n".join("- " + _item_text(item) for item in _children(node))
    if kind == "codeBlock":
        language = attrs.get("language")
        fence = "```" + (language if isinstance(language, str) else "")
        code = "".join(_plain(c) for c in _children(node))
        return f"{fence}\n{code.rstrip()}\n```"
    if kind == "blockquote":
        return _quote(_blocks(_children(node)))
    if kind == "panel":
        panel = attrs.get("panelType")
        body = _blocks(_children(node))
        label = f"**{panel.capitalize()}:** " if isinstance(panel, str) and panel else ""
        return _quote(label + body)
    if kind in ("expand", "nestedExpand"):
        title = attrs.get("title")
        body = _blocks(_children(node))
        return f"**{title}**\n\n{body}" if isinstance(title, str) and title else body
    if kind == "rule":
        return "---"
    if kind == "table":
        return _table(node)
    if kind in ("mediaSingle", "mediaGroup"):
        return "\n".join(_media(m) for m in _children(node) if _media(m))
    if kind == "media":
        return _media(node)
    if kind in ("blockCard", "embedCard"):
        url = attrs.get("url")
        return f"<{url}>" if isinstance(url, str) else ""
    if kind in _INLINE:
        return _inline([node])
    # Unknown or future block: keep whatever text it holds.
    return _blocks(_children(node)) or _inline(_children(node))


_INLINE = {"text", "hardBreak", "mention", "emoji", "inlineCard", "date", "status", "placeholder"}


def _inline(nodes: Sequence[Node]) -> str:
    out: list[str] = []
    for node in nodes:
        kind = node.get("type")
        attrs = _attrs(node)
        if kind == "text":
            out.append(_marked(node))
        elif kind == "hardBreak":
            out.append("  \n")
        elif kind == "mention":
            text = attrs.get("text") or attrs.get("id") or ""
            text = str(text)
            out.append(text if text.startswith("@") else "@" + text)
        elif kind == "emoji":
            out.append(str(attrs.get("text") or attrs.get("shortName") or ""))
        elif kind == "inlineCard":
            url = attrs.get("url")
            out.append(f"<{url}>" if isinstance(url, str) else "")
        elif kind == "date":
            out.append(_date(attrs.get("timestamp")))
        elif kind == "status":
            out.append(f"[{attrs.get('text', '')}]")
        elif kind == "placeholder":
            continue
        elif _children(node):
            inner = _children(node)
            if all(c.get("type") in _INLINE for c in inner):
                out.append(_inline(inner))
            else:  # blocks where inlines belong (a malformed or future tree): flatten them
                out.append(_blocks(inner).replace("\n\n", " "))
    return "".join(out)


def _marked(node: Node) -> str:
    text = node.get("text")
    if not isinstance(text, str) or not text:
        return ""
    marks = node.get("marks")
    if not isinstance(marks, Sequence) or isinstance(marks, str):
        return text
    kinds = {m.get("type"): _attrs(m) for m in marks if isinstance(m, Mapping)}
    if "code" in kinds:
        text = f"`{text}`"
    else:
        if "strong" in kinds:
            text = f"**{text}**"
        if "em" in kinds:
            text = f"*{text}*"
        if "strike" in kinds:
            text = f"~~{text}~~"
    if "link" in kinds:
        href = kinds["link"].get("href")
        if isinstance(href, str) and href:
            text = f"[{text}]({href})"
    return text


def _plain(node: Node) -> str:
    """Text of a node and its descendants, without markup (code blocks)."""
    if node.get("type") == "text":
        text = node.get("text")
        return text if isinstance(text, str) else ""
    if node.get("type") == "hardBreak":
        return "\n"
    return "".join(_plain(c) for c in _children(node))


def _list(node: Node, *, ordered: bool, start: int = 1) -> str:
    lines: list[str] = []
    for number, item in enumerate(_children(node), start=start):
        bullet = f"{number}. " if ordered else "- "
        if item.get("type") == "listItem":  # a tight list: its blocks one line apart
            body = "\n".join(b for b in (_block(c) for c in _children(item)) if b.strip())
        else:
            body = _block(item)
        first, *rest = body.split("\n") if body else [""]
        lines.append(bullet + first)
        indent = " " * len(bullet)
        lines.extend(indent + line if line else "" for line in rest)
    return "\n".join(lines)


def _item_text(item: Node) -> str:
    children = _children(item)
    if children and all(c.get("type") in _INLINE for c in children):
        return _inline(children)
    return _blocks(children).replace("\n\n", " ")


def _task(item: Node) -> str:
    done = _attrs(item).get("state") == "DONE"
    return ("- [x] " if done else "- [ ] ") + _item_text(item)


def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.split("\n"))


def _table(node: Node) -> str:
    rows: list[list[str]] = []
    header = False
    for row in _children(node):
        cells = _children(row)
        if not rows:
            header = bool(cells) and all(c.get("type") == "tableHeader" for c in cells)
        rows.append([_blocks(_children(c)).replace("\n", " ").replace("|", "\\|") for c in cells])
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    if not header:
        rows.insert(0, [""] * width)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width]
    lines.extend("| " + " | ".join(r) + " |" for r in rows[1:])
    return "\n".join(lines)


def _media(node: Node) -> str:
    if node.get("type") != "media":
        return ""
    attrs = _attrs(node)
    name = attrs.get("alt") or attrs.get("filename")
    if isinstance(name, str) and name:
        return f"[attachment: {name}]"
    url = attrs.get("url")
    return f"<{url}>" if isinstance(url, str) else ""


def _date(timestamp: object) -> str:
    try:
        ms = int(str(timestamp))
    except ValueError:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date().isoformat()
