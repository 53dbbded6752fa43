"""Rekor v1 entries: a proposed ``dsse`` or ``hashedrekord`` 0.0.1 entry checked and canonicalized.

Public API: ``canonical_entry(proposed, issued_by=...) -> ProposedEntry`` (raises ``MalformedEntry``,
a 400, for anything Rekor would refuse), ``entry_response(entry, tree_id)`` (Rekor's
``{uuid: LogEntry}`` JSON), ``MAX_ENTRY_BYTES``. As Rekor does, only entries whose signatures verify
with the certificate they name are accepted; this log also asks that the certificate be its
authority's and valid now, so nothing it could not vouch for is ever logged.

Shapes (https://github.com/sigstore/rekor/tree/main/pkg/types): a proposed dsse entry is
``{"kind": "dsse", "apiVersion": "0.0.1", "spec": {"proposedContent": {"envelope": <DSSE JSON
text>, "verifiers": [<base64 PEM>]}}}``, logged as ``{envelopeHash, payloadHash, signatures:
[{signature, verifier}]}``; a hashedrekord is ``{"spec": {"signature": {"content", "publicKey":
{"content"}}, "data": {"hash": {"algorithm": "sha256", "value"}}}}``, logged as proposed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from diskci.errors import InvalidRequest
from diskci.supplychain.tlog import LogEntry

__all__ = ["MAX_ENTRY_BYTES", "MalformedEntry", "ProposedEntry", "canonical_entry", "entry_response"]

MAX_ENTRY_BYTES = 1 << 20


class MalformedEntry(InvalidRequest):
    """A proposed entry Rekor would refuse (shape, encoding, signature, certificate)."""


@dataclass(frozen=True)
class ProposedEntry:
    kind: str
    version: str
    body: bytes  # canonicalized (RFC 8785)
    certificate: x509.Certificate


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise MalformedEntry(f"{what} is not base64") from None


def _certificate(b64_pem: Any, issued_by: Callable[[x509.Certificate], None]) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(_b64(b64_pem, "the verifier"))
    except ValueError as exc:
        raise MalformedEntry(f"the verifier is not a PEM certificate: {exc}") from None
    issued_by(cert)
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise MalformedEntry(
            f"the certificate is valid {cert.not_valid_before_utc:%H:%M:%S}–"
            f"{cert.not_valid_after_utc:%H:%M:%S}Z, not now: sign with a fresh one"
        )
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise MalformedEntry("the certificate's key is not an ECDSA key")
    return cert


def _verify(cert: x509.Certificate, sig: bytes, data: bytes, algorithm: Any) -> None:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(sig, data, ec.ECDSA(algorithm))
    except (InvalidSignature, ValueError):
        raise MalformedEntry("the signature does not verify with the certificate's key") from None


def _dsse(
    spec: dict[str, Any], issued_by: Callable[[x509.Certificate], None]
) -> tuple[dict[str, Any], x509.Certificate]:
    try:
        content = spec["proposedContent"]
        text = str(content["envelope"])
        verifiers = list(content["verifiers"])
        envelope = json.loads(text)
        payload = _b64(envelope["payload"], "the DSSE payload")
        payload_type = str(envelope["payloadType"])
        sigs = [str(s["sig"]) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedEntry(f"not a dsse 0.0.1 proposedContent (envelope, verifiers): {exc}") from None
    if len(verifiers) != 1 or len(sigs) != 1:
        raise MalformedEntry("expected one signature and one verifier (certificate)")
    cert = _certificate(verifiers[0], issued_by)
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)
    _verify(cert, _b64(sigs[0], "the DSSE signature"), pae, hashes.SHA256())
    body = {
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": hashlib.sha256(text.encode()).hexdigest()},
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": [{"signature": sigs[0], "verifier": str(verifiers[0])}],
        },
    }
    return body, cert


def _hashedrekord(
    spec: dict[str, Any], issued_by: Callable[[x509.Certificate], None]
) -> tuple[dict[str, Any], x509.Certificate]:
    try:
        sig_b64 = str(spec["signature"]["content"])
        pem_b64 = str(spec["signature"]["publicKey"]["content"])
        algorithm = str(spec["data"]["hash"]["algorithm"])
        value = str(spec["data"]["hash"]["value"])
    except (KeyError, TypeError) as exc:
        raise MalformedEntry(f"not a hashedrekord 0.0.1 spec (signature, data.hash): missing {exc}") from None
    if algorithm != "sha256" or len(value) != 64 or value.strip("0123456789abcdef"):
        raise MalformedEntry("data.hash must be a sha256 hex digest (64 lowercase hex digits)")
    cert = _certificate(pem_b64, issued_by)
    _verify(cert, _b64(sig_b64, "the signature"), bytes.fromhex(value), Prehashed(hashes.SHA256()))
    body = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": value}},
            "signature": {"content": sig_b64, "publicKey": {"content": pem_b64}},
        },
    }
    return body, cert


_KINDS = {"dsse": _dsse, "hashedrekord": _hashedrekord}


def canonical_entry(proposed: Any, *, issued_by: Callable[[x509.Certificate], None]) -> ProposedEntry:
    """Check ``proposed`` (parsed JSON) and return its canonical body; ``issued_by`` raises for a
    certificate this log does not vouch for."""
    if not isinstance(proposed, dict):
        raise MalformedEntry("the proposed entry must be a JSON object")
    kind, version, spec = proposed.get("kind"), proposed.get("apiVersion"), proposed.get("spec")
    if kind not in _KINDS:
        raise MalformedEntry(f"kind {kind!r} is not supported here: dsse or hashedrekord")
    if version != "0.0.1":
        raise MalformedEntry(f"{kind} apiVersion {version!r} is not supported: 0.0.1")
    if not isinstance(spec, dict):
        raise MalformedEntry("spec must be a JSON object")
    body, cert = _KINDS[kind](spec, issued_by)
    return ProposedEntry(kind=str(kind), version="0.0.1", body=rfc8785.dumps(body), certificate=cert)


def entry_uuid(entry: LogEntry, tree_id: str) -> str:
    """Rekor's entry UUID: the tree ID (16 hex digits) and the leaf hash."""
    from diskci.supplychain.tlog import leaf_hash

    return f"{int(tree_id):016x}{leaf_hash(entry.body).hex()}"


def entry_response(entry: LogEntry, tree_id: str) -> dict[str, Any]:
    """Rekor v1's ``{uuid: LogEntry}`` JSON for ``entry``."""
    return {
        entry_uuid(entry, tree_id): {
            "body": base64.b64encode(entry.body).decode(),
            "integratedTime": entry.integrated_time,
            "logID": entry.log_id.hex(),
            "logIndex": entry.log_index,
            "verification": {
                "inclusionProof": {
                    "checkpoint": entry.checkpoint,
                    "hashes": [h.hex() for h in entry.hashes],
                    "logIndex": entry.log_index,
                    "rootHash": entry.root_hash.hex(),
                    "treeSize": entry.tree_size,
                },
                "signedEntryTimestamp": base64.b64encode(entry.signed_entry_timestamp).decode(),
            },
        }
    }
