"""Bearer-token authentication for the API: who is calling, and with which role."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError

from diskci.errors import Unauthorized
from diskci.platform.actions.catalog import DatabaseUnavailable
from diskci.platform.actions.tokens import authenticate
from diskci.platform.db.models import ApiToken, Role, utcnow
from diskci.platform.db.session import Database

# last_used_at is a write; do it at most this often per token.
LAST_USED_RESOLUTION = timedelta(minutes=1)

bearer_scheme = HTTPBearer(auto_error=False, description="An API token from `diskci platform token create`.")


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API token's name and role. Every adapter (HTTP, dashboard, MCP) acts as one."""

    name: str
    role: Role

    @property
    def actor(self) -> str:
        """The actor events and actions record for this caller."""
        return f"token:{self.name}"


class MissingToken(Unauthorized):
    pass


def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller of an API route, from ``Authorization: Bearer <token>``."""
    if credentials is None or not credentials.credentials:
        raise MissingToken("missing bearer token: send Authorization: Bearer <token>")
    database: Database = request.app.state.database
    try:
        with database.read_session() as session:
            row = authenticate(session, credentials.credentials)
            principal = Principal(name=row.name, role=Role(row.role))
            stale = row.last_used_at is None or utcnow() - row.last_used_at > LAST_USED_RESOLUTION
            token_id = row.id
        if stale:
            with database.session() as session:
                token = session.get(ApiToken, token_id)
                if token is not None:
                    token.last_used_at = utcnow()
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"cannot check the API token: the database is unavailable: {exc}") from exc
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def authenticate_request(request: Request) -> Principal:
    """``current_principal`` for a route that needs a token only for some requests (any role)."""
    credentials = await bearer_scheme(request)
    return await run_in_threadpool(current_principal, request, credentials)
