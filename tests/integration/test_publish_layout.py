"""Sign, push, pull and verify with the embedded default registry: an OCI image layout directory."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from typer.testing import CliRunner

from diskci import mediatypes as mt
from diskci.cli.main import app
from diskci.errors import UsageError, VerificationFailed
from diskci.registry.publication import PUBLICATION_BUNDLE, SIGNATURES_DIR, plan_publication
from diskci.registry.pull import pull_publication
from diskci.registry.push import push_publication
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import IdentityPolicy, sign_publication
from diskci.supplychain.verifier import verify_publication
from host_tools import needs_tool

IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v0.3.0"
ISSUER = "https://git.example.com"
POLICY = IdentityPolicy(identity_regexp=r"https://git\.example\.com/ops/images/.*", issuer=ISSUER)


def _reason(fn: Callable[[], Any]) -> str:
    with pytest.raises(VerificationFailed) as info:
        fn()
    return info.value.reason


@pytest.fixture
def published(
    make_build: Callable[..., Path], authority: SigningAuthority, tmp_path: Path
) -> tuple[Path, str, Path]:
    build = make_build()
    sign_publication(build, authority=authority, identity=IDENTITY, issuer=ISSUER)
    layout = tmp_path / "oci"
    push_publication(build, f"oci-layout:{layout}")
    return build, f"oci-layout:{layout}:1.0.0", authority.directory / "trusted_root.json"


def test_layout_roundtrip_and_idempotent(published: tuple[Path, str, Path], tmp_path: Path) -> None:
    build, ref, root = published
    layout = Path(ref.removeprefix("oci-layout:").rsplit(":", 1)[0])
    index_before = (layout / "index.json").read_bytes()
    again = push_publication(build, ref)
    assert again.blobs_sent == 0
    assert (layout / "index.json").read_bytes() == index_before
    tags = [m["annotations"][mt.ANNOTATION_REF_NAME] for m in json.loads(index_before)["manifests"]]
    assert tags == ["1.0.0", f"sha256-{again.digest.split(':')[1]}"]

    pulled = pull_publication(ref, tmp_path / "pulled")
    assert pulled.index_digest == again.digest == plan_publication(build).index_desc.digest
    assert sorted(p.name for p in pulled.bundles) == ["provenance.sigstore.json", "publication.sigstore.json"]
    # the runnable image is a valid OCI layout again, byte for byte
    assert (tmp_path / "pulled/amd64/oci/index.json").read_bytes() == (
        build / "amd64/oci/index.json"
    ).read_bytes()
    result = verify_publication(ref, POLICY, trusted_root=root)
    assert result.platform == "debian-12" and result.version == "1.0.0"
    assert verify_publication(tmp_path / "pulled", POLICY, trusted_root=root).index_digest == again.digest


@needs_tool("skopeo", "deploy/debian-packages.txt")
def test_runnable_image_is_readable_by_skopeo(published: tuple[Path, str, Path]) -> None:
    _build, ref, _root = published
    layout = ref.removeprefix("oci-layout:").rsplit(":", 1)[0]
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", "--override-arch", "amd64", f"oci:{layout}:1.0.0"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(out.stdout)["mediaType"] == mt.OCI_INDEX


def test_layout_tampered_layer_and_manifest(published: tuple[Path, str, Path]) -> None:
    build, ref, root = published
    layout = Path(ref.removeprefix("oci-layout:").rsplit(":", 1)[0])
    pub = plan_publication(build)
    kernel = next(a for a in pub.build.all_artifacts() if a.path == "arm64/vmlinuz")
    blob = layout / "blobs/sha256" / kernel.sha256
    original = blob.read_bytes()
    blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert _reason(lambda: verify_publication(ref, POLICY, trusted_root=root)) == "digest_mismatch"
    blob.write_bytes(original)

    manifest_path = layout / "blobs/sha256" / pub.manifests[-1][0].digest.split(":")[1]
    manifest = json.loads(manifest_path.read_bytes())
    manifest["annotations"][mt.ANNOTATION_VERSION] = "9.9.9"
    manifest_path.write_bytes(json.dumps(manifest).encode())
    assert _reason(lambda: verify_publication(ref, POLICY, trusted_root=root)) == "manifest_invalid"


def test_directory_bundle_tampering(published: tuple[Path, str, Path], tmp_path: Path) -> None:
    build, _ref, root = published
    bundle_path = build / SIGNATURES_DIR / PUBLICATION_BUNDLE
    good = bundle_path.read_bytes()
    assert verify_publication(build, POLICY, trusted_root=root).identity == IDENTITY

    bundle_path.write_bytes(good[: len(good) - 40])
    assert _reason(lambda: verify_publication(build, POLICY, trusted_root=root)) == "bundle_malformed"

    doc = json.loads(good)
    sig = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    bundle_path.write_text(json.dumps(doc))
    assert _reason(lambda: verify_publication(build, POLICY, trusted_root=root)) == "signature_invalid"

    doc = json.loads(good)
    doc["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["rootHash"] = base64.b64encode(
        bytes(32)
    ).decode()
    bundle_path.write_text(json.dumps(doc))
    assert _reason(lambda: verify_publication(build, POLICY, trusted_root=root)) == "tlog_invalid"

    bundle_path.write_bytes(good)
    (build / "amd64/packages.json").write_text('{"packages": ["evil"]}     ')  # same size, other bytes
    assert _reason(lambda: verify_publication(build, POLICY, trusted_root=root)) == "digest_mismatch"


def test_push_refuses_stale_signature(
    published: tuple[Path, str, Path], make_build: Callable[..., Path], tmp_path: Path
) -> None:
    build, _ref, _root = published
    other = make_build("other")
    (other / SIGNATURES_DIR).mkdir()
    shutil.copy(build / SIGNATURES_DIR / PUBLICATION_BUNDLE, other / SIGNATURES_DIR / PUBLICATION_BUNDLE)
    with pytest.raises(UsageError, match="not this publication's index"):
        push_publication(other, f"oci-layout:{tmp_path / 'stale'}")
    assert not (tmp_path / "stale" / "index.json").exists()


def test_cli_publish_to_layout(
    make_build: Callable[..., Path], authority: SigningAuthority, tmp_path: Path
) -> None:
    build = make_build()
    r = CliRunner().invoke(
        app,
        [
            "publish",
            str(build),
            "--to",
            f"oci-layout:{tmp_path / 'oci'}",
            "--identity",
            IDENTITY,
            "--issuer",
            ISSUER,
            "--authority",
            str(authority.directory),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["pushed"]["digest"] == out["signed"]["index_digest"]
    assert out["notified"] is None
    r = CliRunner().invoke(
        app,
        [
            "verify",
            f"oci-layout:{tmp_path / 'oci'}:1.0.0",
            "--identity-regexp",
            "https://git.example.com/ops/images",  # a prefix only: anchoring makes it fail
            "--issuer",
            ISSUER,
            "--trusted-root",
            str(authority.directory / "trusted_root.json"),
        ],
    )
    assert r.exit_code == 1


def test_cli_publish_notifies(
    make_build: Callable[..., Path], authority: SigningAuthority, tmp_path: Path
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(202)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = tmp_path / "hook.secret"
    secret.write_text("hook-secret\n")
    build = make_build()
    try:
        r = CliRunner().invoke(
            app,
            [
                "publish",
                str(build),
                "--to",
                f"oci-layout:{tmp_path / 'oci'}",
                "--identity",
                IDENTITY,
                "--issuer",
                ISSUER,
                "--authority",
                str(authority.directory),
                "--notify-url",
                f"http://127.0.0.1:{server.server_address[1]}/api/v1/system/webhooks/disk_image_built",
                "--secret-file",
                str(secret),
                "--source-repo",
                "https://git.example.com/ops/images",
                "--source-ref",
                "refs/tags/v0.3.0",
                "--source-commit",
                "0123abcd",
                "--run-id",
                "77",
                "--json",
            ],
        )
    finally:
        server.shutdown()
        server.server_close()
    assert r.exit_code == 0, r.output
    digest = json.loads(r.stdout)["pushed"]["digest"]
    headers, body = received[0]
    Webhook(b"hook-secret").verify(body, headers)  # Standard Webhooks: id, timestamp and body signed
    payload = json.loads(body)
    assert payload == {
        "node_platform": "debian-12",
        "version": "1.0.0",
        "reference": f"oci-layout:{tmp_path / 'oci'}:1.0.0",
        "manifest_digest": digest,
        "source": {
            "repo": "https://git.example.com/ops/images",
            "ref": "refs/tags/v0.3.0",
            "commit": "0123abcd",
        },
        "run_id": "77",
        "critical": False,
    }
