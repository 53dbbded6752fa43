"""The dashboard's session: a signed cookie naming the API token by its hash, and CSRF tokens.

Sign-in takes an API token once. The cookie (HTTP-only, SameSite=Strict, Secure over https) holds
``{"h": sha256 of the token, "c": a random CSRF token}``, signed with the platform's secret key by
itsdangerous and good for ``SESSION_MAX_AGE``; never the token itself. Each request looks the hash up
again, so a revoked token ends its sessions at once, and the role is always the token's current one.
Every form carries the session's CSRF token, compared on POST. The sign-in form, before a session,
carries one bound to a short-lived signed pre-session cookie instead.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from diskci.errors import Forbidden, Unauthorized
from diskci.platform.actions.catalog import DatabaseUnavailable
from diskci.platform.actions.tokens import authenticate, hash_token
from diskci.platform.db.models import ApiToken, Role
from diskci.platform.db.session import Database
from diskci.platform.http.auth import Principal

SESSION_COOKIE = "diskci_session"
SIGNIN_COOKIE = "diskci_signin"
SESSION_MAX_AGE = 12 * 3600
SIGNIN_MAX_AGE = 3600


class NotSignedIn(Unauthorized):
    pass


class CsrfRefused(Forbidden):
    pass


@dataclass(frozen=True)
class WebSession:
    """Who is signed in (the token's name and current role) and the session's CSRF token."""

    principal: Principal
    csrf: str

    @property
    def actor(self) -> str:
        return self.principal.actor


def _serializer(request: Request, purpose: str) -> URLSafeTimedSerializer:
    key = request.app.state.settings.resolve_secret_key()
    return URLSafeTimedSerializer(key, salt=f"diskci.dashboard.{purpose}")


def _loads(request: Request, purpose: str, cookie: str, max_age: int) -> Any:
    value = request.cookies.get(cookie)
    if not value:
        return None
    try:
        return _serializer(request, purpose).loads(value, max_age=max_age)
    except BadSignature:
        return None


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def _principal_by_hash(database: Database, digest: str) -> Principal | None:
    try:
        with database.read_session() as session:
            row = session.scalar(
                select(ApiToken).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
            )
            return None if row is None else Principal(name=row.name, role=Role(row.role))
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"cannot check the session: the database is unavailable: {exc}") from exc


def current_session(request: Request) -> WebSession | None:
    """The signed-in session of this request, or None (no cookie, a bad or old one, a revoked token)."""
    data = _loads(request, "session", SESSION_COOKIE, SESSION_MAX_AGE)
    if not isinstance(data, dict) or not isinstance(data.get("h"), str) or not isinstance(data.get("c"), str):
        return None
    principal = _principal_by_hash(request.app.state.database, data["h"])
    return None if principal is None else WebSession(principal, data["c"])


def require_session(request: Request) -> WebSession:
    session = current_session(request)
    if session is None:
        raise NotSignedIn("not signed in: sign in with an API token")
    return session


def check_csrf(expected: str, form: dict[str, str]) -> None:
    """Refuse a form post whose ``csrf`` field is not the session's (or the sign-in form's) token."""
    sent = form.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfRefused("the form's CSRF token is missing or wrong: reload the page and try again")


def signin_csrf(request: Request) -> str:
    """The sign-in form's CSRF token: the pre-session cookie's, or a new one (set by ``keep_signin_csrf``)."""
    value = _loads(request, "signin", SIGNIN_COOKIE, SIGNIN_MAX_AGE)
    return value if isinstance(value, str) else secrets.token_urlsafe(32)


def keep_signin_csrf(request: Request, response: Response, csrf: str) -> None:
    _set_cookie(request, response, SIGNIN_COOKIE, _serializer(request, "signin").dumps(csrf), SIGNIN_MAX_AGE)


def expected_signin_csrf(request: Request) -> str:
    value = _loads(request, "signin", SIGNIN_COOKIE, SIGNIN_MAX_AGE)
    return value if isinstance(value, str) else ""


def sign_in(request: Request, response: Response, token: str) -> Principal:
    """Check ``token`` (InvalidToken if it is not a live one) and start a session on ``response``."""
    database: Database = request.app.state.database
    try:
        with database.read_session() as session:
            row = authenticate(session, token)
            principal = Principal(name=row.name, role=Role(row.role))
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"cannot check the API token: the database is unavailable: {exc}") from exc
    value = _serializer(request, "session").dumps({"h": hash_token(token), "c": secrets.token_urlsafe(32)})
    _set_cookie(request, response, SESSION_COOKIE, value, SESSION_MAX_AGE)
    response.delete_cookie(SIGNIN_COOKIE, path="/")
    return principal


def sign_out(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
