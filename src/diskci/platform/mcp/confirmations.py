"""One-time confirmations of destructive actions, stored in the database so that every replica shares them.

A destructive call that was not confirmed issues a ``Confirmation``: a random id bound to the exact
action, its (validated) arguments and the caller, expiring after ``CONFIRMATION_TTL``. ``redeem`` spends
it: once, by the same caller, before it expires, for the same action and the same arguments; anything
else is a ``ConfirmationRefused`` naming the reason. Every issue, acceptance and refusal is an event
with its actor (``confirmation_requested``, ``confirmation_accepted``, ``confirmation_refused``).

Every adapter uses these: the MCP tools (``request_confirmation``), the HTTP API (a 428 answer with the
id, redeemed by repeating the call with ``X-Diskci-Confirmation``) and the CLI (``--yes`` issues and
redeems at once, ``confirm_at_once``). ``bound_arguments`` is what a confirmation binds: the arguments
as the action's input validated them (after the caller's role, as ``invoke()`` checks it). Before a
confirmation is issued each adapter shows what the call would do: the action's preview
(``catalog.preview_action``: the objects affected), also kept in the ``confirmation_requested`` event.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from diskci.errors import Forbidden
from diskci.platform.actions.catalog import ActionSpec, check_role, parse_input
from diskci.platform.actions.events import record_event
from diskci.platform.db.models import Confirmation, Role, utcnow
from diskci.platform.db.session import Database

CONFIRMATION_TTL = timedelta(minutes=5)


class ConfirmationRefused(Forbidden):
    """A confirmation that cannot be used: unknown, foreign, spent, expired, or for something else.

    ``reason`` is one of ``unknown``, ``foreign``, ``replayed``, ``expired``, ``changed``,
    ``declined``, ``cancelled``."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message, hint="Nothing was changed. Call the action again for a new confirmation.")


@dataclass(frozen=True)
class Issued:
    confirmation_id: str
    expires_at: datetime


def bound_arguments(spec: ActionSpec, data: Any, role: Role) -> dict[str, Any]:
    """``data`` validated as ``spec``'s input for a caller with ``role``, as the JSON a confirmation binds."""
    check_role(spec, role)
    return parse_input(spec, data).model_dump(mode="json", by_alias=True)


def issue(
    database: Database,
    action: str,
    arguments: dict[str, Any],
    *,
    actor: str,
    would_affect: dict[str, Any] | None = None,
) -> Issued:
    """Store a new confirmation of ``action`` with ``arguments`` for ``actor`` (and its event, with
    ``would_affect``: the action's preview, what the operator was shown)."""
    now = utcnow()
    row = Confirmation(
        confirmation_id="cfm_" + secrets.token_urlsafe(24),
        action=action,
        arguments=arguments,
        actor=actor,
        created_at=now,
        expires_at=now + CONFIRMATION_TTL,
    )
    with database.session() as session:
        session.add(row)
        session.flush()
        record_event(
            session,
            "confirmation_requested",
            subject=action,
            payload={
                "actor": actor,
                "action": action,
                "arguments": arguments,
                "confirmation_id": row.confirmation_id,
                "expires_at": row.expires_at.isoformat(),
                **({"would_affect": would_affect} if would_affect else {}),
            },
        )
        return Issued(confirmation_id=row.confirmation_id, expires_at=row.expires_at)


def redeem(
    database: Database, confirmation_id: str, action: str, arguments: dict[str, Any], *, actor: str
) -> None:
    """Spend ``confirmation_id`` for ``action`` with ``arguments`` as ``actor``, or ConfirmationRefused.

    A foreign caller's attempt leaves the confirmation as it was; any other refusal spends it (a
    confirmation is tried once). The acceptance or refusal is recorded as an event either way."""
    refusal: ConfirmationRefused | None = None
    now = utcnow()
    with database.session() as session:
        row = session.scalar(select(Confirmation).where(Confirmation.confirmation_id == confirmation_id))
        if row is None:
            refusal = ConfirmationRefused("unknown", f"no confirmation {confirmation_id!r}")
        elif row.actor != actor:
            refusal = ConfirmationRefused(
                "foreign", f"confirmation {confirmation_id!r} was issued to another caller"
            )
        elif row.used_at is not None:
            refusal = ConfirmationRefused("replayed", f"confirmation {confirmation_id!r} was already used")
        elif row.expires_at <= now:
            refusal = ConfirmationRefused(
                "expired", f"confirmation {confirmation_id!r} expired at {row.expires_at}"
            )
        elif row.action != action or row.arguments != arguments:
            refusal = ConfirmationRefused(
                "changed",
                f"confirmation {confirmation_id!r} is for {row.action} with other arguments: "
                "it confirms exactly what it was issued for",
            )
        if row is not None and (refusal is None or refusal.reason in ("expired", "changed")):
            # Spend it: once, even when two replicas race (only one UPDATE finds it unspent).
            spent = session.execute(
                update(Confirmation)
                .where(Confirmation.id == row.id, Confirmation.used_at.is_(None))
                .values(used_at=now)
            )
            if refusal is None and getattr(spent, "rowcount", 1) != 1:
                refusal = ConfirmationRefused(
                    "replayed", f"confirmation {confirmation_id!r} was already used"
                )
        payload = {
            "actor": actor,
            "action": action,
            "arguments": arguments,
            "confirmation_id": confirmation_id,
        }
        if refusal is None:
            record_event(session, "confirmation_accepted", subject=action, payload={**payload, "via": "id"})
        else:
            record_event(
                session,
                "confirmation_refused",
                subject=action,
                reason=refusal.reason,
                payload={**payload, "via": "id"},
            )
    if refusal is not None:
        raise refusal


def record_answer(
    database: Database, action: str, arguments: dict[str, Any], *, actor: str, accepted: bool, reason: str
) -> None:
    """Record an operator's answer to an elicited confirmation (``reason``: accepted, declined, cancelled)."""
    payload = {"actor": actor, "action": action, "arguments": arguments, "via": "elicitation"}
    with database.session() as session:
        if accepted:
            record_event(session, "confirmation_accepted", subject=action, payload=payload)
        else:
            record_event(session, "confirmation_refused", subject=action, reason=reason, payload=payload)


def confirm_at_once(database: Database, action: str, arguments: dict[str, Any], *, actor: str) -> None:
    """Issue a confirmation and redeem it at once: the caller confirmed beforehand (the CLI's ``--yes``).

    Both events are recorded, as for a confirmation answered later."""
    issued = issue(database, action, arguments, actor=actor)
    redeem(database, issued.confirmation_id, action, arguments, actor=actor)
