"""The platform as its CI jobs' OIDC provider: runtime tokens, short-lived ID tokens, signing keys, JWKS.

A job handed to a runner carries a random runtime token (the task's ``context.token``; only its SHA-256
is kept, in ``CiJob.runtime_token_hash``). While the job is ``in_progress`` that token buys ID tokens
(``GET /api/actions/id-token``, as GitHub Actions serves them): JWTs signed ES256 whose claims are
modelled on GitHub's and Forgejo's (iss, sub ``repo:<repository>:ref:<ref>``, aud, iat, nbf, exp,
jti, repository, ref, sha, workflow_ref ``<repository>/.gitea/workflows/build.yaml@<ref>``, run_id,
runner, ...). A signing authority that trusts the platform (``diskci authority serve --oidc-issuer``)
turns one into a certificate for ``<issuer>/<workflow_ref>``.

Signing keys are ``OidcSigningKey`` rows: the private key encrypted with the platform's secret box,
created on first use. ``rotate`` retires the current key; a retired key stays in the JWKS for a
token's lifetime (plus leeway), so tokens signed just before still verify.

Public API: ``issue_runtime_token``, ``job_for_runtime_token``, ``mint_id_token``, ``jwks``,
``signing_key``, ``rotate``, ``check_audience``, ``TOKEN_LIFETIME``, ``ALGORITHM``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import select
from sqlalchemy.orm import Session

from diskci.ci.workflow import WORKFLOW_PATH
from diskci.errors import InvalidRequest, Unauthorized
from diskci.platform.db.models import CiJob, CiStatus, OidcSigningKey, utcnow
from diskci.platform.secrets import SecretBox

__all__ = [
    "ALGORITHM",
    "CLAIMS",
    "TOKEN_LIFETIME",
    "InvalidAudience",
    "RuntimeTokenRefused",
    "check_audience",
    "issue_runtime_token",
    "job_for_runtime_token",
    "jwks",
    "mint_id_token",
    "rotate",
    "signing_key",
]

ALGORITHM = "ES256"
TOKEN_LIFETIME = timedelta(minutes=10)
# how long a retired key is still served beyond a token's lifetime (verifiers' clock skew)
RETIRED_KEY_GRACE = timedelta(minutes=5)
MAX_AUDIENCE = 255
MAX_RUNTIME_TOKEN = 128
_PURPOSE = "oidc_signing_keys.private_key_encrypted"
CLAIMS = (
    "iss",
    "sub",
    "aud",
    "iat",
    "nbf",
    "exp",
    "jti",
    "repository",
    "repository_owner",
    "ref",
    "ref_type",
    "sha",
    "workflow",
    "workflow_ref",
    "job_workflow_ref",
    "run_id",
    "run_attempt",
    "runner",
    "event_name",
)


class RuntimeTokenRefused(Unauthorized):
    """A runtime token that is unknown, or whose job is no longer in progress (one message for both)."""


class InvalidAudience(InvalidRequest):
    """An ID token audience that is empty, too long, or not printable ASCII without spaces."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- runtime tokens ----------------------------------------------------------------------------------


def issue_runtime_token(session: Session, job: CiJob) -> str:
    """A new runtime token for ``job`` (shown only now: the task's ``context.token``); replaces any
    earlier one of the job."""
    token = secrets.token_urlsafe(32)
    job.runtime_token_hash = _digest(token)
    session.flush()
    return token


def job_for_runtime_token(session: Session, token: str | None) -> CiJob:
    """The job ``token`` was issued for, while it is ``in_progress`` on a runner not revoked."""
    refused = RuntimeTokenRefused("unknown runtime token, or its job is no longer in progress")
    if not token or len(token) > MAX_RUNTIME_TOKEN:
        raise refused
    job = session.scalar(select(CiJob).where(CiJob.runtime_token_hash == _digest(token)))
    if job is None or job.status != CiStatus.IN_PROGRESS.value:
        raise refused
    if job.runner is None or job.runner.revoked_at is not None:
        raise refused
    return job


# --- signing keys ------------------------------------------------------------------------------------


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The key as a JWK whose ``kid`` is its RFC 7638 thumbprint."""
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key, as_dict=True)
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    thumbprint = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    return {**members, "kid": _b64url(thumbprint.digest()), "alg": ALGORITHM, "use": "sig"}


def _new_key(session: Session, box: SecretBox, now: datetime) -> OidcSigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = _public_jwk(private.public_key())
    row = OidcSigningKey(
        kid=public["kid"],
        algorithm=ALGORITHM,
        private_key_encrypted=box.encrypt(pem, purpose=_PURPOSE),
        public_jwk=public,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def _current(session: Session) -> OidcSigningKey | None:
    return session.scalar(
        select(OidcSigningKey)
        .where(OidcSigningKey.retired_at.is_(None))
        .order_by(OidcSigningKey.created_at.desc(), OidcSigningKey.id.desc())
        .limit(1)
    )


def signing_key(
    session: Session, box: SecretBox, *, now: datetime | None = None
) -> tuple[OidcSigningKey, ec.EllipticCurvePrivateKey]:
    """The key ID tokens are signed with now (created on first use), and its private half."""
    row = _current(session) or _new_key(session, box, now or utcnow())
    pem = box.decrypt(row.private_key_encrypted, purpose=_PURPOSE)
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey), "OIDC signing keys are P-256 keys"
    return row, private


def rotate(session: Session, box: SecretBox, *, now: datetime | None = None) -> OidcSigningKey:
    """Retire the current key(s) and make a new one; the retired ones stay in the JWKS for a while."""
    now = now or utcnow()
    for row in session.scalars(select(OidcSigningKey).where(OidcSigningKey.retired_at.is_(None))):
        row.retired_at = now
    return _new_key(session, box, now)


def jwks(session: Session, *, now: datetime | None = None) -> dict[str, Any]:
    """The JWK Set verifiers fetch: the current key and those retired less than a token's life ago."""
    cutoff = (now or utcnow()) - TOKEN_LIFETIME - RETIRED_KEY_GRACE
    rows = session.scalars(
        select(OidcSigningKey)
        .where(OidcSigningKey.retired_at.is_(None) | (OidcSigningKey.retired_at > cutoff))
        .order_by(OidcSigningKey.created_at.desc(), OidcSigningKey.id.desc())
    )
    return {"keys": [dict(row.public_jwk) for row in rows]}


# --- ID tokens ---------------------------------------------------------------------------------------


def check_audience(audience: str) -> str:
    """``audience`` if it is 1-255 printable ASCII characters without spaces."""
    if not audience or len(audience) > MAX_AUDIENCE or not all(33 <= ord(c) < 127 for c in audience):
        raise InvalidAudience(
            f"audience {audience[:80]!r}: 1-{MAX_AUDIENCE} printable ASCII characters without spaces"
        )
    return audience


def _ref_type(ref: str) -> str:
    if ref.startswith("refs/tags/"):
        return "tag"
    if ref.startswith("refs/heads/"):
        return "branch"
    return ""


def mint_id_token(
    session: Session,
    job: CiJob,
    *,
    audience: str,
    issuer: str,
    box: SecretBox,
    now: datetime | None = None,
) -> str:
    """An ID token (JWT, ES256, valid ``TOKEN_LIFETIME``) saying which job of which run asks.

    ``issuer`` is the platform's public base URL (the server URL its tasks carry); ``repository`` is
    the platform's name, as the task's context gives it."""
    audience = check_audience(audience)
    run = job.run
    repository = run.platform.name
    workflow_ref = f"{repository}/{WORKFLOW_PATH}@{run.ref}"
    issued = int((now or utcnow()).timestamp())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": f"repo:{repository}:ref:{run.ref}",
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(TOKEN_LIFETIME.total_seconds()),
        "jti": secrets.token_hex(16),
        "repository": repository,
        "repository_owner": "",
        "ref": run.ref,
        "ref_type": _ref_type(run.ref),
        "sha": run.sha,
        "workflow": WORKFLOW_PATH.rsplit("/", 1)[-1],
        "workflow_ref": workflow_ref,
        "job_workflow_ref": workflow_ref,
        "run_id": str(run.id),
        "run_attempt": "1",
        "runner": job.runner.name if job.runner is not None else "",
        "event_name": run.event,
    }
    row, private = signing_key(session, box, now=now)
    return jwt.encode(claims, private, algorithm=ALGORITHM, headers={"kid": row.kid, "typ": "JWT"})
