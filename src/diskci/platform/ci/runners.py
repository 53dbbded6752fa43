"""CI workers' credentials: one-time registration tokens, registration, and each call's authentication.

A registration token (``new_registration_token``) works once and until it expires; only its SHA-256
is kept. ``register`` spends it (atomically: two workers racing with one token get one runner) and
creates a ``CiRunner`` with a fresh uuid and token, of which again only the SHA-256 is kept.
``authenticate`` checks a runner's ``x-runner-uuid``/``x-runner-token`` pair on every call; a revoked
runner's token stops working at once. A runner label may be Gitea's ``name:kind://image`` form: only
the name counts when matching a job's ``runs-on`` (``label_names``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from diskci.errors import InvalidRequest, Unauthorized
from diskci.platform.db.models import CiRunner, CiRunnerStatus, RunnerRegistrationToken, utcnow

__all__ = [
    "REGISTRATION_TTL",
    "InvalidRunnerLabels",
    "RegistrationTokenRefused",
    "RunnerUnauthenticated",
    "authenticate",
    "label_names",
    "new_registration_token",
    "register",
]

REGISTRATION_TTL = timedelta(hours=1)
MAX_LABELS = 64


class RegistrationTokenRefused(Unauthorized):
    """A registration token that is unknown, already used or expired (one message for every cause)."""


class RunnerUnauthenticated(Unauthorized):
    """A runner call without a live runner's uuid and token."""


class InvalidRunnerLabels(InvalidRequest):
    """Labels a runner may not have: empty, too many, too long, or with spaces."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def label_names(labels: Iterable[str]) -> set[str]:
    """The names of runner labels (``amd64:host`` is ``amd64``)."""
    return {label.split(":", 1)[0] for label in labels}


def check_labels(labels: list[str]) -> list[str]:
    if len(labels) > MAX_LABELS:
        raise InvalidRunnerLabels(f"{len(labels)} labels: at most {MAX_LABELS}")
    for label in labels:
        if not label or len(label) > 255 or any(c.isspace() for c in label):
            raise InvalidRunnerLabels(f"label {label[:80]!r}: not 1-255 characters without spaces")
    return list(dict.fromkeys(labels))


def new_registration_token(
    session: Session,
    *,
    labels: list[str] | None = None,
    instance_id: int | None = None,
    ttl: timedelta = REGISTRATION_TTL,
    now: datetime | None = None,
) -> str:
    """A one-time registration token (shown only now); ``labels`` are given a runner that names none."""
    now = now or utcnow()
    token = secrets.token_hex(20)
    session.add(
        RunnerRegistrationToken(
            token_hash=_digest(token),
            labels=check_labels(labels or []),
            instance_id=instance_id,
            created_at=now,
            expires_at=now + ttl,
        )
    )
    session.flush()
    return token


def register(
    session: Session,
    *,
    registration_token: str,
    name: str,
    labels: list[str],
    version: str = "",
    now: datetime | None = None,
) -> tuple[CiRunner, str]:
    """Spend ``registration_token`` and create the runner; returns it and its token (shown only now)."""
    now = now or utcnow()
    row = session.scalar(
        select(RunnerRegistrationToken).where(
            RunnerRegistrationToken.token_hash == _digest(registration_token)
        )
    )
    refused = RegistrationTokenRefused("runner registration token unknown, already used or expired")
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise refused
    spent = session.execute(
        update(RunnerRegistrationToken)
        .where(RunnerRegistrationToken.id == row.id, RunnerRegistrationToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        raise refused
    if not name or len(name) > 255:
        raise InvalidRequest("a runner's name must be 1-255 characters")
    token = secrets.token_hex(20)
    runner = CiRunner(
        uuid=str(uuid.uuid4()),
        name=name,
        labels=check_labels(labels or row.labels),
        version=version[:64],
        token_hash=_digest(token),
        status=CiRunnerStatus.ONLINE.value,
        instance_id=row.instance_id,
        created_at=now,
        last_seen=now,
    )
    session.add(runner)
    session.flush()
    session.execute(
        update(RunnerRegistrationToken)
        .where(RunnerRegistrationToken.id == row.id)
        .values(runner_id=runner.id)
        .execution_options(synchronize_session=False)
    )
    return runner, token


def authenticate(session: Session, runner_uuid: str | None, token: str | None) -> CiRunner:
    """The live runner the two headers name, or ``RunnerUnauthenticated``."""
    refused = RunnerUnauthenticated("unknown runner, or a wrong or revoked runner token")
    if not runner_uuid or not token or len(runner_uuid) > 36:
        raise refused
    runner = session.scalar(select(CiRunner).where(CiRunner.uuid == runner_uuid))
    if runner is None or runner.revoked_at is not None:
        raise refused
    if not hmac.compare_digest(runner.token_hash, _digest(token)):
        raise refused
    return runner
