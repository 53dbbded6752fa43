"""An action's input from the command line: ``--data`` (JSON text, ``@file`` or ``-``) and ``--set``.

Each ``--set FIELD=VALUE`` is read as the field's type (the actions validate strictly, so ``3`` must
become an integer and ``true`` a flag before they see it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from diskci.errors import UsageError


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def convert_assignment(model: type[BaseModel] | None, key: str, raw: str) -> Any:
    """``--set KEY=RAW``'s value as JSON data of the field's type (actions validate strictly).

    The text is read as the field's type when it can be (``3`` for an integer, ``true`` for a flag,
    any text for a string, an ISO time for a time); ``null`` is null; anything else (lists, objects,
    fields the model does not have) is JSON when it is JSON, else the text itself."""
    if raw == "null":
        return None
    fields = model.model_fields if model is not None else {}
    field = fields.get(key) or next((f for f in fields.values() if f.alias == key), None)
    if field is None or field.annotation is None:
        return _json_or_text(raw)
    try:
        value = TypeAdapter(field.annotation).validate_strings(raw)
    except ValidationError:
        return _json_or_text(raw)
    return to_jsonable_python(value)


def _read_data_file(name: str) -> str:
    if not name:
        raise UsageError("--data @: name the file after the @ (--data @input.json)")
    try:
        return Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--data @{name}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--data @{name}: is a directory, not a JSON file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--data @{name}: not UTF-8 text (at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"--data @{name}: cannot read: {exc.strerror}") from None


def parse_action_input(
    data: str | None, assignments: list[str], model: type[BaseModel] | None = None
) -> dict[str, Any]:
    """The action input from ``--data`` (JSON text, ``@file`` or ``-`` for stdin) and ``--set k=v``.

    ``--data`` is JSON as it is; each ``--set`` value is converted to ``model``'s field type."""
    values: dict[str, Any] = {}
    if data:
        if data == "-":
            text = sys.stdin.read()
        elif data.startswith("@"):
            text = _read_data_file(data[1:])
        else:
            text = data
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f" ({data})" if data.startswith("@") else ""
            raise UsageError(f"--data{where} is not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise UsageError("--data must be a JSON object")
        values.update(loaded)
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected FIELD=VALUE")
        values[key] = convert_assignment(model, key, raw)
    return values
