"""No module imports one that imports it back, and no room (a top-level package or module of ``diskci``)
imports a room that imports it back; and the rooms keep the house rules of DESIGN.md.

Imports are read from the source (every ``import`` and ``from … import``, in functions too), except those
under ``if TYPE_CHECKING:``, which never run. Cycles are found as strongly connected components.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "diskci"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"  # `from pkg import module`
        yield from _imports(node, module, is_package)


def import_graph() -> dict[str, set[str]]:
    """Module → the diskci modules it imports (a package import counts as its ``__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = {t for t in _imports(tree, name, path.name == "__init__.py") if t in modules and t != name}
        graph[name] = targets
    return graph


def room(module: str) -> str:
    """``diskci.platform.db.models`` → ``platform``; ``diskci.errors`` → ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` runs before its submodules: drop edges from a package to its parents and
    from a submodule to its own package (importing ``diskci.x.y`` always runs ``diskci.x`` first)."""
    return {
        m: {t for t in targets if not m.startswith(t + ".") and not t.startswith(m + ".")}
        for m, targets in graph.items()
    }


def test_no_module_cycle() -> None:
    found = cycles(_package_parents(import_graph()))
    assert not found, "modules that import each other: " + "; ".join(" ↔ ".join(c) for c in found)


def test_no_room_cycle() -> None:
    rooms: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        rooms.setdefault(room(module), set()).update(room(t) for t in targets if room(t) != room(module))
    found = cycles(rooms)
    assert not found, "rooms that import each other: " + "; ".join(" ↔ ".join(c) for c in found)


def test_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# The house rules of DESIGN.md: the pipeline and the format writers know nothing of the platform, the
# registry or the supply chain; the platform reaches builds only through a CI backend; no library room
# imports the CLI.
FORBIDDEN = {
    "formats": {"image", "platform", "registry", "supplychain", "publish", "cli"},
    "image": {"platform", "registry", "supplychain", "publish", "cli"},
    "platform": {"image", "cli"},
    "registry": {"image", "platform", "supplychain", "publish", "cli"},
    "supplychain": {"image", "platform", "publish", "cli"},
    "publish": {"image", "platform", "cli"},
}


def test_room_rules() -> None:
    broken = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if room(target) in FORBIDDEN.get(room(module), set())
    )
    assert not broken, "imports across a house rule: " + "; ".join(broken)
