"""Request bodies as JSON, refusing what would break later: every refusal is an ``InvalidRequest``.

``parse_json`` accepts UTF-8 JSON only, nested at most ``MAX_DEPTH`` levels, with integers that fit in
64 bits (checked on the digits, before any conversion), finite numbers, and strings (keys too) free of
lone surrogates, which no database or encoder downstream could store. The body limit
(``platform.http.limits``) has already bounded the size.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from diskci.errors import InvalidRequest

MAX_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def _integer(digits: str) -> int:
    count = len(digits.lstrip("-"))
    if count > 19:
        raise InvalidRequest(f"the integer {digits[:24]}... has {count} digits; at most 19 fit")
    value = int(digits)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidRequest(f"the integer {digits} does not fit in 64 bits")
    return value


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest(f"the number {text[:24]} is out of range")
    return value


def _constant(name: str) -> Any:
    raise InvalidRequest(f"{name} is not JSON")


def _check(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise InvalidRequest("a string holds a lone UTF-16 surrogate, which is not text")
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise InvalidRequest(f"the JSON is nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def parse_json(raw: bytes, *, what: str) -> Any:
    """The JSON value of ``raw`` (``None`` when it is empty); ``what`` names it in the error."""
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what}: the body is not UTF-8 (at byte {exc.start})") from None
    try:
        value = json.loads(text, parse_int=_integer, parse_float=_number, parse_constant=_constant)
        _check(value)
    except RecursionError:
        raise InvalidRequest(f"{what}: the JSON is nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"{what}: the body is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what}: {exc.message}") from None
    return value


def parse_json_object(raw: bytes, *, what: str) -> dict[str, Any]:
    """``parse_json`` for a body that must be an object (an empty body is ``{}``)."""
    value = parse_json(raw, what=what)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what}: the body must be a JSON object, not {type(value).__name__}")
    return value
