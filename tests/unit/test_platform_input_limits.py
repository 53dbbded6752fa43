"""The platform's input guards on their own: the streamed body limit (an ASGI middleware, driven here
by hand so that every byte the app pulls is counted) and the JSON reader that refuses what would break
later (deep nesting, huge integers, lone surrogates, NaN)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from diskci.errors import InvalidRequest
from diskci.platform.http.jsonbody import MAX_DEPTH, parse_json, parse_json_object
from diskci.platform.http.limits import BodyLimitMiddleware, RouteLimits

LIMITS = RouteLimits(default=1000, routes={"/small": 10})


class Probe:
    """An app that reads the whole body, and a client that streams ``chunks`` and counts the pulls."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0
        self.app_read = 0
        self.app_called = False
        self.sent: list[dict[str, Any]] = []

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        self.app_called = True
        while True:
            message = await receive()
            self.app_read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive(self) -> dict[str, Any]:
        self.pulled += 1
        if self.pulled > len(self.chunks):
            return {"type": "http.disconnect"}
        last = self.pulled == len(self.chunks)
        return {"type": "http.request", "body": self.chunks[self.pulled - 1], "more_body": not last}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def run(self, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any] | bytes]:
        middleware = BodyLimitMiddleware(self.app, limits=LIMITS)
        scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
        anyio.run(middleware, scope, self.receive, self.send)
        status = self.sent[0]["status"]
        body = b"".join(m.get("body", b"") for m in self.sent[1:])
        return status, json.loads(body) if status != 200 else body


def test_a_body_within_the_limit_reaches_the_app() -> None:
    probe = Probe([b"x" * 400, b"y" * 400])
    assert probe.run("/any", [(b"content-length", b"800")]) == (200, b"ok")
    assert probe.app_read == 800


def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs() -> None:
    probe = Probe([b"x" * 1024] * 64)
    status, body = probe.run("/any", [(b"content-length", str(64 * 1024 * 1024).encode())])
    assert status == 413 and not probe.app_called and probe.pulled == 0
    assert body == {
        "error": "BodyTooLarge",
        "detail": "request body of 67108864 bytes exceeds the 1000-byte limit",
    }


def test_a_streamed_body_is_cut_off_at_the_limit() -> None:
    probe = Probe([b"x" * 300] * 1000)  # 300 kB, no Content-Length
    status, body = probe.run("/any", [])
    assert status == 413 and isinstance(body, dict) and body["error"] == "BodyTooLarge"
    assert "exceeds the 1000-byte limit" in body["detail"]
    assert probe.pulled == 4  # the fourth chunk passed the limit: nothing after it was read


def test_each_route_has_its_own_limit() -> None:
    assert Probe([b"x" * 11]).run("/small", [])[0] == 413
    assert Probe([b"x" * 11]).run("/other", [])[0] == 200
    assert LIMITS.for_path("/small") == 10 and LIMITS.for_path("/x") == 1000


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1e3", b"\xd9\xa3"])
def test_a_malformed_content_length_is_a_400(value: bytes) -> None:
    probe = Probe([b"{}"])
    status, body = probe.run("/any", [(b"content-length", value)])
    assert status == 400 and not probe.app_called
    assert isinstance(body, dict) and body["error"] == "InvalidRequest" and "Content-Length" in body["detail"]


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"[" * 100_000 + b"]" * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
        (b'{"id": ' + b"7" * 5000 + b"}", "has 5000 digits"),
        (b'{"id": 9223372036854775808}', "does not fit in 64 bits"),
        (b'{"id": -9223372036854775809}', "does not fit in 64 bits"),
        (b'{"name": "x\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
        (b'{"x": NaN}', "NaN is not JSON"),
        (b'{"x": 1e999}', "out of range"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{broken", "not JSON"),
    ],
)
def test_json_that_would_break_later_is_refused(raw: bytes, detail: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^thing: ") as caught:
        parse_json(raw, what="thing")
    assert detail in caught.value.message


def test_json_within_the_rules_is_read() -> None:
    nested = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_json(nested, what="t") is not None
    assert parse_json(b'{"a": [9223372036854775807, -9223372036854775808, 1.5]}', what="t") == {
        "a": [2**63 - 1, -(2**63), 1.5]
    }
    assert parse_json(b'"\\ud83d\\ude00"', what="t") == "\U0001f600"  # a surrogate pair is a character
    assert parse_json_object(b"", what="t") == {}
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        parse_json_object(b"[1]", what="t")
