"""A publication signed through the token path is verified by the platform against the NodePlatform's
cosign_identity_regexp and issuer: the platform issues a job token, sigstore-python's own signer gets a
certificate from the authority's Fulcio API and log entries from its Rekor API, each bundle verifies in
sigstore-js too, and a regexp that matches publishes it while one that does not fails it with
``identity_mismatch`` and serves nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from platform_publication_helpers import (
    Published,
    deliver,
    make_netboot_build,
    make_processor,
    repository_for,
)
from served_authority import served_authority

from diskci.manifest import BuildManifest
from diskci.platform.db.models import DiskImagePublication
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.registry.push import push_publication
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import sign_publication
from diskci.supplychain.id_token import IdTokenVerifier
from diskci.supplychain.sigstore_signer import SigstoreSigner, trust_config_for
from oidc_helpers import platform_row, start_job, workflow_identity
from sigstore_js import verify_with_sigstore_js

PLATFORM = "debian-12-amd64"
BASE = "http://127.0.0.1:8480"  # the test settings' public_base_url: the ID tokens' issuer
IDENTITY = workflow_identity(BASE, PLATFORM)
CASES = [
    (re.escape(f"{BASE}/{PLATFORM}/.gitea/workflows/build.yaml@") + "refs/tags/v.*", "published", None),
    (re.escape(f"{BASE}/other-platform/") + ".*", "failed", "identity_mismatch"),
]


@pytest.mark.parametrize(("regexp", "status", "reason"), CASES, ids=["matching", "not-matching"])
def test_a_token_signed_publication_is_checked_against_the_platforms_regexp(
    regexp: str,
    status: str,
    reason: str | None,
    platform_client: Any,
    platform_db: Database,
    authority: SigningAuthority,
    registry: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    platform_id = platform_row(
        platform_db,
        PLATFORM,
        registry_repository=repository_for(registry, request.node.name),
        cosign_identity_regexp=regexp,
        cosign_oidc_issuer=BASE,
        trusted_root=authority.trusted_root_json().decode(),
    )
    _, runtime = start_job(platform_db, platform_id)
    r = platform_client.get(
        "/api/actions/id-token",
        params={"audience": "sigstore"},
        headers={"Authorization": f"Bearer {runtime}"},
    )
    assert r.status_code == 200, r.text
    verifier = IdTokenVerifier([BASE], client=platform_client)  # the platform's discovery and JWKS
    build_dir = tmp_path / "build"
    make_netboot_build(build_dir, platform=PLATFORM, version="1.0.0")
    with served_authority(authority.directory, verifier) as url:
        backend = SigstoreSigner(trust_config_for(url), r.json()["value"])
        assert backend.identity == IDENTITY
        signed = sign_publication(build_dir, authority=backend, identity=backend.identity)
    assert signed.identity == IDENTITY
    root = tmp_path / "trusted_root.json"
    root.write_bytes(authority.trusted_root_json())
    for bundle in signed.bundles:
        verdict = verify_with_sigstore_js(bundle, root, identity=IDENTITY, issuer=BASE)
        assert verdict["ok"], verdict
    build = BuildManifest.load(build_dir)
    ref = f"{repository_for(registry, request.node.name)}:{build.version}"
    pub = Published(build_dir, build, push_publication(build_dir, ref), ref)
    processor = make_processor(platform_db, BlobCache(tmp_path / "blobs"), tmp_path)
    outcome = processor.process(deliver(platform_db, platform_id, pub))

    assert (outcome.status, outcome.reason) == (status, reason), outcome.detail
    with platform_db.read_session() as session:
        [row] = session.query(DiskImagePublication).all()
        assert (row.status, row.failure_reason) == (status, reason)
        if status == "published":
            assert (row.signer_identity, row.signer_issuer) == (IDENTITY, BASE)
        else:
            assert IDENTITY in (row.failure_detail or "")
