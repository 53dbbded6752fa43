"""``diskci authority serve``: certificates and log entries over HTTP, only for a CI job's ID token,
naming the token's identity and issuer whatever the caller asks."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from diskci import mediatypes as mt
from diskci.errors import Unauthorized
from diskci.supplychain.authority import AuthorityError, SigningAuthority
from diskci.supplychain.authority_http import AuthorityClient, create_app
from diskci.supplychain.bundle import IdentityPolicy, load_trusted_root, sign_statement, verify_bundle
from diskci.supplychain.id_token import IdTokenVerifier
from oidc_helpers import REF, FakeIssuer

ISSUER = "https://ci.example"
IDENTITY = f"{ISSUER}/debian-12/.gitea/workflows/build.yaml@{REF}"
STATEMENT = {
    "_type": mt.IN_TOTO_STATEMENT_V1,
    "subject": [{"name": "x", "digest": {"sha256": "cd" * 32}}],
    "predicateType": mt.COSIGN_SIGN_PREDICATE,
    "predicate": {},
}


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer(ISSUER)


@pytest.fixture
def served(tmp_path: Path, issuer: FakeIssuer) -> tuple[SigningAuthority, TestClient]:
    auth = SigningAuthority.init(tmp_path / "authority")
    verifier = IdTokenVerifier([ISSUER], client=issuer.client())
    return auth, TestClient(create_app(auth.directory, verifier=verifier), base_url="http://authority")


def _client(http: TestClient, token: str) -> AuthorityClient:
    return AuthorityClient("http://authority", token, client=http)  # the app in-process, over httpx


def test_a_job_signs_through_http_as_its_token_says(
    served: tuple[SigningAuthority, TestClient], issuer: FakeIssuer
) -> None:
    auth, http = served
    client = _client(http, issuer.token())
    assert client.identity == IDENTITY
    bundle, entry = sign_statement(STATEMENT, authority=client, identity=IDENTITY)
    assert entry.log_index == 0
    assert http.get("/api/v1/log").json()["treeSize"] == 1
    root = load_trusted_root(auth.directory / "trusted_root.json")
    policy = IdentityPolicy(identity_regexp=r"https://ci\.example/debian-12/.*", issuer=ISSUER)
    result = verify_bundle(bundle, subject_digest="sha256:" + "cd" * 32, policy=policy, trusted_root=root)
    assert result.identity == IDENTITY and result.issuer == ISSUER
    assert http.get("/api/v1/trusted_root").json() == auth.trusted_root()


def _cert_request(
    key: ec.EllipticCurvePrivateKey, signed: str, identity: str | None = None
) -> dict[str, str]:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    proof = base64.b64encode(key.sign(signed.encode(), ec.ECDSA(hashes.SHA256()))).decode()
    body = {"publicKey": pem.decode(), "proofOfPossession": proof}
    if identity is not None:
        body["identity"] = identity
    return body


def test_only_a_valid_token_gets_a_certificate_and_only_for_its_identity(
    served: tuple[SigningAuthority, TestClient], issuer: FakeIssuer
) -> None:
    auth, http = served
    key = ec.generate_private_key(ec.SECP256R1())
    sub = issuer.claims()["sub"]
    r = http.post("/api/v2/signingCert", json=_cert_request(key, sub))
    assert r.status_code == 401 and r.json() == {
        "error": "IdTokenRefused",
        "detail": "missing ID token: send Authorization: Bearer <the CI job's OIDC ID token>",
    }
    forged = issuer.token(key=ec.generate_private_key(ec.SECP256R1()))
    r = http.post(
        "/api/v2/signingCert", json=_cert_request(key, sub), headers={"Authorization": f"Bearer {forged}"}
    )
    assert r.status_code == 401 and "signature does not verify" in r.json()["detail"]
    with pytest.raises(Unauthorized, match="refused the ID token: the ID token has expired"):
        sign_statement(
            STATEMENT, authority=_client(http, issuer.token(exp=1000, iat=400, nbf=400)), identity=IDENTITY
        )
    good = {"Authorization": f"Bearer {issuer.token()}"}
    # the caller cannot choose its identity
    other = "https://ci.example/other/.gitea/workflows/build.yaml@refs/tags/v1"
    r = http.post("/api/v2/signingCert", json=_cert_request(key, sub, other), headers=good)
    assert r.status_code == 403 and "cannot sign as" in r.json()["detail"]
    with pytest.raises(AuthorityError, match="the ID token signs as"):
        sign_statement(STATEMENT, authority=_client(http, issuer.token()), identity=other)
    # the proof of possession is a signature of the token's subject
    r = http.post("/api/v2/signingCert", json=_cert_request(key, "something else"), headers=good)
    assert r.status_code == 400 and "proof of possession" in r.json()["detail"]
    r = http.post("/api/v2/signingCert", json={"publicKey": "nope", "proofOfPossession": ""}, headers=good)
    assert r.status_code == 400 and r.json()["error"] == "InvalidRequest"
    r = http.post("/api/v2/signingCert", json=_cert_request(key, sub, IDENTITY), headers=good)
    assert r.status_code == 200
    assert auth.log.size == 0
    r = http.post("/api/v1/log/entries", json={"envelope": {}, "certificate": "x"})
    assert r.status_code == 401


def test_unreachable_authority_is_a_clear_error(issuer: FakeIssuer) -> None:
    client = AuthorityClient("http://127.0.0.1:9", issuer.token(), timeout=2)
    with pytest.raises(AuthorityError, match="cannot reach the signing authority"):
        sign_statement(STATEMENT, authority=client, identity=IDENTITY)


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
