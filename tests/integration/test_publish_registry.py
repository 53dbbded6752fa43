"""Sign, push, pull and verify against a real registry (docker-registry 2.8), and tamper with it for real."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from diskci import mediatypes as mt
from diskci.cli.main import app
from diskci.errors import RegistryError, VerificationFailed
from diskci.registry import BlobSource, open_registry
from diskci.registry.publication import PUBLICATION_BUNDLE, SIGNATURES_DIR, plan_publication
from diskci.registry.pull import pull_publication
from diskci.registry.push import EMPTY_JSON, bundle_referrer, push_publication
from diskci.registry.store import Descriptor
from diskci.supplychain import rekor_entries
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import IdentityPolicy, sign_publication
from diskci.supplychain.tlog import LogEntry
from diskci.supplychain.verifier import verify_publication

IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v0.3.0"
IDENTITY_REGEXP = r"https://git\.example\.com/ops/images/\.gitea/workflows/build\.yaml@refs/tags/v.*"
ISSUER = "https://git.example.com"
POLICY = IdentityPolicy(identity_regexp=IDENTITY_REGEXP, issuer=ISSUER)


def _signed(make_build: Callable[..., Path], authority: SigningAuthority, name: str = "build") -> Path:
    build = make_build(name)
    sign_publication(build, authority=authority, identity=IDENTITY, issuer=ISSUER)
    return build


def _reason(fn: Callable[[], Any]) -> str:
    with pytest.raises(VerificationFailed) as info:
        fn()
    return info.value.reason


def _root(authority: SigningAuthority) -> Path:
    return authority.directory / "trusted_root.json"


def test_push_pull_verify_roundtrip(
    registry: str, make_build: Callable[..., Path], authority: SigningAuthority, tmp_path: Path
) -> None:
    build = _signed(make_build, authority)
    ref = f"{registry}/ops/disk-images/debian-12"
    pushed = push_publication(build, ref)
    assert pushed.tag == "1.0.0"
    assert pushed.digest == plan_publication(build).index_desc.digest
    assert len(pushed.referrers) == 2

    client = open_registry(f"{ref}:1.0.0")
    assert client.resolve("1.0.0").digest == pushed.digest
    index = json.loads(client.get_manifest("1.0.0")[0])
    assert index["mediaType"] == mt.OCI_INDEX
    # the runnable image comes first, then one artifact manifest per architecture
    assert [m.get("artifactType") for m in index["manifests"]] == [
        None,
        mt.ARTIFACT_TYPE_IMAGE,
        mt.ARTIFACT_TYPE_IMAGE,
    ]
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "amd64", "arm64"]
    arm = json.loads(client.get_manifest(index["manifests"][2]["digest"])[0])
    assert arm["artifactType"] == mt.ARTIFACT_TYPE_IMAGE
    assert arm["config"]["mediaType"] == mt.BUILD_JSON
    titles = {layer["annotations"][mt.ANNOTATION_TITLE] for layer in arm["layers"]}
    assert titles == {"vmlinuz", "root.squashfs", "packages.json"}
    squash = next(la for la in arm["layers"] if la["annotations"][mt.ANNOTATION_TITLE] == "root.squashfs")
    assert len(squash["annotations"][mt.ANNOTATION_FSVERITY]) == 64
    referrers = client.referrers(pushed.digest, mt.SIGSTORE_BUNDLE_V03)
    assert len(referrers) == 2

    pulled = pull_publication(f"{ref}:1.0.0", tmp_path / "pulled")
    assert pulled.index_digest == pushed.digest
    for a in pulled.build.all_artifacts():
        assert (tmp_path / "pulled" / a.path).read_bytes() == (build / a.path).read_bytes()
    assert plan_publication(tmp_path / "pulled").index_desc.digest == pushed.digest

    result = verify_publication(f"{ref}:1.0.0", POLICY, trusted_root=_root(authority))
    assert result.index_digest == pushed.digest
    assert result.identity == IDENTITY and result.issuer == ISSUER
    assert result.fsverity_checked == 2
    assert {b.predicate_type for b in result.bundles} == {mt.COSIGN_SIGN_PREDICATE, mt.SLSA_PROVENANCE_V1}


def test_repush_is_idempotent_and_resumes(
    registry: str, make_build: Callable[..., Path], authority: SigningAuthority
) -> None:
    build = _signed(make_build, authority)
    ref = f"{registry}/ops/idem"
    plan = plan_publication(build)
    # an interrupted earlier push left two blobs behind: they are not sent again
    client = open_registry(ref)
    for blob in plan.blobs[:2]:
        client.push_blob(blob.desc, blob.source)
    first = push_publication(build, ref)
    assert first.blobs_skipped == 2
    assert first.blobs_sent == len(plan.blobs) - 2
    second = push_publication(build, ref)
    assert second.digest == first.digest
    assert second.manifests == first.manifests and second.referrers == first.referrers
    assert second.blobs_sent == 0 and second.bytes_sent == 0
    assert len(client.referrers(first.digest)) == 2  # no duplicate referrers


def test_architectures_sharing_a_blob_push_at_once(registry: str) -> None:
    """The build workflow's jobs push their architectures at the same moment, and layers they share
    (the config, a package list) are linked by both at once: every manifest lands, round after round
    (docker-registry rewrites a blob's link in place; the client asks again while it reads unknown)."""
    failures: list[str] = []

    def push(round_no: int, arch: str, shared: bytes) -> None:
        client = open_registry(f"{registry}/ops/shared-{round_no}")
        own = f"{arch}-{round_no}".encode()
        blobs = [(Descriptor.for_bytes(mt.OCI_EMPTY, EMPTY_JSON), EMPTY_JSON)] + [
            (Descriptor.for_bytes("application/octet-stream", data), data) for data in (shared, own)
        ]
        for desc, data in blobs:
            client.push_blob(desc, BlobSource(data=data, size=len(data)))
        config, *layers = (desc for desc, _ in blobs)
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
            "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size} for d in layers],
        }
        try:
            client.push_manifest(json.dumps(manifest).encode(), mt.OCI_MANIFEST, tag=arch)
        except RegistryError as exc:
            failures.append(str(exc))

    for round_no in range(100):
        shared = round_no.to_bytes(4, "big") * 16
        arches = ("amd64", "arm64", "riscv64", "ppc64el")
        jobs = [threading.Thread(target=push, args=(round_no, arch, shared)) for arch in arches]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
    assert failures == []
    assert sorted(open_registry(f"{registry}/ops/shared-99").tags()) == [
        "amd64",
        "arm64",
        "ppc64el",
        "riscv64",
    ]


@pytest.mark.parametrize(
    ("regexp", "issuer", "reason"),
    [
        (r"https://git\.example\.com/other/.*", ISSUER, "identity_mismatch"),
        (r"git\.example\.com/ops/images/.*", ISSUER, "identity_mismatch"),  # must match the whole SAN
        (IDENTITY_REGEXP, "https://token.actions.githubusercontent.com", "issuer_mismatch"),
    ],
)
def test_wrong_signer_policy(
    registry: str,
    make_build: Callable[..., Path],
    authority: SigningAuthority,
    regexp: str,
    issuer: str,
    reason: str,
) -> None:
    build = _signed(make_build, authority)
    ref = f"{registry}/ops/policy:1.0.0"
    push_publication(build, ref)
    policy = IdentityPolicy(identity_regexp=regexp, issuer=issuer)
    assert _reason(lambda: verify_publication(ref, policy, trusted_root=_root(authority))) == reason


def test_tampered_layer_in_registry(
    registry_server: Any, make_build: Callable[..., Path], authority: SigningAuthority
) -> None:
    build = _signed(make_build, authority)
    ref = f"{registry_server.address}/ops/tampered-layer:1.0.0"
    push_publication(build, ref)
    squash = next(a for a in plan_publication(build).build.all_artifacts() if a.name == "root.squashfs")
    data = registry_server.blob_data(f"sha256:{squash.sha256}")
    raw = bytearray(data.read_bytes())
    raw[1000] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert (
        _reason(lambda: verify_publication(ref, POLICY, trusted_root=_root(authority))) == "digest_mismatch"
    )


def test_tampered_manifest_in_registry(
    registry_server: Any, make_build: Callable[..., Path], authority: SigningAuthority
) -> None:
    build = _signed(make_build, authority)
    ref = f"{registry_server.address}/ops/tampered-manifest:1.0.0"
    pushed = push_publication(build, ref)
    arm_digest = pushed.manifests[-1]
    path = registry_server.blob_data(arm_digest)
    manifest = json.loads(path.read_bytes())
    manifest["layers"] = manifest["layers"][:-1]  # drop an artifact
    path.write_bytes(json.dumps(manifest).encode())
    assert (
        _reason(lambda: verify_publication(ref, POLICY, trusted_root=_root(authority))) == "manifest_invalid"
    )


def test_retagged_index_is_not_the_signed_one(
    registry: str, make_build: Callable[..., Path], authority: SigningAuthority
) -> None:
    """Someone with push rights tags a different (consistent) index with the signed one's referrers."""
    good = _signed(make_build, authority, "good")
    evil = make_build("evil")
    ref = f"{registry}/ops/moved"
    pushed = push_publication(good, f"{ref}:1.0.0")
    evil_pushed = push_publication(evil, f"{ref}:1.0.0")  # unsigned: no referrers of its own
    bundle = (good / SIGNATURES_DIR / PUBLICATION_BUNDLE).read_bytes()
    client = open_registry(ref)
    subject = client.resolve(evil_pushed.digest)
    manifest, layer = bundle_referrer(bundle, subject, mt.COSIGN_SIGN_PREDICATE)
    client.push_blob(layer, BlobSource(data=bundle, size=len(bundle)))
    client.add_referrer(manifest, subject)
    assert pushed.digest != evil_pushed.digest
    assert _reason(lambda: verify_publication(f"{ref}:1.0.0", POLICY, trusted_root=_root(authority))) == (
        "signature_invalid"
    )


def _push_bundle_referrer(registry: str, repo: str, build: Path, bundle: bytes) -> str:
    """Push ``build`` unsigned and attach ``bundle`` as its signature referrer (consistent digests)."""
    for p in (build / SIGNATURES_DIR).glob("*"):
        p.unlink()
    ref = f"{registry}/{repo}:1.0.0"
    pushed = push_publication(build, ref)
    client = open_registry(ref)
    subject = client.resolve(pushed.digest)
    manifest, layer = bundle_referrer(bundle, subject, mt.COSIGN_SIGN_PREDICATE)
    client.push_blob(layer, BlobSource(data=bundle, size=len(bundle)))
    client.add_referrer(manifest, subject)
    return ref


def test_tampered_and_truncated_bundles(
    registry: str, make_build: Callable[..., Path], authority: SigningAuthority
) -> None:
    build = _signed(make_build, authority)
    good = (build / SIGNATURES_DIR / PUBLICATION_BUNDLE).read_bytes()
    truncated = good[: len(good) // 2]
    ref = _push_bundle_referrer(registry, "ops/truncated", build, truncated)
    assert (
        _reason(lambda: verify_publication(ref, POLICY, trusted_root=_root(authority))) == "bundle_malformed"
    )

    doc = json.loads(good)
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    statement["predicate"] = {"tampered": True}
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    build2 = _signed(make_build, authority, "build2")
    ref2 = _push_bundle_referrer(registry, "ops/tampered-bundle", build2, json.dumps(doc).encode())
    assert (
        _reason(lambda: verify_publication(ref2, POLICY, trusted_root=_root(authority)))
        == "signature_invalid"
    )


def test_unknown_ca_and_missing_signature(
    registry: str, make_build: Callable[..., Path], authority: SigningAuthority, tmp_path: Path
) -> None:
    other = SigningAuthority.init(tmp_path / "other-authority", default_issuer=ISSUER)
    build = _signed(make_build, other)
    ref = f"{registry}/ops/unknown-ca:1.0.0"
    push_publication(build, ref)
    assert _reason(lambda: verify_publication(ref, POLICY, trusted_root=_root(authority))) == "unknown_ca"

    unsigned = make_build("unsigned")
    ref2 = f"{registry}/ops/unsigned:1.0.0"
    push_publication(unsigned, ref2)
    assert (
        _reason(lambda: verify_publication(ref2, POLICY, trusted_root=_root(authority)))
        == "signature_missing"
    )


class _LateSigner:
    """Keeps using a certificate after it expired: the log integrates the entry 15 minutes later."""

    def __init__(self, authority: SigningAuthority) -> None:
        self.authority = authority
        self.issued_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)

    def issue_certificate(
        self, key: ec.EllipticCurvePrivateKey, *, identity: str, issuer: str | None = None
    ) -> Any:
        return self.authority.issue_certificate(key, identity=identity, issuer=issuer, now=self.issued_at)

    def log_dsse(self, envelope: dict[str, Any], certificate: x509.Certificate) -> LogEntry:
        return self.authority.log_dsse(envelope, certificate, now=self.issued_at + dt.timedelta(minutes=15))


def test_certificate_used_outside_validity(
    registry: str,
    make_build: Callable[..., Path],
    authority: SigningAuthority,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    build = make_build()
    # The authority's log refuses a certificate that is not valid now; a log that did not check
    # (its clock stopped inside the validity) is what the verifier must still catch.
    stopped = _LateSigner(authority).issued_at + dt.timedelta(minutes=5)

    class _StoppedClock(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> _StoppedClock:
            return cls.fromtimestamp(stopped.timestamp(), tz)

    monkeypatch.setattr(rekor_entries, "dt", types.SimpleNamespace(UTC=dt.UTC, datetime=_StoppedClock))
    sign_publication(build, authority=_LateSigner(authority), identity=IDENTITY, issuer=ISSUER)
    ref = f"{registry}/ops/expired:1.0.0"
    push_publication(build, ref)
    assert (
        _reason(lambda: verify_publication(ref, POLICY, trusted_root=_root(authority)))
        == "certificate_expired"
    )


def test_cli_push_pull_verify(
    registry: str, make_build: Callable[..., Path], authority: SigningAuthority, tmp_path: Path
) -> None:
    build = make_build()
    runner = CliRunner()
    ref = f"{registry}/ops/cli-images/debian-12"
    r = runner.invoke(
        app,
        [
            "sign",
            str(build),
            "--identity",
            IDENTITY,
            "--issuer",
            ISSUER,
            "--authority",
            str(authority.directory),
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["push", str(build), "--to", ref, "--json"])
    assert r.exit_code == 0, r.output
    digest = json.loads(r.stdout)["digest"]
    r = runner.invoke(app, ["pull", f"{ref}:1.0.0", str(tmp_path / "p"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["index_digest"] == digest
    args = ["--identity-regexp", IDENTITY_REGEXP, "--issuer", ISSUER, "--trusted-root", str(_root(authority))]
    r = runner.invoke(app, ["verify", f"{ref}:1.0.0", *args, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["verified"] is True
    wrong = [*args[:2], "--issuer", "https://wrong.example", *args[4:]]
    r = runner.invoke(app, ["verify", str(tmp_path / "p"), *wrong, "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["reason"] == "issuer_mismatch"
    # without --trusted-root the public Sigstore root applies: this authority is unknown there
    r = runner.invoke(app, ["verify", str(tmp_path / "p"), *args[:4], "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["reason"] == "unknown_ca"


@pytest.mark.parametrize("where", ["registry", "layout"])
def test_delete_tag_and_manifest(
    where: str, registry: str, make_build: Callable[..., Path], authority: SigningAuthority, tmp_path: Path
) -> None:
    from diskci.errors import RegistryError

    build = _signed(make_build, authority)
    ref = f"{registry}/ops/delete" if where == "registry" else f"oci-layout:{tmp_path / 'oci'}"
    pushed = push_publication(build, f"{ref}:1.0.0")
    client = open_registry(f"{ref}:1.0.0")
    referrers = client.referrers(pushed.digest)
    assert len(referrers) == 2
    for r in referrers:
        client.delete_manifest(r.digest)
    client.delete_tag(f"sha256-{pushed.digest.split(':')[1]}")
    client.delete_tag("1.0.0")
    with pytest.raises(RegistryError, match="not found"):
        client.resolve("1.0.0")
    with pytest.raises(RegistryError, match="not found"):
        client.resolve(referrers[0].digest)
    assert client.referrers(pushed.digest) == []
