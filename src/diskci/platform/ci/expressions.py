"""The part of the Actions expression language (``${{ ... }}``) a job is split by, evaluated as Gitea does.

Splitting a workflow into jobs evaluates a few values before any runner sees them: a job's matrix
(``fromJSON(inputs.arches || '["amd64"]')``), its ``runs-on`` and its ``name`` (``build ${{ matrix.arch
}}``). This module evaluates those: literals (``'text'`` with ``''`` for a quote, numbers, ``true``,
``false``, ``null``), property paths into the given contexts (``matrix.arch``, ``inputs.arches``), ``!``,
``==``, ``!=``, ``&&``, ``||`` (with the language's "first truthy operand" meaning) and the functions
``fromJSON``, ``toJSON``, ``join``, ``format``, ``contains``, ``startsWith`` and ``endsWith``. A missing
property is ``null``; an unknown context, function or token is an ``InvalidExpression``.

Public API: ``evaluate(text, contexts)`` (a string that is one ``${{ }}`` gives the value itself, any
other string the text with each expression interpolated) and ``interpolate(text, contexts)`` (always a
string).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from diskci.errors import InvalidRequest

__all__ = ["InvalidExpression", "evaluate", "interpolate", "to_string"]

_EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>'(?:[^']|'')*')|(?P<op>\|\||&&|==|!=|!|\(|\)|,|\.|\[|\])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*))"
)


class InvalidExpression(InvalidRequest):
    """An expression of a workflow that cannot be evaluated (what, and where in it)."""


def to_string(value: Any) -> str:
    """A value as interpolation writes it: null is empty, booleans are ``true``/``false``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, float) and value != value)


def _join(items: Any, sep: Any = ",") -> str:
    if isinstance(items, list):
        return to_string(sep).join(to_string(i) for i in items)
    return to_string(items)


def _format(fmt: Any, *args: Any) -> str:
    text = to_string(fmt)

    def arg(m: re.Match[str]) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        i = int(m.group(1))
        if i >= len(args):
            raise InvalidExpression(f"format({text!r}): no argument {i}")
        return to_string(args[i])

    return re.sub(r"\{\{|\}\}|\{(\d+)\}", arg, text)


def _from_json(text: Any) -> Any:
    try:
        return json.loads(to_string(text))
    except json.JSONDecodeError as exc:
        raise InvalidExpression(f"fromJSON({text!r}): not JSON ({exc})") from exc


def _contains(haystack: Any, needle: Any) -> bool:
    if isinstance(haystack, list):
        return any(to_string(i).lower() == to_string(needle).lower() for i in haystack)
    return to_string(needle).lower() in to_string(haystack).lower()


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "fromjson": _from_json,
    "tojson": lambda v: json.dumps(v, indent=2),
    "join": _join,
    "format": _format,
    "contains": _contains,
    "startswith": lambda s, p: to_string(s).lower().startswith(to_string(p).lower()),
    "endswith": lambda s, p: to_string(s).lower().endswith(to_string(p).lower()),
}


class _Parser:
    """Recursive descent over the tokens of one expression, evaluating as it goes."""

    def __init__(self, source: str, contexts: Mapping[str, Any]) -> None:
        self.source = source
        self.contexts = contexts
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        stripped = source.rstrip()
        while pos < len(stripped):
            m = _TOKEN.match(stripped, pos)
            if m is None or m.end() == pos:
                raise InvalidExpression(f"${{{{ {source.strip()} }}}}: cannot read {stripped[pos:]!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def fail(self, what: str) -> InvalidExpression:
        return InvalidExpression(f"${{{{ {self.source.strip()} }}}}: {what}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise self.fail(f"expected {value or 'more'}")
        self.i += 1
        return tok

    def at(self, value: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "op" and tok[1] == value

    def parse(self) -> Any:
        value = self.or_expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return value

    def or_expr(self) -> Any:
        value = self.and_expr()
        while self.at("||"):
            self.take()
            right = self.and_expr()
            value = value if _truthy(value) else right
        return value

    def and_expr(self) -> Any:
        value = self.comparison()
        while self.at("&&"):
            self.take()
            right = self.comparison()
            value = right if _truthy(value) else value
        return value

    def comparison(self) -> Any:
        left = self.unary()
        if self.at("==") or self.at("!="):
            op = self.take()[1]
            right = self.unary()
            same = _loose(left) == _loose(right)
            return same if op == "==" else not same
        return left

    def unary(self) -> Any:
        if self.at("!"):
            self.take()
            return not _truthy(self.unary())
        return self.primary()

    def primary(self) -> Any:
        kind, text = self.take()
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "op" and text == "(":
            value = self.or_expr()
            self.take(")")
            return value
        if kind != "name":
            raise self.fail(f"unexpected {text!r}")
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered == "null":
            return None
        if self.at("("):
            return self.call(text)
        if text not in self.contexts:
            raise self.fail(f"unknown context {text!r} (known here: {', '.join(sorted(self.contexts))})")
        return self.path(self.contexts[text])

    def call(self, name: str) -> Any:
        func = _FUNCTIONS.get(name.lower())
        if func is None:
            raise self.fail(f"unknown function {name}()")
        self.take("(")
        args: list[Any] = []
        if not self.at(")"):
            args.append(self.or_expr())
            while self.at(","):
                self.take()
                args.append(self.or_expr())
        self.take(")")
        try:
            return func(*args)
        except TypeError as exc:
            raise self.fail(f"{name}(): wrong arguments ({exc})") from exc

    def path(self, value: Any) -> Any:
        while self.at(".") or self.at("["):
            if self.take()[1] == ".":
                key: Any = self.take()[1]
            else:
                key = self.or_expr()
                self.take("]")
            if isinstance(value, Mapping):
                value = value.get(key)
            elif isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
                value = value[key]
            else:
                value = None
        return value


def _loose(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _eval(source: str, contexts: Mapping[str, Any]) -> Any:
    return _Parser(source, contexts).parse()


def evaluate(text: str, contexts: Mapping[str, Any]) -> Any:
    """``text`` evaluated: a lone ``${{ expr }}`` gives its value (a list stays a list), other text the
    text with every expression interpolated."""
    m = _EXPR.fullmatch(text.strip())
    if m is not None:
        return _eval(m.group(1), contexts)
    return interpolate(text, contexts)


def interpolate(text: str, contexts: Mapping[str, Any]) -> str:
    """``text`` with each ``${{ expr }}`` replaced by its value as a string."""
    return _EXPR.sub(lambda m: to_string(_eval(m.group(1), contexts)), text)
