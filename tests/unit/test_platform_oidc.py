"""``platform.ci.oidc``: a job's runtime token buys ID tokens only while the job runs; the tokens carry
the job's claims, are signed with a key kept encrypted, and verify with the JWKS across a rotation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import jwt
import pytest

from diskci.platform.ci import oidc, scheduler
from diskci.platform.db.models import CiJob, OidcSigningKey, utcnow
from diskci.platform.db.session import Database
from diskci.platform.secrets import SecretBox
from oidc_helpers import REF, SHA, platform_row, start_job

ISSUER = "http://127.0.0.1:8480"
BOX = SecretBox(key=b"k" * 32)


def _mint(db: Database, job_id: int, audience: str = "sigstore", **kw: Any) -> str:
    with db.session() as session:
        job = session.get(CiJob, job_id)
        assert job is not None
        return oidc.mint_id_token(session, job, audience=audience, issuer=ISSUER, box=BOX, **kw)


def _decode(db: Database, token: str, audience: str = "sigstore") -> dict[str, Any]:
    with db.read_session() as session:
        keys = jwt.PyJWKSet.from_dict(oidc.jwks(session))
    key = keys[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience, issuer=ISSUER
    )
    return claims


def test_an_id_token_carries_the_jobs_claims(platform_db: Database) -> None:
    job_id, _ = start_job(platform_db, platform_row(platform_db, "debian-12"), runner_name="amd-1")
    token = _mint(platform_db, job_id)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    claims = _decode(platform_db, token)
    with platform_db.read_session() as session:
        job = session.get(CiJob, job_id)
        assert job is not None
        run_id = job.run_id
    workflow_ref = f"debian-12/.gitea/workflows/build.yaml@{REF}"
    assert {k: claims[k] for k in claims if k not in ("iat", "nbf", "exp", "jti")} == {
        "iss": ISSUER,
        "sub": f"repo:debian-12:ref:{REF}",
        "aud": "sigstore",
        "repository": "debian-12",
        "repository_owner": "",
        "ref": REF,
        "ref_type": "tag",
        "sha": SHA,
        "workflow": "build.yaml",
        "workflow_ref": workflow_ref,
        "job_workflow_ref": workflow_ref,
        "run_id": str(run_id),
        "run_attempt": "1",
        "runner": "amd-1",
        "event_name": "push",
    }
    assert claims["exp"] - claims["iat"] == 600 and claims["nbf"] == claims["iat"]
    assert set(claims) == set(oidc.CLAIMS)
    assert _decode(platform_db, _mint(platform_db, job_id))["jti"] != claims["jti"]


def test_an_expired_token_and_another_audience_do_not_verify(platform_db: Database) -> None:
    job_id, _ = start_job(platform_db, platform_row(platform_db))
    old = _mint(platform_db, job_id, now=utcnow() - timedelta(minutes=11))
    with pytest.raises(jwt.ExpiredSignatureError):
        _decode(platform_db, old)
    other = _mint(platform_db, job_id, audience="https://elsewhere")
    with pytest.raises(jwt.InvalidAudienceError):
        _decode(platform_db, other)
    assert _decode(platform_db, other, audience="https://elsewhere")["aud"] == "https://elsewhere"


@pytest.mark.parametrize("audience", ["", "a b", "x" * 256, "caf\u00e9", "tab\t"])
def test_an_audience_is_bounded_printable_ascii(platform_db: Database, audience: str) -> None:
    job_id, _ = start_job(platform_db, platform_row(platform_db))
    with pytest.raises(oidc.InvalidAudience, match="printable ASCII"):
        _mint(platform_db, job_id, audience=audience)


def test_the_runtime_token_works_only_while_its_job_is_in_progress(platform_db: Database) -> None:
    job_id, token = start_job(platform_db, platform_row(platform_db))
    with platform_db.session() as session:
        job = oidc.job_for_runtime_token(session, token)
        assert job.id == job_id
        assert job.runtime_token_hash and token not in job.runtime_token_hash  # only its digest is kept
        for wrong in ("", "nope", token + "x", "x" * 1000):
            with pytest.raises(oidc.RuntimeTokenRefused, match="no longer in progress"):
                oidc.job_for_runtime_token(session, wrong)
        scheduler.record_state(session, job, conclusion="success")
    with platform_db.session() as session, pytest.raises(oidc.RuntimeTokenRefused):
        oidc.job_for_runtime_token(session, token)  # the job ended: its token buys nothing more


def test_a_revoked_runners_job_token_is_refused(platform_db: Database) -> None:
    _, token = start_job(platform_db, platform_row(platform_db))
    with platform_db.session() as session:
        job = oidc.job_for_runtime_token(session, token)
        assert job.runner is not None
        job.runner.revoked_at = utcnow()
    with platform_db.session() as session, pytest.raises(oidc.RuntimeTokenRefused):
        oidc.job_for_runtime_token(session, token)


def test_the_key_is_made_once_kept_encrypted_and_rotation_keeps_the_old_one_a_while(
    platform_db: Database,
) -> None:
    job_id, _ = start_job(platform_db, platform_row(platform_db))
    before = _mint(platform_db, job_id)
    _mint(platform_db, job_id)
    with platform_db.session() as session:
        [row] = session.query(OidcSigningKey).all()
        assert row.private_key_encrypted.startswith("v1.") and "PRIVATE" not in row.private_key_encrypted
        assert set(row.public_jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        assert "d" not in row.public_jwk
        old_kid = row.kid
        new = oidc.rotate(session, BOX)
        assert new.kid != old_kid
    after = _mint(platform_db, job_id)
    assert jwt.get_unverified_header(after)["kid"] != old_kid
    assert _decode(platform_db, before)["iss"] == ISSUER  # signed before the rotation: still verifies
    with platform_db.read_session() as session:
        assert {k["kid"] for k in oidc.jwks(session)["keys"]} == {old_kid, new.kid}
        later = utcnow() + oidc.TOKEN_LIFETIME + oidc.RETIRED_KEY_GRACE + timedelta(seconds=1)
        assert [k["kid"] for k in oidc.jwks(session, now=later)["keys"]] == [new.kid]


def test_a_token_signed_by_another_key_does_not_verify(platform_db: Database) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    job_id, _ = start_job(platform_db, platform_row(platform_db))
    good = _mint(platform_db, job_id)
    header = jwt.get_unverified_header(good)
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers=header)
    with pytest.raises(jwt.InvalidSignatureError):
        _decode(platform_db, forged)
