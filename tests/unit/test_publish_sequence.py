"""``diskci.publish``: the CI environment read into explicit values, and the checks made before signing."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskci.errors import UsageError
from diskci.publish import (
    IdTokenRequest,
    PublishRequest,
    ci_environment,
    default_identity,
    open_authority,
    sign_build,
)
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import Source
from diskci.supplychain.sigstore_signer import SigstoreSigner
from oidc_helpers import FakeIssuer, workflow_identity


def test_ci_environment_reads_github_variables() -> None:
    env = {
        "GITHUB_SERVER_URL": "https://git.example.com/",
        "GITHUB_REPOSITORY": "ops/images",
        "GITHUB_REF": "refs/tags/v1",
        "GITHUB_SHA": "0123abcd",
        "GITHUB_RUN_ID": "77",
        "ACTIONS_ID_TOKEN_REQUEST_URL": "http://ci.example/api/actions/id-token",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "rt",
    }
    ci = ci_environment(env)
    repo = "https://git.example.com/ops/images"
    assert ci.source == Source(repo=repo, ref="refs/tags/v1", commit="0123abcd")
    assert ci.run_id == "77" and ci.id_token == ""
    assert ci.id_token_request == IdTokenRequest("http://ci.example/api/actions/id-token", "rt")
    assert "rt" not in repr(ci)
    assert (
        ci_environment({**env, "DISKCI_SOURCE_REPO": "https://other/repo"}).source.repo
        == "https://other/repo"
    )
    assert ci_environment({**env, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": ""}).id_token_request is None
    assert ci_environment({"DISKCI_ID_TOKEN": "a.b.c\n"}).id_token == "a.b.c"
    assert ci_environment({}).source == Source()
    # a directory authority signs as the workflow when no --identity is named; a URL as the token
    assert default_identity("./authority", ci) == f"{repo}/.gitea/workflows/build.yaml@refs/tags/v1"
    assert default_identity("http://authority", ci) == ""
    assert default_identity("./authority", ci_environment({})) == ""


def test_notify_url_needs_a_secret_file() -> None:
    with pytest.raises(UsageError, match="--notify-url needs --secret-file"):
        PublishRequest(
            build_dir=Path("b"), to="oci-layout:o", identity="i", authority="a", notify_url="http://x"
        )


def test_authority_url_needs_an_id_token(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs the CI job's OIDC ID token"):
        open_authority("http://127.0.0.1:1")
    token = FakeIssuer().token()
    client = open_authority("http://127.0.0.1:1", id_token=token)
    assert isinstance(client, SigstoreSigner)
    assert client.identity == workflow_identity("https://ci.example", "debian-12")
    client.close()


def test_an_identity_other_than_the_tokens_is_an_error_before_signing(tmp_path: Path) -> None:
    token = FakeIssuer().token()
    build = tmp_path / "never-read"
    with pytest.raises(UsageError, match="is not the CI job's identity"):
        sign_build(build, authority="http://127.0.0.1:1", identity="https://other/x", id_token=token)
    with pytest.raises(UsageError, match="is not the ID token's issuer"):
        sign_build(build, authority="http://127.0.0.1:1", issuer="https://other", id_token=token)
    SigningAuthority.init(tmp_path / "authority")
    with pytest.raises(UsageError, match="authority directory needs --identity"):
        sign_build(build, authority=str(tmp_path / "authority"))
