"""Bundles from the embedded authority verify with sigstore-python's stock Verifier and policies,
given nothing but trusted_root.json — the same path a public Sigstore bundle takes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sigstore.errors import VerificationError
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier, policy

from diskci import mediatypes as mt
from diskci.supplychain.authority import AuthorityError, SigningAuthority
from diskci.supplychain.bundle import sign_statement

IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v0.3.0"
ISSUER = "https://git.example.com"
DIGEST = "5e" * 32


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    auth = SigningAuthority.init(tmp_path_factory.mktemp("a") / "authority")
    statement = {
        "_type": mt.IN_TOTO_STATEMENT_V1,
        "subject": [{"name": "debian-12:1.0.0", "digest": {"sha256": DIGEST}}],
        "predicateType": mt.COSIGN_SIGN_PREDICATE,
        "predicate": {},
    }
    bundle, _entry = sign_statement(statement, authority=auth, identity=IDENTITY, issuer=ISSUER)
    # only the trusted root leaves the authority
    root = tmp_path_factory.mktemp("verifier") / "trusted_root.json"
    root.write_bytes((auth.directory / "trusted_root.json").read_bytes())
    return bundle, root


def test_stock_verifier_accepts_bundle(signed: tuple[bytes, Path]) -> None:
    bundle, root = signed
    doc = json.loads(bundle)
    assert doc["mediaType"] == mt.SIGSTORE_BUNDLE_V03
    assert doc["verificationMaterial"]["tlogEntries"][0]["kindVersion"] == {
        "kind": "dsse",
        "version": "0.0.1",
    }
    verifier = Verifier(trusted_root=TrustedRoot.from_file(str(root)))
    payload_type, payload = verifier.verify_dsse(
        Bundle.from_json(bundle), policy.Identity(identity=IDENTITY, issuer=ISSUER)
    )
    assert payload_type == "application/vnd.in-toto+json"
    assert json.loads(payload)["subject"][0]["digest"]["sha256"] == DIGEST
    both = policy.AllOf([policy.OIDCIssuerV2(ISSUER), policy.OIDCIssuer(ISSUER)])
    verifier.verify_dsse(Bundle.from_json(bundle), both)


def test_stock_verifier_rejects_other_identity_and_tampering(signed: tuple[bytes, Path]) -> None:
    bundle, root = signed
    verifier = Verifier(trusted_root=TrustedRoot.from_file(str(root)))
    with pytest.raises(VerificationError):
        verifier.verify_dsse(
            Bundle.from_json(bundle), policy.Identity(identity=IDENTITY + "x", issuer=ISSUER)
        )
    doc = json.loads(bundle)
    payload = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    payload["subject"][0]["digest"]["sha256"] = "00" * 32
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(VerificationError):
        verifier.verify_dsse(
            Bundle.from_json(json.dumps(doc)), policy.Identity(identity=IDENTITY, issuer=ISSUER)
        )


def test_trusted_root_and_key_files(tmp_path: Path) -> None:
    auth = SigningAuthority.init(tmp_path / "authority")
    root = json.loads((auth.directory / "trusted_root.json").read_text())
    assert root["mediaType"] == "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
    assert root["timestampAuthorities"] == []
    assert len(root["certificateAuthorities"][0]["certChain"]["certificates"]) == 2
    for name in ("root.key", "intermediate.key", "ctlog.key", "tlog.key"):
        assert (auth.directory / name).stat().st_mode & 0o777 == 0o600, name
    assert auth.directory.stat().st_mode & 0o777 == 0o700
    with pytest.raises(AuthorityError, match="already exists"):
        SigningAuthority.init(tmp_path / "authority")
    (auth.directory / "tlog.key").chmod(0o644)
    with pytest.raises(AuthorityError, match="readable by others"):
        SigningAuthority.open(auth.directory)


def test_log_refuses_envelopes_the_certificate_did_not_sign(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    auth = SigningAuthority.init(tmp_path / "authority")
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    cert = auth.issue_certificate(key, identity=IDENTITY, issuer=ISSUER)
    payload = b'{"_type":"https://in-toto.io/Statement/v1"}'
    pae = b"DSSEv1 28 application/vnd.in-toto+json %d %s" % (len(payload), payload)
    sig = other.sign(pae, ec.ECDSA(hashes.SHA256()))
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": "application/vnd.in-toto+json",
        "signatures": [{"sig": base64.b64encode(sig).decode()}],
    }
    with pytest.raises(AuthorityError, match="does not verify"):
        auth.log_dsse(envelope, cert)
    envelope["signatures"] = [{"sig": base64.b64encode(key.sign(pae, ec.ECDSA(hashes.SHA256()))).decode()}]
    assert auth.log_dsse(envelope, cert).log_index == 0
    assert auth.log.size == 1
