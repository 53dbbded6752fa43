"""API tokens: bearer tokens with a role (admin, operator, viewer); only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from diskci.errors import Conflict, NotFound, Unauthorized
from diskci.platform.actions.catalog import ActionContext, ActionModel, Empty, action
from diskci.platform.actions.events import record_event
from diskci.platform.db.models import ApiToken, Role, utcnow

TOKEN_PREFIX = "dci_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class InvalidToken(Unauthorized):
    pass


class TokenExists(Conflict):
    pass


class TokenNotFound(NotFound):
    pass


def authenticate(session: Session, token: str) -> ApiToken:
    """The live token row for a presented bearer token, or InvalidToken (one message for every cause)."""
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None:
        raise InvalidToken("invalid or revoked API token")
    return row


TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"


class CreateTokenInput(ActionModel):
    name: str = Field(pattern=TOKEN_NAME)
    role: Role


class CreateTokenOutput(ActionModel):
    name: str
    role: Role
    token: str = Field(description="Shown only now: the bearer token (Authorization: Bearer <token>).")
    created_at: datetime


def create_token(session: Session, name: str, role: Role, *, actor: str) -> CreateTokenOutput:
    """Create a token (used by the action and by ``diskci platform token create``)."""
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenExists(f"an API token named {name!r} already exists")
    token = new_token()
    row = ApiToken(name=name, role=role.value, token_hash=hash_token(token), created_at=utcnow())
    session.add(row)
    session.flush()
    record_event(session, "api_token_created", subject=name, payload={"actor": actor, "role": role.value})
    return CreateTokenOutput(name=name, role=role, token=token, created_at=row.created_at)


@action("system_create_api_token", CreateTokenInput, CreateTokenOutput, Role.ADMIN)
def system_create_api_token(ctx: ActionContext, data: CreateTokenInput) -> CreateTokenOutput:
    """Create an API bearer token with a role; the token is shown once.

    Example: {"name": "ci-dashboard", "role": "viewer"}
    """
    return create_token(ctx.session, data.name, data.role, actor=ctx.actor)


class TokenOut(ActionModel):
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ListTokensOutput(ActionModel):
    tokens: list[TokenOut]


@action("system_list_api_tokens", Empty, ListTokensOutput, Role.ADMIN, read_only=True)
def system_list_api_tokens(ctx: ActionContext, data: Empty) -> ListTokensOutput:
    """List API tokens (names, roles and times; never the tokens).

    Example: {}
    """
    rows = ctx.session.scalars(select(ApiToken).order_by(ApiToken.name))
    return ListTokensOutput(
        tokens=[
            TokenOut(
                name=t.name,
                role=t.role,
                created_at=t.created_at,
                last_used_at=t.last_used_at,
                revoked_at=t.revoked_at,
            )
            for t in rows
        ]
    )


class RevokeTokenInput(ActionModel):
    name: str = Field(pattern=TOKEN_NAME, description="as it was created (no token has another name)")


def preview_revoke_api_token(ctx: ActionContext, data: RevokeTokenInput) -> dict[str, object]:
    """What revoking the token would affect: the token (its role, when it was last used)."""
    row = ctx.session.scalar(select(ApiToken).where(ApiToken.name == data.name))
    if row is None:
        raise TokenNotFound(f"no API token named {data.name!r}")
    last_used = row.last_used_at.isoformat() if row.last_used_at is not None else None
    return {
        "token": {"name": row.name, "role": row.role, "last_used_at": last_used},
        "already_revoked": row.revoked_at is not None,
    }


@action(
    "system_revoke_api_token",
    RevokeTokenInput,
    TokenOut,
    Role.ADMIN,
    destructive=True,
    preview=preview_revoke_api_token,
)
def system_revoke_api_token(ctx: ActionContext, data: RevokeTokenInput) -> TokenOut:
    """Revoke an API token: it stops working at once.

    Example: {"name": "ci-dashboard"}
    """
    row = ctx.session.scalar(select(ApiToken).where(ApiToken.name == data.name))
    if row is None:
        raise TokenNotFound(f"no API token named {data.name!r}")
    if row.revoked_at is None:
        row.revoked_at = ctx.now
        ctx.session.flush()
        record_event(ctx.session, "api_token_revoked", subject=row.name, payload={"actor": ctx.actor})
    return TokenOut(
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )
