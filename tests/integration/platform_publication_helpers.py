"""Helpers for the platform's integration tests: small real builds, signed by a real embedded signing
authority and pushed with diskci's own push, plus the database rows a webhook delivery leaves."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diskci import mediatypes as mt
from diskci.formats import composefs
from diskci.formats.fstree import Node
from diskci.manifest import Artifact, BuildManifest
from diskci.platform.db.models import NodePlatform, WebhookDelivery
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.publication_processor import DiskImagePublicationProcessor
from diskci.registry.push import PushResult, push_publication
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import sign_publication

IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v1"
IDENTITY_REGEXP = r"https://git\.example\.com/ops/images/\.gitea/workflows/build\.yaml@refs/tags/v.*"
ISSUER = "https://git.example.com"
CMDLINE = "console=ttyS0 quiet"


def make_netboot_build(
    build_dir: Path,
    *,
    platform: str,
    version: str,
    arches: tuple[str, ...] = ("amd64",),
    root_size: int = 300_000,
    lie_about_fsverity: bool = False,
    composefs_root: Node | bytes | None = None,
) -> BuildManifest:
    """A build directory with a kernel, an initramfs and a root image per architecture; with
    ``composefs_root``, a composefs image ``rootfs.cfs`` of that tree too (or those bytes, as they are)."""
    manifest = BuildManifest(
        platform=platform,
        version=version,
        spec_digest="sha256:" + "ab" * 32,
        spec={"name": platform, "kernel_cmdline": CMDLINE, "arch_kernel_cmdline": {}},
        source_date_epoch=1_700_000_000,
    )
    for arch in arches:
        arch_dir = build_dir / arch
        arch_dir.mkdir(parents=True, exist_ok=True)
        files = {
            "vmlinuz": (mt.KERNEL, 40_000, False),
            "initramfs.img": (mt.INITRAMFS, 60_000, False),
            "rootfs.img": (mt.ROOT_IMAGE, root_size, True),
        }
        ab = manifest.arch(arch)
        for name, (media_type, size, verity) in files.items():
            path = arch_dir / name
            path.write_bytes(os.urandom(size))
            art = Artifact.from_file(build_dir, path, media_type, with_fsverity=verity)
            if verity and lie_about_fsverity:
                art = art.model_copy(update={"fsverity": "0" * 64})
            ab.add(art)
        ab.composefs_digest = ab.artifact("rootfs.img").fsverity
        if composefs_root is not None:
            image = arch_dir / "rootfs.cfs"
            if isinstance(composefs_root, bytes):
                image.write_bytes(composefs_root)
            else:
                with open(image, "wb") as f:
                    composefs.write(composefs_root, f)
            art = Artifact.from_file(build_dir, image, mt.COMPOSEFS_IMAGE, with_fsverity=True)
            ab.add(art)
            ab.composefs_digest = art.fsverity
    manifest.save(build_dir)
    return manifest


@dataclass
class Published:
    build_dir: Path
    build: BuildManifest
    push: PushResult
    reference: str

    @property
    def digest(self) -> str:
        return self.push.digest


def sign_and_push(
    build_dir: Path,
    authority: SigningAuthority,
    repository: str,
    *,
    identity: str = IDENTITY,
    issuer: str = ISSUER,
) -> Published:
    build = BuildManifest.load(build_dir)
    sign_publication(build_dir, authority=authority, identity=identity, issuer=issuer)
    ref = f"{repository}:{build.version}"
    return Published(build_dir, build, push_publication(build_dir, ref), ref)


def repository_for(registry: str, test_name: str) -> str:
    """A repository of its own on ``registry`` for the test named ``test_name``."""
    name = test_name.lower().replace("[", "-").replace("]", "").replace("_", "-")
    return f"{registry}/ops/disk-images/{name}"


def make_processor(database: Database, blobs: BlobCache, tmp_path: Path) -> DiskImagePublicationProcessor:
    """A processor on ``database`` and ``blobs`` with no signing authority of its own."""
    return DiskImagePublicationProcessor(
        database=database, blobs=blobs, authority_dir=tmp_path / "no-authority"
    )


def make_platform(
    database: Database,
    name: str,
    repository: str,
    authority: SigningAuthority,
    *,
    arches: tuple[str, ...] = ("amd64",),
    identity_regexp: str = IDENTITY_REGEXP,
    issuer: str = ISSUER,
) -> int:
    with database.session() as s:
        platform = NodePlatform(
            name=name,
            architectures=list(arches),
            registry_repository=repository,
            cosign_identity_regexp=identity_regexp,
            cosign_oidc_issuer=issuer,
            trusted_root=authority.trusted_root_json().decode(),
        )
        s.add(platform)
        s.flush()
        return platform.id


def deliver(
    database: Database, platform_id: int, pub: Published, *, digest: str | None = None, critical: bool = False
) -> str:
    """The WebhookDelivery row the receiver stores for a ``disk_image_built`` notification."""
    delivery_id = secrets.token_hex(16)
    payload: dict[str, Any] = {
        "node_platform": pub.build.platform,
        "version": pub.build.version,
        "reference": pub.reference,
        "manifest_digest": digest or pub.digest,
        "source": {"repo": "https://git.example.com/ops/images", "ref": "refs/tags/v1", "commit": "c0ffee"},
        "run_id": "1",
        "critical": critical,
    }
    with database.session() as s:
        s.add(WebhookDelivery(delivery_id=delivery_id, platform_id=platform_id, payload=payload))
    return delivery_id
