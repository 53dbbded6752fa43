"""``diskci.publish``: the CI environment read into explicit values, and the checks made before signing."""

from __future__ import annotations

from pathlib import Path

import pytest

from diskci.errors import UsageError
from diskci.publish import PublishRequest, ci_environment, open_authority
from diskci.supplychain.authority_http import AuthorityClient
from diskci.supplychain.bundle import Source


def test_ci_environment_reads_github_variables() -> None:
    env = {
        "GITHUB_SERVER_URL": "https://git.example.com/",
        "GITHUB_REPOSITORY": "ops/images",
        "GITHUB_REF": "refs/tags/v1",
        "GITHUB_SHA": "0123abcd",
        "GITHUB_RUN_ID": "77",
        "DISKCI_AUTHORITY_TOKEN": "dci_x_token",
    }
    ci = ci_environment(env)
    repo = "https://git.example.com/ops/images"
    assert ci.source == Source(repo=repo, ref="refs/tags/v1", commit="0123abcd")
    assert (ci.run_id, ci.authority_token) == ("77", "dci_x_token")
    assert (
        ci_environment({**env, "DISKCI_SOURCE_REPO": "https://other/repo"}).source.repo
        == "https://other/repo"
    )
    assert ci_environment({}).source == Source()


def test_notify_url_needs_a_secret_file() -> None:
    with pytest.raises(UsageError, match="--notify-url needs --secret-file"):
        PublishRequest(
            build_dir=Path("b"), to="oci-layout:o", identity="i", authority="a", notify_url="http://x"
        )


def test_authority_url_needs_a_signer_credential(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a signer credential"):
        open_authority("http://127.0.0.1:1")
    cred = tmp_path / "signer.token"
    cred.write_text("dci_s_file\n")
    client = open_authority("http://127.0.0.1:1", credential="dci_s_env", credential_file=cred)
    assert isinstance(client, AuthorityClient)
    client.close()
