"""``diskci authority serve``: certificates and log entries over HTTP, per-signer credentials."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from diskci import mediatypes as mt
from diskci.errors import Unauthorized
from diskci.supplychain.authority import AuthorityError, SigningAuthority
from diskci.supplychain.authority_http import AuthorityClient, create_app
from diskci.supplychain.bundle import IdentityPolicy, load_trusted_root, sign_statement, verify_bundle

ISSUER = "https://git.example.com"
IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/heads/main"
STATEMENT = {
    "_type": mt.IN_TOTO_STATEMENT_V1,
    "subject": [{"name": "x", "digest": {"sha256": "cd" * 32}}],
    "predicateType": mt.COSIGN_SIGN_PREDICATE,
    "predicate": {},
}


@pytest.fixture
def served(tmp_path: Path) -> tuple[SigningAuthority, TestClient]:
    auth = SigningAuthority.init(tmp_path / "authority")
    return auth, TestClient(create_app(auth.directory), base_url="http://authority")


def _client(http: TestClient, token: str) -> AuthorityClient:
    return AuthorityClient("http://authority", token, client=http)  # the app in-process, over httpx


def test_signer_signs_through_http_and_bundle_verifies(served: tuple[SigningAuthority, TestClient]) -> None:
    auth, http = served
    token = auth.add_credential("runner-1", issuer=ISSUER, identity_prefix="https://git.example.com/ops/")
    bundle, entry = sign_statement(STATEMENT, authority=_client(http, token), identity=IDENTITY)
    assert entry.log_index == 0
    assert http.get("/api/v1/log").json()["treeSize"] == 1
    root = load_trusted_root(auth.directory / "trusted_root.json")
    policy = IdentityPolicy(identity_regexp=r"https://git\.example\.com/ops/.*", issuer=ISSUER)
    result = verify_bundle(bundle, subject_digest="sha256:" + "cd" * 32, policy=policy, trusted_root=root)
    assert result.identity == IDENTITY and result.issuer == ISSUER
    assert http.get("/api/v1/trusted_root").json() == auth.trusted_root()


def test_credentials_are_required_and_scoped(served: tuple[SigningAuthority, TestClient]) -> None:
    auth, http = served
    with pytest.raises(Unauthorized):
        sign_statement(STATEMENT, authority=_client(http, "dci_nobody_wrong"), identity=IDENTITY)
    token = auth.add_credential("runner-2", issuer=ISSUER, identity_prefix="https://git.example.com/other/")
    with pytest.raises(AuthorityError, match=r"HTTP 403.*may not sign as"):
        sign_statement(STATEMENT, authority=_client(http, token), identity=IDENTITY)
    _client(http, auth.add_credential("runner-3", issuer=ISSUER))
    r = http.post(
        "/api/v2/signingCert", json={"identity": IDENTITY, "publicKey": "nope", "proofOfPossession": ""}
    )
    assert r.status_code == 400 and r.json()["error"] == "InvalidRequest"
    assert auth.log.size == 0


def test_unreachable_authority_is_a_clear_error(tmp_path: Path) -> None:
    client = AuthorityClient("http://127.0.0.1:9", "token", timeout=2)
    with pytest.raises(AuthorityError, match="cannot reach the signing authority"):
        sign_statement(STATEMENT, authority=client, identity=IDENTITY)


def test_cli_init_and_issue(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from diskci.cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["authority", "init", str(tmp_path / "a"), "--issuer", ISSUER, "--json"])
    assert r.exit_code == 0, r.output
    assert Path(json.loads(r.stdout)["trusted_root"]).is_file()
    r = runner.invoke(app, ["authority", "issue", str(tmp_path / "a"), "--signer", "runner-1", "--json"])
    assert r.exit_code == 0, r.output
    token = json.loads(r.stdout)["token"]
    assert SigningAuthority.open(tmp_path / "a").check_credential(token).signer == "runner-1"
    r = runner.invoke(app, ["authority", "init", str(tmp_path / "a")])
    assert r.exit_code == 1
    assert "already exists" in str(r.exception)
