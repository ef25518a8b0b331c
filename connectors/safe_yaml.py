"""The one YAML loader for files people write: bounded in size, aliases, depth and nodes.

A YAML file is small to write and can be huge to read: nine anchors of nine aliases each
("billion laughs") compose to a billion nodes, ``[[[[...`` ten thousand deep overflows the
recursive composer, and a scalar of a million digits costs quadratic time to turn into an
int. PyYAML has no limits of its own, so every YAML file a user or an admin writes (agent
files, principals, source specs, front matter of wiki pages) is read here:

- the text is refused before parsing when it is longer than ``max_bytes``;
- while composing (before any Python object is built), every alias is counted and adds
  the size of what it refers to, so the *expanded* node count is bounded by ``max_nodes``
  and the expanded nesting by ``max_depth``; an alias to a node still being composed
  (a recursive structure) is refused;
- integers are refused past ``MAX_INT_CHARS`` characters (Python's own digit limit would
  raise an unrelated ``ValueError`` deep inside, sexagesimal ones cost quadratic time).

Every problem is one ``YamlError`` (a ``ValueError``) that names the file and what is wrong;
a limit is a ``YamlLimitError`` that also names the limit. Nothing else escapes ``load``.

``yaml12_bools=True`` reads only ``true``/``false`` as booleans (YAML 1.2), so an event
trigger's ``on: [created]`` key stays the string ``on`` instead of becoming ``True``.

Imports: stdlib and pyyaml (connectors/ imports nothing of ours).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent, MappingEndEvent, SequenceEndEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: Defaults, generous for any configuration file a person writes.
MAX_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_NODES = 100_000
#: The longest integer scalar (digits, sign, underscores, ``0x``...) read as an int.
MAX_INT_CHARS = 100


class YamlError(ValueError):
    """The text is not YAML we read: the message says which file and what is wrong."""


class YamlLimitError(YamlError):
    """The text passes one of the loader's limits (``limit`` names it)."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class _Limited(yaml.SafeLoader):
    """SafeLoader whose composer counts and refuses before anything is constructed."""

    what = "YAML"
    max_aliases = MAX_ALIASES
    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0  # expanded: an alias counts as the whole node it refers to
        self._aliases = 0
        self._depth = 0
        self._open: set[int] = set()  # ids of nodes being composed
        # id(anchored node) -> (expanded node count, expanded depth below it)
        self._sizes: dict[int, tuple[int, int]] = {}
        self._deepest = 0

    def _refuse(self, limit: str, detail: str, mark: Any) -> YamlLimitError:
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return YamlLimitError(f"{self.what}: {detail}{where}", limit=limit)

    def _count(self, nodes: int, depth: int, mark: Any) -> None:
        self._nodes += nodes
        if self._nodes > self.max_nodes:
            raise self._refuse(
                "max_nodes", f"more than {self.max_nodes} nodes (aliases expanded)", mark
            )
        self._deepest = max(self._deepest, depth)
        if depth > self.max_depth:
            raise self._refuse("max_depth", f"nested deeper than {self.max_depth} levels", mark)

    # PyYAML's event methods are untyped in its stubs: these give them types here.
    def _peek(self) -> Any:
        return getattr(self, "peek_event")()  # noqa: B009

    def _next(self) -> Any:
        return getattr(self, "get_event")()  # noqa: B009

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            event = self._peek()
            self._aliases += 1
            if self._aliases > self.max_aliases:
                raise self._refuse(
                    "max_aliases", f"more than {self.max_aliases} aliases", event.start_mark
                )
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) in self._open:
                    raise self._refuse(
                        "recursive_alias",
                        f"alias *{event.anchor} refers to a node that contains it",
                        event.start_mark,
                    )
                nodes, depth = self._sizes.get(id(target), (1, 0))
                self._count(nodes, self._depth + depth, event.start_mark)
            return super().compose_node(parent, index)
        event = self._peek()
        start_nodes, start_deepest = self._nodes, self._deepest
        self._deepest = self._depth
        node = super().compose_node(parent, index)
        if event.anchor is not None and node is not None:
            self._sizes[id(node)] = (self._nodes - start_nodes, self._deepest - self._depth)
        self._deepest = max(self._deepest, start_deepest)
        return node

    def compose_scalar_node(self, anchor: Any) -> ScalarNode:
        self._count(1, self._depth, self._peek().start_mark)
        return super().compose_scalar_node(anchor)

    def _open_collection(self, node: Node, anchor: Any) -> None:
        if anchor is not None:
            self.anchors[anchor] = node
        self._open.add(id(node))

    def _close_collection(self, node: Node) -> None:
        node.end_mark = self._next().end_mark
        self._open.discard(id(node))
        self._depth -= 1

    def _start(self, kind: type[Node]) -> tuple[Any, str]:
        start = self._next()
        self._depth += 1
        self._count(1, self._depth, start.start_mark)
        tag = start.tag
        if tag is None or tag == "!":
            tag = getattr(self, "resolve")(kind, None, start.implicit)  # noqa: B009
        return start, str(tag)

    # The composer's own loops, with the depth and the open nodes tracked around them.
    def compose_sequence_node(self, anchor: Any) -> SequenceNode:
        start, tag = self._start(SequenceNode)
        node = SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        self._open_collection(node, anchor)
        index = 0
        while not self.check_event(SequenceEndEvent):
            node.value.append(self.compose_node(node, index))
            index += 1
        self._close_collection(node)
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        start, tag = self._start(MappingNode)
        node = MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        self._open_collection(node, anchor)
        while not self.check_event(MappingEndEvent):
            key = self.compose_node(node, None)
            value = self.compose_node(node, key)
            node.value.append((key, value))
        self._close_collection(node)
        return node

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise self._refuse(
                "max_int_chars",
                f"an integer longer than {MAX_INT_CHARS} characters",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


_Limited.add_constructor("tag:yaml.org,2002:int", _Limited.construct_yaml_int)


class _Limited12(_Limited):
    """YAML 1.2 booleans: only true/false."""


_Limited12.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _Limited.yaml_implicit_resolvers.items()
}
_Limited12.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def read_bounded(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """A file's bytes, reading no more than ``max_bytes + 1`` of it (``YamlLimitError``
    beyond): a 20 GB file named ``agent.yaml`` costs one small read. ``OSError`` as is."""
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YamlLimitError(
            f"{path}: more than the {max_bytes} bytes a YAML file may have", limit="max_bytes"
        )
    return data


def load(
    text: str | bytes,
    *,
    what: str,
    max_bytes: int = MAX_BYTES,
    max_aliases: int = MAX_ALIASES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
    yaml12_bools: bool = False,
) -> Any:
    """The one document in ``text`` as Python objects (SafeLoader's types), or
    ``YamlError``. ``what`` names the text in messages (a file's path, "front matter")."""
    size = len(text)  # characters: never more than the UTF-8 bytes
    if isinstance(text, str) and size <= max_bytes:
        size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise YamlLimitError(
            f"{what}: {size} bytes, more than the {max_bytes} a YAML file may have",
            limit="max_bytes",
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(f"{what}: not UTF-8: {exc}") from None
    base = _Limited12 if yaml12_bools else _Limited
    loader_class = type(
        "_Bounded",
        (base,),
        {
            "what": what,
            "max_aliases": max_aliases,
            "max_depth": max_depth,
            "max_nodes": max_nodes,
        },
    )
    loader = loader_class(text)
    try:
        return loader.get_single_data()
    except YamlError:
        raise
    except ComposerError as exc:
        raise YamlError(f"{what}: not valid YAML: {exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{what}: not valid YAML: {exc}") from None
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        # A constructor choking on a value (a date out of range, a bad base64 blob).
        raise YamlError(f"{what}: cannot read a value: {type(exc).__name__}: {exc}") from None
    finally:
        loader.dispose()
