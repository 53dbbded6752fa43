"""The MCP server's transports: stdio as a named API token, and streamable HTTP at ``/mcp`` on the API.

Over stdio the caller is the API token named on the command line (looked up at every request, so a
revoked token stops working at once). Over HTTP every request carries ``Authorization: Bearer <token>``,
checked like the API's (``platform.http.auth``); the caller is left in the ASGI scope for the tools.
The HTTP transport is mounted on the FastAPI app by ``mount_mcp``, its session manager run in the app's
lifespan (a mounted app's own lifespan does not run).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import FastAPI
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from diskci.errors import DiskciError, Unauthorized
from diskci.platform.actions.catalog import DatabaseUnavailable
from diskci.platform.db.models import ApiToken, Role
from diskci.platform.db.session import Database
from diskci.platform.http.auth import MissingToken, authenticate_request
from diskci.platform.http.errors import error_response
from diskci.platform.mcp.server import CALLER_SCOPE_KEY, Caller, build_server
from diskci.platform.ports import Ports
from diskci.platform.settings import PlatformSettings

MCP_PATH = "/mcp"


class UnknownTokenName(Unauthorized):
    """The API token named for the stdio server does not exist or was revoked."""


def named_caller(database: Database, name: str) -> Caller:
    """The caller acting as the live API token ``name``."""
    try:
        with database.read_session() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.name == name))
            if row is None or row.revoked_at is not None:
                raise UnknownTokenName(
                    f"no live API token named {name!r}",
                    hint="Create one: diskci platform token create NAME --role ROLE",
                )
            return Caller(name=row.name, role=Role(row.role))
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(
            f"cannot look up the API token: the database is unavailable: {exc}"
        ) from exc


def run_stdio(
    *,
    database: Database,
    settings: PlatformSettings,
    ports: Ports,
    token_name: str,
    read_only: bool = False,
) -> None:
    """Serve MCP on stdin/stdout as the API token ``token_name`` until the client closes the stream."""
    named_caller(database, token_name)  # fail at start when the token is not there

    async def caller_of(_ctx: ServerRequestContext[Any, Any] | None) -> Caller:
        return await anyio.to_thread.run_sync(named_caller, database, token_name)

    server = build_server(
        database=database, settings=settings, ports=ports, caller_of=caller_of, read_only=read_only
    )
    server.run("stdio")


async def _scope_caller(ctx: ServerRequestContext[Any, Any] | None) -> Caller:
    request = ctx.request if ctx is not None else None
    caller = getattr(request, "scope", {}).get(CALLER_SCOPE_KEY) if request is not None else None
    if not isinstance(caller, Caller):
        raise MissingToken("missing bearer token: send Authorization: Bearer <token>")
    return caller


class _BearerAuth:
    """Only requests with a live bearer token reach the MCP app; the caller goes into the scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            # The API's own check (scope["app"] is the FastAPI app, whose state has the database).
            principal = await authenticate_request(Request(scope))
        except DiskciError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope[CALLER_SCOPE_KEY] = Caller(name=principal.name, role=principal.role)
        await self.app(scope, receive, send)


def _security(settings: PlatformSettings) -> TransportSecuritySettings:
    """Host and Origin checks (DNS rebinding): this machine's loopback names and the public URL."""
    public = urlsplit(settings.public_base_url)
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", f"{settings.bind_host}:*", public.netloc]
    origins = [
        "http://127.0.0.1:*",
        "http://localhost:*",
        "http://[::1]:*",
        f"{public.scheme}://{public.netloc}",
    ]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def mount_mcp(
    app: FastAPI, *, database: Database, settings: PlatformSettings, ports: Ports
) -> MCPServer[Any]:
    """Serve MCP (streamable HTTP) at ``/mcp`` on ``app``, behind the API's bearer tokens (only the
    read-only tools with ``settings.mcp_read_only``, as ``diskci platform mcp --read-only`` does)."""
    server = build_server(
        database=database,
        settings=settings,
        ports=ports,
        caller_of=_scope_caller,
        read_only=settings.mcp_read_only,
    )

    def streamable_app() -> ASGIApp:
        # Each call makes a new session manager on ``server``; a manager runs only once, so every
        # lifespan of the app (a test client opens several) gets a fresh one.
        return server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            max_request_body_size=settings.api_max_body_bytes,
            transport_security=_security(settings),
            host=settings.bind_host,
        )

    endpoint = _BearerAuth(streamable_app())
    app.router.routes.append(Route(MCP_PATH, endpoint, include_in_schema=False))
    previous = app.router.lifespan_context
    lifespans = 0

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        nonlocal lifespans
        if lifespans:
            endpoint.app = streamable_app()
        lifespans += 1
        async with server.session_manager.run(), previous(a) as state:
            yield state

    app.router.lifespan_context = lifespan
    return server
