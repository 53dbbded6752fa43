"""The identity a publication's signer must have: a full-match regexp on the SAN and an exact issuer.

Public API: ``IdentityPolicy(identity_regexp=..., issuer=...)``. It has sigstore-python's
``VerificationPolicy`` shape (``verify(cert)`` raising ``VerificationError``), so it plugs into
``Verifier.verify_dsse``; its failures are ``PolicyMismatch`` carrying diskci's reason code.

Matching rules (what cosign's ``--certificate-identity-regexp`` users expect, made strict):
the regexp must match a SAN URI or email *entirely* (``re.fullmatch``: anchoring is enforced, so
``https://git.example.com/ops/.*`` cannot be satisfied by ``https://evil.example/https://git...``);
the issuer is read from extension 1.3.6.1.4.1.57264.1.8 (a DER UTF8String) and, only when that is
absent, from the legacy 1.3.6.1.4.1.57264.1.1 (raw bytes), and must equal ``issuer`` exactly.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from sigstore.errors import VerificationError

from diskci.errors import SupplyChainError, UsageError

OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


class PolicyMismatch(VerificationError, SupplyChainError):
    """The certificate is genuine but not the signer the policy asks for."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _der_utf8_value(der: bytes) -> str:
    if len(der) < 2 or der[0] != 0x0C:
        raise VerificationError("issuer extension 1.3.6.1.4.1.57264.1.8 is not a DER UTF8String")
    length = der[1]
    offset = 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(der[2 : 2 + n], "big")
        offset = 2 + n
    return der[offset : offset + length].decode()


def certificate_issuer(cert: x509.Certificate) -> str | None:
    """The OIDC issuer a Fulcio-style certificate names (.1.8, else .1.1), or None."""
    for oid, decode in ((OID_ISSUER_V2, _der_utf8_value), (OID_ISSUER_V1, bytes.decode)):
        try:
            ext = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
        return decode(raw)
    return None


def certificate_identities(cert: x509.Certificate) -> list[str]:
    """The SAN URIs and emails of ``cert``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *san.get_values_for_type(x509.UniformResourceIdentifier),
        *san.get_values_for_type(x509.RFC822Name),
    ]


class IdentityPolicy:
    """Accept a certificate whose SAN full-matches ``identity_regexp`` and whose issuer is ``issuer``."""

    def __init__(self, *, identity_regexp: str, issuer: str) -> None:
        if not identity_regexp or not issuer:
            raise UsageError("an identity policy needs both an identity regexp and an issuer")
        try:
            self.pattern = re.compile(identity_regexp)
        except re.error as exc:
            raise UsageError(f"invalid identity regexp {identity_regexp!r}: {exc}") from None
        self.identity_regexp = identity_regexp
        self.issuer = issuer

    def verify(self, cert: x509.Certificate) -> None:
        # 1. the issuer, from .1.8 (else .1.1), exactly
        got_issuer = certificate_issuer(cert)
        if got_issuer != self.issuer:
            raise PolicyMismatch(
                "issuer_mismatch",
                f"certificate issuer is {got_issuer!r}, the policy requires {self.issuer!r}",
            )
        # 2. some SAN URI or email matching the regexp entirely
        identities = certificate_identities(cert)
        if not any(self.pattern.fullmatch(i) for i in identities):
            raise PolicyMismatch(
                "identity_mismatch",
                f"certificate identity {', '.join(identities) or '(none)'} does not fully match "
                f"{self.identity_regexp!r}",
            )

    def __repr__(self) -> str:
        return f"IdentityPolicy(identity_regexp={self.identity_regexp!r}, issuer={self.issuer!r})"
