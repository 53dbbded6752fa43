"""The one way diskci reads YAML it did not write: PyYAML's safe loader, bounded in what a document
expands to.

``yaml.safe_load`` itself shares aliased nodes, so a billion-laughs document (anchors of anchors,
``&a9 [*a8, *a8, …]``) loads in a few kilobytes, but everything that walks the result afterwards
(pydantic, JSON, a diff) expands every alias: ten levels of ten aliases are 10^10 values. The loader
here counts, while it composes the document, how many nodes each node stands for once its aliases are
expanded (memoized per node, so counting costs one pass over the text) and refuses the document as soon
as that count passes ``max_nodes``, and refuses an alias to a node that contains it (a recursive
structure). The refusal is a ``yaml.composer.ComposerError`` with the position of the node, so callers
that already turn ``yaml.YAMLError`` into their own error (SpecError naming the file, InvalidWorkflow)
report it the same way.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, SequenceNode

# A platform spec or a workflow has hundreds of nodes; this leaves room for very long package lists
# while keeping what a consumer walks to well under a second.
MAX_YAML_NODES = 100_000

__all__ = ["MAX_YAML_NODES", "load_bounded_yaml"]


class _BoundedSafeLoader(yaml.SafeLoader):
    """SafeLoader that keeps the expanded node count of every node it composes."""

    max_nodes = MAX_YAML_NODES

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._expanded: dict[int, int] = {}

    def compose_document(self) -> Node | None:
        self._expanded = {}
        try:
            return super().compose_document()
        finally:
            self._expanded = {}

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        is_alias = self.check_event(yaml.AliasEvent)
        alias_mark = self.peek_event().start_mark if is_alias else None
        node: Node | None = super().compose_node(parent, index)
        if node is None:
            return None
        if is_alias:
            if id(node) not in self._expanded:
                problem = "found an alias to a node that contains it (a recursive structure)"
                raise ComposerError(None, None, problem, alias_mark)
            return node
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        size = 1 + sum(self._expanded[id(child)] for child in children)
        if size > self.max_nodes:
            raise ComposerError(
                None,
                None,
                f"the document expands to more than {self.max_nodes} nodes through its aliases"
                " (an alias bomb?)",
                node.start_mark,
            )
        self._expanded[id(node)] = size
        return node


def load_bounded_yaml(text: str | bytes, *, max_nodes: int = MAX_YAML_NODES) -> Any:
    """The single YAML document in ``text`` as Python values, like ``yaml.safe_load``; raises
    ``yaml.YAMLError`` for a malformed document and for one that expands to more than ``max_nodes``
    nodes through its aliases or holds a recursive alias."""
    loader = _BoundedSafeLoader(text)
    loader.max_nodes = max_nodes
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
