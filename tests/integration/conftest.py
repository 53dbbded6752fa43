"""Integration fixtures: Debian's docker-registry (distribution 2.8) on 127.0.0.1, small signed builds,
moto's EC2 server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loopback import free_port

from diskci import mediatypes as mt
from diskci.manifest import Artifact, BuildManifest
from diskci.process import spawn
from diskci.supplychain.authority import SigningAuthority
from polling import http_ok, wait_until

ISSUER = "https://git.example.com"


class RegistryServer:
    def __init__(self, address: str, storage: Path) -> None:
        self.address = address
        self.storage = storage

    def blob_data(self, digest: str) -> Path:
        """The file distribution serves ``digest`` from (for tampering with registry contents)."""
        hexpart = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """``docker-registry serve`` with temporary storage and deletes enabled, on a free loopback port."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.fail(
            "docker-registry is not installed (Debian package docker-registry, deploy/debian-packages.txt)"
        )
    root = tmp_path_factory.mktemp("registry")
    storage = root / "storage"
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    address = f"127.0.0.1:{port}"
    # stopped when the fixture ends: SIGTERM, 10 s, then SIGKILL
    with spawn([exe, "serve", str(config)], inherit_env=True, log_file=root / "registry.log") as proc:

        def log_tail() -> str:
            return (root / "registry.log").read_text()[-2000:]

        def serving() -> bool:
            if http_ok(f"http://{address}/v2/"):
                return True
            if proc.poll() is not None:
                pytest.fail(f"docker-registry did not start: {log_tail()}")
            return False

        wait_until(serving, 20, what="docker-registry to start", detail=log_tail)
        yield RegistryServer(address, storage)


@pytest.fixture
def registry(registry_server: RegistryServer) -> str:
    """``host:port`` of the test registry."""
    return registry_server.address


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's server (EC2 and the rest of AWS, over HTTP) on a free loopback port, one per module."""
    import httpx
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()  # nothing of another module's
        yield url
    finally:
        server.stop()


@pytest.fixture
def moto_endpoint(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto's URL, with the AWS environment boto3 reads set to dummy values."""
    from moto_ec2 import AWS_ENV  # boto3 comes with it: imported by the tests that use moto only

    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return moto_url


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> SigningAuthority:
    return SigningAuthority.init(tmp_path_factory.mktemp("auth") / "authority", default_issuer=ISSUER)


def _write_oci_family(arch_dir: Path) -> None:
    """A tiny runnable OCI image layout at ``<arch>/oci`` (what the OCI stage writes)."""
    import hashlib
    import io
    import json
    import tarfile

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (arch_dir / "oci/blobs/sha256").mkdir(parents=True, exist_ok=True)
        (arch_dir / "oci/blobs/sha256" / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("etc/os-release")
        payload = b"ID=debian\n"
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    layer = buf.getvalue()
    layer_digest, layer_size = put(layer)
    config = json.dumps(
        {
            "architecture": arch_dir.name,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        },
        sort_keys=True,
    ).encode()
    config_digest, config_size = put(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": layer_digest, "size": layer_size}],
        },
        sort_keys=True,
    ).encode()
    manifest_digest, manifest_size = put(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": {"os": "linux", "architecture": arch_dir.name},
            }
        ],
    }
    (arch_dir / "oci/index.json").write_text(json.dumps(index, sort_keys=True))
    (arch_dir / "oci/oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


@pytest.fixture
def make_build(tmp_path: Path) -> Callable[..., Path]:
    """A small build directory with build.json (two arches; amd64 with an OCI image family)."""

    def make(name: str = "build", *, version: str = "1.0.0", size: int = 64 * 1024) -> Path:
        d = tmp_path / name
        m = BuildManifest(
            platform="debian-12",
            version=version,
            spec_digest="ab" * 32,
            spec={},
            source_date_epoch=1764000000,
        )
        for arch in ("amd64", "arm64"):
            ad = d / arch
            ad.mkdir(parents=True)
            (ad / "vmlinuz").write_bytes(os.urandom(size))
            (ad / "root.squashfs").write_bytes(os.urandom(3 * size + 123))
            (ad / "packages.json").write_text('{"packages": ["busybox-static"]}')
            ab = m.arch(arch)
            ab.add(Artifact.from_file(d, ad / "vmlinuz", mt.KERNEL))
            ab.add(Artifact.from_file(d, ad / "root.squashfs", mt.ROOT_IMAGE, with_fsverity=True))
            ab.add(Artifact.from_file(d, ad / "packages.json", mt.PACKAGES_JSON))
        _write_oci_family(d / "amd64")
        m.arch("amd64").add(Artifact.from_file(d, d / "amd64/oci/index.json", mt.OCI_INDEX))
        m.save(d)
        return d

    return make
