"""The one YAML loader for configs, study files and `--set` values: yaml.SafeLoader, stricter.

- A key repeated in one mapping is an error (plain YAML keeps the last: a second `training:` section would
  silently replace the first).
- Aliases may not expand a document past MAX_NODES nodes: a 1 KB "billion laughs" file otherwise becomes
  gigabytes once anything walks it (validation, printing). The check runs on the composed graph, before any
  Python object is built, in time linear in the file.
- Nesting deeper than MAX_DEPTH levels is an error (not a RecursionError after seconds of work).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_NODES = 100_000  # a large real config has a few hundred
MAX_DEPTH = 100


class YamlError(ValueError):
    """The text is not a YAML document this loader accepts; the message says where and why."""


class YamlSyntaxError(YamlError):
    """The text does not parse as YAML (PyYAML's own error, on one line)."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and bounds alias expansion (see the module doc)."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlError(f"nested deeper than {MAX_DEPTH} levels (line {self.peek_event().start_mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, {})
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merge keys (<<) and complex keys: PyYAML's own rules apply
            key = self.construct_object(key_node)
            if key in seen:
                raise YamlError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                f"(first at line {seen[key].line + 1})")
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Node, sizes: dict[int, int]) -> int:
    """Nodes the document has once every alias is expanded; memoized per node, so shared (aliased) subtrees
    are counted as often as they are used while each is walked once."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a self-referencing alias counts once instead of recursing forever
    if isinstance(node, SequenceNode):
        children = node.value
    elif isinstance(node, MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    total = 1 + sum(_expanded_size(child, sizes) for child in children)
    if total > MAX_NODES:
        raise YamlError(f"aliases expand this document past {MAX_NODES} values (line {node.start_mark.line + 1}); "
                        "an alias bomb, or a config far larger than any dyrank reads")
    sizes[id(node)] = total
    return total


def load_yaml(text: str) -> Any:
    """One YAML document through StrictLoader, or a YamlError naming the line."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(" ".join(str(exc).replace('in "<unicode string>", ', "").split())) from None
    except RecursionError:
        raise YamlError("nested too deeply") from None
