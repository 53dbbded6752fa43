"""Bundles from the embedded authority verify in sigstore-js (npm ``@sigstore/verify``), a Sigstore
implementation independent of sigstore-python, given only ``trusted_root.json``; and every part it
checks is really checked: take away or spoil the SCT, the SET, the inclusion proof, the checkpoint's
signature, the payload, the identity or the issuer, and it refuses the bundle."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from diskci import mediatypes as mt
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import sign_statement
from sigstore_js import verify_with_sigstore_js

IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v0.3.0"
ISSUER = "https://git.example.com"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    auth = SigningAuthority.init(tmp_path_factory.mktemp("a") / "authority")
    statement = {
        "_type": mt.IN_TOTO_STATEMENT_V1,
        "subject": [{"name": "debian-12:1.0.0", "digest": {"sha256": "5e" * 32}}],
        "predicateType": mt.COSIGN_SIGN_PREDICATE,
        "predicate": {},
    }
    for _ in range(2):  # a tree of size 3: the proof has hashes to check
        sign_statement(statement, authority=auth, identity=IDENTITY, issuer=ISSUER)
    bundle, entry = sign_statement(statement, authority=auth, identity=IDENTITY, issuer=ISSUER)
    assert entry.tree_size == 3 and entry.hashes
    root = tmp_path_factory.mktemp("verifier") / "trusted_root.json"
    root.write_bytes((auth.directory / "trusted_root.json").read_bytes())
    return json.loads(bundle), root


def _verify(doc: dict[str, Any], root: Path, tmp_path: Path, **policy: str) -> dict[str, Any]:
    path = tmp_path / "bundle.sigstore.json"
    path.write_text(json.dumps(doc))
    return verify_with_sigstore_js(
        path, root, identity=policy.get("identity", IDENTITY), issuer=policy.get("issuer", ISSUER)
    )


def test_sigstore_js_accepts_the_authoritys_bundle(
    signed: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    doc, root = signed
    verdict = _verify(doc, root, tmp_path)
    assert verdict == {"ok": True, "identity": IDENTITY, "issuer": ISSUER}


def _entry(doc: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = doc["verificationMaterial"]["tlogEntries"][0]
    return entry


def _no_set(doc: dict[str, Any]) -> None:
    del _entry(doc)["inclusionPromise"]


def _bad_set(doc: dict[str, Any]) -> None:
    _entry(doc)["integratedTime"] = str(int(_entry(doc)["integratedTime"]) + 1)


def _bad_proof_hash(doc: dict[str, Any]) -> None:
    proof = _entry(doc)["inclusionProof"]
    proof["hashes"][0] = base64.b64encode(b"\x00" * 32).decode()


def _bad_checkpoint_signature(doc: dict[str, Any]) -> None:
    proof = _entry(doc)["inclusionProof"]
    note, _, sig_line = proof["checkpoint"]["envelope"].partition("\n\n")
    name, sig = sig_line.removeprefix("\u2014 ").split()
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    proof["checkpoint"]["envelope"] = f"{note}\n\n\u2014 {name} {base64.b64encode(raw).decode()}\n"


def _checkpoint_of_another_log(doc: dict[str, Any]) -> None:
    proof = _entry(doc)["inclusionProof"]
    proof["checkpoint"]["envelope"] = proof["checkpoint"]["envelope"].replace(
        "\u2014 log.authority.diskci.invalid ", "\u2014 rekor.sigstore.dev "
    )


def _no_sct(doc: dict[str, Any]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    raw = base64.b64decode(doc["verificationMaterial"]["certificate"]["rawBytes"])
    cert = x509.load_der_x509_certificate(raw)
    b = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if ext.oid.dotted_string != "1.3.6.1.4.1.11129.2.4.2":
            b = b.add_extension(ext.value, ext.critical)
    # signed by a key of no CA: the chain breaks too, as it must once the SCT is cut out
    forged = b.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    doc["verificationMaterial"]["certificate"]["rawBytes"] = base64.b64encode(
        forged.public_bytes(Encoding.DER)
    ).decode()


def _tampered_payload(doc: dict[str, Any]) -> None:
    payload = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    payload["subject"][0]["digest"]["sha256"] = "00" * 32
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()


SPOILED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no-SET": (_no_set, "TIMESTAMP_ERROR"),  # the SET is the only time it has
    "bad-SET": (_bad_set, "TLOG"),
    "bad-inclusion-proof": (_bad_proof_hash, "TLOG_INCLUSION_PROOF_ERROR"),
    "bad-checkpoint-signature": (_bad_checkpoint_signature, "TLOG_INCLUSION_PROOF_ERROR"),
    "checkpoint-of-another-log": (_checkpoint_of_another_log, "TLOG_INCLUSION_PROOF_ERROR"),
    "no-SCT": (_no_sct, "CERTIFICATE_ERROR"),
    "tampered-payload": (_tampered_payload, ""),
}


@pytest.mark.parametrize("spoil", SPOILED, ids=list(SPOILED))
def test_sigstore_js_refuses_a_spoiled_bundle(
    spoil: str, signed: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    doc, root = signed
    doc = json.loads(json.dumps(doc))
    change, code = SPOILED[spoil]
    change(doc)
    verdict = _verify(doc, root, tmp_path)
    assert not verdict["ok"], verdict
    assert verdict["code"].startswith(code), verdict


@pytest.mark.parametrize(
    "policy",
    [{"identity": IDENTITY + "x"}, {"issuer": "https://other.example.com"}],
    ids=["identity", "issuer"],
)
def test_sigstore_js_refuses_another_identity_or_issuer(
    policy: dict[str, str], signed: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    doc, root = signed
    verdict = _verify(doc, root, tmp_path, **policy)
    assert (verdict["ok"], verdict["code"]) == (False, "UNTRUSTED_SIGNER_ERROR"), verdict
