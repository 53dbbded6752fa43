"""``diskci authority serve`` speaks Fulcio's and Rekor's APIs: a certificate only for a CI job's valid
ID token and a key its holder proved, naming the token's identity, issuer and CI claims; log entries
only for signatures its certificates made; each bad request gets Fulcio's or Rekor's status."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.authority_http import create_app
from diskci.supplychain.fulcio_claims import OID
from diskci.supplychain.id_token import IdTokenVerifier
from oidc_helpers import REF, FakeIssuer

ISSUER = "https://ci.example"
IDENTITY = f"{ISSUER}/debian-12/.gitea/workflows/build.yaml@{REF}"


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer(ISSUER)


@pytest.fixture
def served(tmp_path: Path, issuer: FakeIssuer) -> tuple[SigningAuthority, TestClient]:
    auth = SigningAuthority.init(tmp_path / "authority")
    verifier = IdTokenVerifier([ISSUER], client=issuer.client())
    return auth, TestClient(create_app(auth.directory, verifier=verifier), base_url="http://authority")


def _csr(key: Any) -> dict[str, str]:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return {
        "certificateSigningRequest": base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode()
    }


def _cert(http: TestClient, token: str, body: dict[str, Any]) -> Any:
    return http.post("/api/v2/signingCert", json=body, headers={"Authorization": f"Bearer {token}"})


def _hashedrekord(key: ec.EllipticCurvePrivateKey, cert_pem: str, digest: bytes) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    sig = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    return {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "signature": {
                "content": base64.b64encode(sig).decode(),
                "publicKey": {"content": base64.b64encode(cert_pem.encode()).decode()},
            },
            "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
        },
    }


def test_fulcio_certifies_the_tokens_identity_with_its_claims(
    served: tuple[SigningAuthority, TestClient], issuer: FakeIssuer
) -> None:
    _auth, http = served
    key = ec.generate_private_key(ec.SECP256R1())
    r = _cert(http, issuer.token(), _csr(key))
    assert r.status_code == 200, r.text
    chain = r.json()["signedCertificateEmbeddedSct"]["chain"]["certificates"]
    assert len(chain) == 3
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [IDENTITY]
    ext = {e.oid: e.value.value for e in leaf.extensions if isinstance(e.value, x509.UnrecognizedExtension)}
    assert ext[OID["source_repository_uri"]][2:] == f"{ISSUER}/debian-12".encode()
    assert ext[OID["source_repository_ref"]][2:] == REF.encode()
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 600
    # a public key with a proof of possession (a signature of the token's sub)
    sub = json.loads(base64.urlsafe_b64decode(issuer.token().split(".")[1] + "==="))["sub"]
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    proof = base64.b64encode(key.sign(sub.encode(), ec.ECDSA(hashes.SHA256()))).decode()
    body = {
        "publicKeyRequest": {
            "publicKey": {"algorithm": "ECDSA", "content": pem.decode()},
            "proofOfPossession": proof,
        }
    }
    assert _cert(http, issuer.token(), body).status_code == 200
    assert http.get("/api/v2/trustBundle").json()["chains"][0]["certificates"] == chain[1:]
    assert http.get("/api/v2/configuration").json()["issuers"][0]["issuerUrl"] == ISSUER


def test_fulcio_refuses_bad_tokens_and_keys(
    served: tuple[SigningAuthority, TestClient], issuer: FakeIssuer
) -> None:
    _auth, http = served
    key = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "expired": (issuer.token(exp=1000, iat=400, nbf=400), _csr(key), 401),
        "wrong audience": (issuer.token(aud="other"), _csr(key), 401),
        "wrong issuer": (FakeIssuer("https://other.example").token(), _csr(key), 401),
        "forged": (issuer.token(key=ec.generate_private_key(ec.SECP256R1())), _csr(key), 401),
        "rsa key": (
            issuer.token(),
            _csr(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            400,
        ),
        "not a csr": (issuer.token(), {"certificateSigningRequest": "bm90IGEgY3Ny"}, 400),
    }
    other = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    proof = base64.b64encode(other.sign(b"x", ec.ECDSA(hashes.SHA256()))).decode()
    cases["proof for another key"] = (
        issuer.token(),
        {"publicKeyRequest": {"publicKey": {"content": pem.decode()}, "proofOfPossession": proof}},
        400,
    )
    for name, (token, body, status) in cases.items():
        r = _cert(http, token, body)
        assert r.status_code == status, (name, r.text)
        assert r.json()["message"] and r.json()["code"] in (3, 16), (name, r.text)
    r = http.post("/api/v2/signingCert", json=_csr(key))
    assert r.status_code == 401 and "missing ID token" in r.json()["message"]


def test_rekor_logs_signed_entries_once(
    served: tuple[SigningAuthority, TestClient], issuer: FakeIssuer
) -> None:
    auth, http = served
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = _cert(http, issuer.token(), _csr(key)).json()["signedCertificateEmbeddedSct"]["chain"][
        "certificates"
    ][0]
    entry = _hashedrekord(key, cert_pem, b"\x11" * 32)
    r = http.post("/api/v1/log/entries", json=entry)
    assert r.status_code == 201, r.text
    [(uuid, logged)] = r.json().items()
    assert logged["logIndex"] == 0 and logged["verification"]["inclusionProof"]["treeSize"] == 1
    again = http.post("/api/v1/log/entries", json=entry)
    assert again.status_code == 409 and uuid.endswith(again.headers["Location"].rsplit("/", 1)[1])
    for got in (http.get(f"/api/v1/log/entries/{uuid}"), http.get("/api/v1/log/entries?logIndex=0")):
        [(got_uuid, got_entry)] = got.json().items()  # signatures are fresh (ECDSA), the entry is not
        assert (got_uuid, got_entry["body"], got_entry["logIndex"]) == (uuid, logged["body"], 0)
    http.post("/api/v1/log/entries", json=_hashedrekord(key, cert_pem, b"\x22" * 32))
    info = http.get("/api/v1/log").json()
    assert info["treeSize"] == 2 and info["signedTreeHead"].startswith(auth.config["origin"] + "\n2\n")
    proof = http.get("/api/v1/log/proof", params={"firstSize": 1, "lastSize": 2}).json()
    assert proof["rootHash"] == info["rootHash"] and len(proof["hashes"]) == 1
    # bad input: each refused with a message, nothing logged
    other = ec.generate_private_key(ec.SECP256R1())
    bad = {
        "another key's signature": (_hashedrekord(other, cert_pem, b"\x33" * 32), 400),
        "unknown kind": ({"kind": "rekord", "apiVersion": "0.0.1", "spec": {}}, 400),
        "not an object": ([1, 2], 400),
        "oversized": ({"kind": "dsse", "pad": "x" * (1 << 20)}, 413),
    }
    for name, (body, status) in bad.items():
        r = http.post("/api/v1/log/entries", json=body)
        assert r.status_code == status and r.json()["message"], (name, r.text)
    assert http.get("/api/v1/log").json()["treeSize"] == 2
    assert http.get("/api/v1/log/entries", params={"logIndex": 9}).status_code == 404


def test_cli_init_and_serve_needs_an_issuer(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from diskci.cli.main import app
    from diskci.errors import UsageError

    runner = CliRunner()
    r = runner.invoke(app, ["authority", "init", str(tmp_path / "a"), "--issuer", ISSUER, "--json"])
    assert r.exit_code == 0, r.output
    assert Path(json.loads(r.stdout)["trusted_root"]).is_file()
    assert not (tmp_path / "a" / "credentials.json").exists()
    r = runner.invoke(app, ["authority", "issue", str(tmp_path / "a"), "--signer", "runner-1"])
    assert r.exit_code == 2 and "No such command" in r.output  # signer credentials are gone
    r = runner.invoke(app, ["authority", "serve", str(tmp_path / "a")])
    assert isinstance(r.exception, UsageError) and "needs --oidc-issuer" in str(r.exception)
    r = runner.invoke(app, ["authority", "init", str(tmp_path / "a")])
    assert r.exit_code == 1
    assert "already exists" in str(r.exception)
