"""One error tree: every exception class defined in diskci derives from DiskciError, and the drawing in
``diskci.errors``'s docstring lists each of them, under its parent, with the module it lives in."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import diskci
from diskci import errors
from diskci.errors import DiskciError

PACKAGE = Path(diskci.__file__).parent
# imported only by alembic, which hands it its context
NOT_IMPORTABLE = {"diskci.platform.db.migrations.env"}
_ROW = re.compile(r"^(?P<tree>[ │├└─]*)(?P<name>[A-Z]\w*)(?:\s+\((?P<module>[a-z_][\w.]*)\))?")


def _modules() -> list[ModuleType]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return [importlib.import_module(n) for n in names if n not in NOT_IMPORTABLE]


def _error_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in _modules():
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                assert obj.__name__ not in found, f"two error classes are named {obj.__name__}"
                found[obj.__name__] = obj
    return found


def _drawing() -> dict[str, tuple[str | None, str]]:
    """name → (drawn parent, drawn module) from the docstring tree."""
    doc = errors.__doc__ or ""
    lines = doc.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("DiskciError "))
    indent = len(lines[first]) - len(lines[first].lstrip())
    drawn: dict[str, tuple[str | None, str]] = {}
    parents: list[str] = []
    for line in lines[first:]:
        if not line.strip():
            break
        row = _ROW.match(line[indent:])
        assert row, f"not a row of the error tree: {line!r}"
        depth = len(row["tree"]) // 4
        assert len(row["tree"]) % 4 == 0 and depth <= len(parents), f"misdrawn row: {line!r}"
        del parents[depth:]
        name = row["name"]
        assert name not in drawn, f"{name} is drawn twice"
        drawn[name] = (parents[-1] if parents else None, "diskci." + (row["module"] or "errors"))
        parents.append(name)
    return drawn


def _tree_parent(cls: type[BaseException]) -> str | None:
    for base in cls.__bases__:
        if issubclass(base, DiskciError):
            return base.__name__
    return None


def test_every_error_derives_from_diskci_error() -> None:
    classes = _error_classes().values()
    strays = sorted(f"{c.__module__}.{c.__name__}" for c in classes if not issubclass(c, DiskciError))
    assert strays == [], f"errors outside the tree (derive them from a DiskciError family): {strays}"


def test_the_docstring_draws_every_error_under_its_parent() -> None:
    classes = _error_classes()
    drawn = _drawing()
    assert sorted(set(classes) - set(drawn)) == [], "error classes missing from the errors.py drawing"
    assert sorted(set(drawn) - set(classes)) == [], "the errors.py drawing names classes that do not exist"
    wrong = [
        f"{name}: drawn in {module} under {parent}, is in {cls.__module__} under {_tree_parent(cls)}"
        for name, cls in classes.items()
        for parent, module in [drawn[name]]
        if (parent, module) != (_tree_parent(cls), cls.__module__)
    ]
    assert wrong == []
