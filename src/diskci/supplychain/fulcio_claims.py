"""Fulcio's certificate extensions taken from a CI job's ID token claims.

Public API: ``ci_extensions(claims) -> dict[ObjectIdentifier, str]``, the values Fulcio puts in the
1.3.6.1.4.1.57264.1.* extensions (DER UTF8String) of a certificate for a GitHub-Actions-shaped token
(https://github.com/sigstore/fulcio/blob/main/docs/oid-info.md), which the platform's job tokens and
Forgejo's are: build signer URI and digest, source repository URI, digest and ref, build config URI
and digest, build trigger and run invocation URI. Claims a token lacks give no extension. The issuer
(.1.1 and .1.8) and the SAN are the authority's own business (``SigningAuthority.issue_certificate``).
"""

from __future__ import annotations

from typing import Any

from cryptography.x509.oid import ObjectIdentifier

from diskci.supplychain.id_token import identity_of

__all__ = ["OID", "ci_extensions"]


def _oid(n: int) -> ObjectIdentifier:
    return ObjectIdentifier(f"1.3.6.1.4.1.57264.1.{n}")


OID = {
    "build_signer_uri": _oid(9),
    "build_signer_digest": _oid(10),
    "source_repository_uri": _oid(12),
    "source_repository_digest": _oid(13),
    "source_repository_ref": _oid(14),
    "build_config_uri": _oid(18),
    "build_config_digest": _oid(19),
    "build_trigger": _oid(20),
    "run_invocation_uri": _oid(21),
}


def _text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    return value if isinstance(value, str) else ""


def ci_extensions(claims: dict[str, Any]) -> dict[ObjectIdentifier, str]:
    """The Fulcio extensions for a verified token's ``claims`` (``identity_of`` already accepted them)."""
    server = _text(claims, "iss").rstrip("/")
    repository = _text(claims, "repository")
    sha = _text(claims, "sha")
    signer = identity_of(claims)
    job_ref = _text(claims, "job_workflow_ref")
    values = {
        "build_signer_uri": f"{server}/{job_ref}" if job_ref else signer,
        "build_signer_digest": _text(claims, "job_workflow_sha") or sha,
        "source_repository_uri": f"{server}/{repository}",
        "source_repository_digest": sha,
        "source_repository_ref": _text(claims, "ref"),
        "build_config_uri": signer,
        "build_config_digest": sha,
        "build_trigger": _text(claims, "event_name"),
    }
    run_id, attempt = _text(claims, "run_id"), _text(claims, "run_attempt") or "1"
    if run_id:
        values["run_invocation_uri"] = f"{server}/{repository}/actions/runs/{run_id}/attempts/{attempt}"
    return {OID[name]: value for name, value in values.items() if value}
