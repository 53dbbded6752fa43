"""The whole path through the platform, as ``make demo`` runs it: publish the shared amd64 build (sign,
push to an OCI layout, HMAC webhook), the platform verifies it, it becomes the default, and a QEMU
machine netboots through ``/boot.ipxe`` and reports ``booted``. Then the root image in the platform's
blob cache is changed: the node refuses it (sha256 mismatch) and never switches root.

Tampering at the other hops (registry blob, manifest, bundle, identity, issuer) is caught by the
processor before anything is served: tests/integration/test_publication_processor.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from diskci.demo import DEMO_MAC, DemoConfig, PlatformServer, qemu_netboot_argv, run_demo
from diskci.manifest import BuildManifest
from diskci.platform.services.blobcache import BlobCache
from diskci.qemu import QemuConsole
from diskci.spec import Architecture

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]


def test_publication_verified_defaulted_and_netbooted_then_tampered_root_refused(
    amd64_build: Path, test_cache: Path, tmp_path: Path
) -> None:
    state = tmp_path / "demo"
    result = run_demo(
        DemoConfig(
            spec_path=REPO / "platforms" / "debian-12-amd64.yaml",
            state_dir=state,
            cache_dir=test_cache,
            build_dir=amd64_build,
        )
    )
    assert result.publication_id > 0
    assert result.manifest_digest.startswith("sha256:")
    assert result.booted_line.strip().endswith("diskci: booted debian-12-amd64 2026.11.0")
    # the node reported each step of the verified boot, in order, ending with the real system
    order = [s for s in result.reports if s in ("fetched", "verified", "switching_root", "booted")]
    assert order[-4:] == ["fetched", "verified", "switching_root", "booted"]

    # The root image the platform serves is changed behind its back: the node must refuse it.
    root = BuildManifest.load(amd64_build).arch("amd64").artifact("rootfs.img")
    cache = BlobCache(state / "platform" / "blobs")
    blob = cache.path("sha256:" + root.sha256)
    assert blob.exists()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))

    with PlatformServer(state / "platform", result_port(result.base_url)) as server:
        argv = qemu_netboot_argv(Architecture.amd64, f"http://10.0.2.2:{server.port}/boot.ipxe", DEMO_MAC)
        with QemuConsole(argv, log_path=tmp_path / "tampered-console.log") as vm:
            line = vm.wait_for(r"diskci: error sha256_mismatch", timeout=300)
            assert "sha256" in line
            assert not vm.saw(r"diskci: booted"), "a tampered root image must never be booted"
            assert not vm.saw(r"switching root|switch_root")


def result_port(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])
