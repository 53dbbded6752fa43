"""Secure Boot signing on the real app: a published publication's UKI is signed with the fleet key,
served to nodes through ``/ipxe``, verifiable with ``sbverify`` against the exported certificate, and a
signing failure never loses the publication."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from netboot_support import HEXHYP, add_platform_with_node, add_publication
from sqlalchemy import select

from diskci.formats import pe
from diskci.platform.db.models import DiskImagePublication, Event, NodeInstance
from diskci.platform.db.session import Database
from diskci.platform.secureboot.keys import FleetKey
from diskci.platform.secureboot.signing import SIGNED_NAME, sign_after_publish
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.netboot import NetbootService
from diskci.platform.settings import PlatformSettings

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
pytestmark = pytest.mark.skipif(
    not STUB.is_file(), reason="needs systemd-boot-efi (deploy/debian-packages.txt)"
)


@pytest.fixture
def app(platform_app: Any) -> Any:
    platform_app.state.netboot = NetbootService(cache_seconds=0)
    return platform_app


@pytest.fixture
def blobs(platform_settings: PlatformSettings) -> BlobCache:
    return BlobCache(platform_settings.blob_dir)


def _publication(database: Database, blobs: BlobCache) -> tuple[int, bytes, bytes]:
    platform_id = add_platform_with_node(database)
    root = os.urandom(4096)
    sha = hashlib.sha256(root).hexdigest()
    cmdline = f"diskci.root_sha256={sha} diskci.root_size=4096 ip=dhcp console=ttyS0 quiet"
    uki = pe.add_sections(
        STUB.read_bytes(),
        [
            (".osrel", b"ID=debian\n"),
            (".linux", os.urandom(9000)),
            (".initrd", os.urandom(5000)),
            (".cmdline", cmdline.encode()),
        ],
    )
    files = {"vmlinuz": os.urandom(900), "initramfs.img": os.urandom(500), "rootfs.img": root, "uki.efi": uki}
    pub_id = add_publication(
        database,
        blobs,
        platform_id,
        files,
        version="1.0.0",
        manifest_digest="sha256:" + "2" * 64,
        make_default=True,
    )
    return pub_id, uki, root


def _sbverify(cert: Path, image: bytes, tmp_path: Path) -> int:
    path = tmp_path / "image.efi"
    path.write_bytes(image)
    return subprocess.run(["sbverify", "--cert", cert, path], capture_output=True, check=False).returncode


def test_a_verified_uki_is_signed_served_and_verifies(
    app: Any,
    platform_client: Any,
    platform_db: Database,
    platform_settings: PlatformSettings,
    blobs: BlobCache,
    tmp_path: Path,
) -> None:
    pub_id, unsigned, _ = _publication(platform_db, blobs)
    hook = sign_after_publish(platform_settings, platform_db, blobs)
    # no fleet key yet: nothing is signed, nodes keep today's path
    hook(pub_id)
    script = platform_client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64").text
    assert "uki.signed.efi" not in script and "kernel " in script

    key = FleetKey.from_settings(platform_settings)
    cert = key.rotate()
    hook(pub_id)
    with platform_db.read_session() as s:
        pub = s.get(DiskImagePublication, pub_id)
        assert pub is not None and pub.status == "published"
        entry = pub.verified_artifacts.arch("amd64")
        assert entry is not None and entry.file(SIGNED_NAME) is not None
        event = s.scalar(select(Event).where(Event.type == "disk_image_uki_signed"))
        assert event is not None and event.payload["certificate_sha256"] == cert.fingerprint

    script = platform_client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64").text
    base = platform_settings.public_base_url
    assert "iseq ${platform} efi || goto legacy" in script
    assert f"chain --autofree {base}/netboot/{pub_id}/amd64/{SIGNED_NAME} " in script
    assert f"kernel {base}/netboot/{pub_id}/amd64/vmlinuz" in script  # a BIOS iPXE: today's path

    r = platform_client.get(f"/netboot/{pub_id}/amd64/{SIGNED_NAME}")  # no login: a boot file
    assert r.status_code == 200
    signed = r.content
    pem = tmp_path / "fleet.pem"
    pem.write_bytes(cert.pem)
    assert _sbverify(pem, signed, tmp_path) == 0
    cmdline = pe.PeImage.parse(signed).section_data(".cmdline").decode()
    assert cmdline.startswith(pe.PeImage.parse(unsigned).section_data(".cmdline").decode())
    assert f"diskci.root={base}/netboot/{pub_id}/amd64/rootfs.img" in cmdline
    assert f"diskci.report={base}/api/v1/netboot/report?publication={pub_id}" in cmdline
    assert "diskci.not_after=" in cmdline
    # the unsigned build artifact is not a boot file
    assert platform_client.get(f"/netboot/{pub_id}/amd64/uki.efi").status_code == 401

    # another key's certificate does not verify it, and neither does an edited command line
    other = FleetKey(tmp_path / "other" / "db.key", tmp_path / "other" / "db.crt").rotate()
    other_pem = tmp_path / "other.pem"
    other_pem.write_bytes(other.pem)
    assert _sbverify(other_pem, signed, tmp_path) != 0
    edited = bytearray(signed)
    at = edited.find(b"diskci.root_sha256=") + len("diskci.root_sha256=")
    edited[at] = ord("0") if edited[at] != ord("0") else ord("1")
    assert _sbverify(pem, bytes(edited), tmp_path) != 0

    # the node reports what its firmware enforced: the initramfs says so; the root's booted marker,
    # which does not read the firmware, keeps what the same boot's initramfs reported
    report = f"/api/v1/netboot/report?publication={pub_id}&mac={HEXHYP}"
    for status in ("fetched", "verified", "switching_root"):
        r = platform_client.post(report, json={"status": status, "secure_boot": "on"})
        assert r.status_code == 202
    assert platform_client.post(report, json={"status": "booted"}).status_code == 202
    with platform_db.read_session() as s:
        node = s.scalar(select(NodeInstance).where(NodeInstance.hostname == "node-1"))
        assert node is not None and node.last_report is not None
        assert node.last_report["status"] == "booted"
        assert node.last_report["verified_boot"] is True and node.last_report["secure_boot"] == "on"


def test_a_signing_failure_is_an_event_and_the_publication_stays(
    app: Any,
    platform_client: Any,
    platform_db: Database,
    platform_settings: PlatformSettings,
    blobs: BlobCache,
) -> None:
    pub_id, _, _ = _publication(platform_db, blobs)
    key = FleetKey.from_settings(platform_settings)
    key.rotate()
    key.key_file.write_text("not a key\n")
    sign_after_publish(platform_settings, platform_db, blobs)(pub_id)
    with platform_db.read_session() as s:
        pub = s.get(DiskImagePublication, pub_id)
        assert pub is not None and pub.status == "published"
        entry = pub.verified_artifacts.arch("amd64")
        assert entry is not None and entry.file(SIGNED_NAME) is None
        event = s.scalar(select(Event).where(Event.type == "disk_image_uki_signing_failed"))
        assert (
            event is not None
            and event.reason == "signing_failed"
            and "sbsign failed" in event.payload["detail"]
        )
    script = platform_client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64").text
    assert "uki.signed.efi" not in script and "kernel " in script  # served on the unsigned path
