"""Request body limits, enforced as the bytes arrive and before any route, auth check or parser runs.

``BodyLimitMiddleware`` is a plain ASGI middleware in front of the whole app. Each request's limit is
its path's entry in ``RouteLimits`` (the webhook receiver, boot reports) or the default (every other
route). A ``Content-Length`` over the limit is refused at once, with no byte of the body read; a
malformed one is a 400. A body without one (chunked) is counted while it streams, and the request is
refused the moment it passes the limit: the rest is never read, so memory does not grow with it.
Refusals are diskci errors (``BodyTooLarge``, 413) in the usual ``{"error", "detail"}`` shape.

Starlette's own ``max_body_size`` works after routing and answers in plain text, hence this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diskci.errors import InvalidRequest, PlatformError
from diskci.platform.http.errors import error_response

_MAX_LENGTH_DIGITS = 18  # more would be over any limit anyway, and is not worth converting


class BodyTooLarge(PlatformError):
    http_status = 413


@dataclass(frozen=True)
class RouteLimits:
    """The largest body, in bytes, each path accepts: ``routes[path]``, else ``default``."""

    default: int
    routes: Mapping[str, int] = field(default_factory=dict)

    def for_path(self, path: str) -> int:
        return self.routes.get(path, self.default)


def _declared_length(scope: Scope) -> int | None:
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
    if not values:
        return None
    text = values[0].decode("latin-1").strip()
    if len(values) > 1 or not text.isascii() or not text.isdigit():
        raise InvalidRequest(f"Content-Length {text[:40]!r} is not one byte count")
    if len(text) > _MAX_LENGTH_DIGITS:
        return 10**_MAX_LENGTH_DIGITS
    return int(text)


class _Guarded:
    """One request's receive/send, counting body bytes and answering 413 when they pass ``limit``."""

    def __init__(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        self.limit = limit
        self._scope = scope
        self._receive = receive
        self._send = send
        self.received = 0
        self.exceeded = False
        self.started = False  # a response has begun (the app's or ours)
        self.refused = False  # ours: the app's own messages are dropped

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"request body exceeds the {self.limit}-byte limit")

    async def receive(self) -> Message:
        if self.exceeded:
            raise self._too_large()
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                raise self._too_large()
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start" and not self.started:
            if self.exceeded:  # whatever the app made of the refusal, the answer is ours
                await self.refuse()
                return
            self.started = True
        await self._send(message)

    async def refuse(self) -> None:
        if self.started:
            return
        self.started = self.refused = True
        response = error_response(self._too_large())
        await response(self._scope, self._receive, self._send)


class BodyLimitMiddleware:
    """Refuse request bodies over their route's limit before the app reads them (see the module)."""

    def __init__(self, app: ASGIApp, *, limits: RouteLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope.get("path", ""))
        try:
            declared = _declared_length(scope)
        except InvalidRequest as exc:
            await error_response(exc)(scope, receive, send)
            return
        if declared is not None and declared > limit:
            refusal = BodyTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
            await error_response(refusal)(scope, receive, send)
            return
        guarded = _Guarded(limit, scope, receive, send)
        try:
            await self.app(scope, guarded.receive, guarded.send)
        except Exception:
            if not guarded.exceeded:
                raise
            if guarded.started and not guarded.refused:
                raise
        if guarded.exceeded:
            await guarded.refuse()


async def read_bounded(request: Request, limit: int, what: str) -> bytes:
    """The request's body, refused with ``BodyTooLarge`` the moment it passes ``limit`` bytes (for a
    route with a limit of its own below the middleware's); ``what`` names the body in the refusal."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the {limit}-byte limit of {what}")
        chunks.append(chunk)
    return b"".join(chunks)
