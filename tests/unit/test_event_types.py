"""Every event the platform records is in the one list of event types the event filters check."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import diskci
from diskci.platform.event_types import EVENT_TYPES

SRC = Path(diskci.__file__).parent


def _recorded_types() -> dict[str, str]:
    """Event types named in the source: ``record_event(session, "x"...)``, ``Event(type="x")``, and
    the constants and variables holding them (``*_EVENT = "x"``, ``EVENT_* = "x"``, ``event = "x"``)."""
    found: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            values: list[ast.expr] = []
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name == "record_event" and len(node.args) >= 2:
                    values.append(node.args[1])
                if name == "Event":
                    values += [k.value for k in node.keywords if k.arg == "type"]
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                label = target.id if isinstance(target, ast.Name) else ""
                named = label == "event" or label.endswith("_EVENT") or label.startswith("EVENT_")
                value = node.value
                if (
                    named
                    and isinstance(value, ast.Constant)
                    and re.fullmatch(r"[a-z][a-z0-9_]+", str(value.value))
                ):
                    values.append(value)  # an event type's shape (not EVENT_HEADER = "X-Gitea-Event")
            for value in values:
                for const in ast.walk(value):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        found[const.value] = str(path.relative_to(SRC))
    return found


def test_every_recorded_event_type_is_listed() -> None:
    recorded = _recorded_types()
    assert len(recorded) >= 30  # the scan sees the platform's events
    missing = {t: where for t, where in recorded.items() if t not in EVENT_TYPES}
    assert missing == {}


def test_every_listed_event_type_is_recorded_somewhere() -> None:
    assert set(EVENT_TYPES) - set(_recorded_types()) == set()
