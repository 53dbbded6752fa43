"""A node platform with a published (and a failed) publication, for the dashboard tests."""

from __future__ import annotations

from datetime import UTC, datetime

from diskci.platform.actions.catalog import invoke
from diskci.platform.db.models import DiskImagePublication, NodePlatform, Role
from diskci.platform.db.session import Database
from diskci.platform.settings import PlatformSettings

PLATFORM = "debian-12-amd64"
COMPOSEFS = "sha256:" + "c0" * 32
KERNEL_SHA = "ab" * 32
VERITY = "sha256:" + "fe" * 32


def seed(database: Database, settings: PlatformSettings) -> tuple[int, int]:
    """The platform (created through the catalog, as an admin) and its publications: (published, failed)."""
    invoke(
        "system_create_node_platform",
        {
            "name": PLATFORM,
            "description": "Debian 12 nodes",
            "architectures": ["amd64"],
            "registry_repository": "127.0.0.1:5000/ops/disk-images/debian-12-amd64",
            "cosign_identity_regexp": r"^https://ci\.example/.+$",
            "cosign_oidc_issuer": "https://ci.example",
        },
        database=database,
        settings=settings,
        actor="test",
        role=Role.ADMIN,
    )
    artifacts = {
        "amd64": {
            "manifest_digest": "sha256:" + "11" * 32,
            "composefs_digest": COMPOSEFS,
            "kernel_version": "6.1.0-40-amd64",
            "artifacts": [
                {
                    "name": "vmlinuz",
                    "media_type": "application/vnd.diskci.kernel",
                    "size": 8_123_456,
                    "sha256": KERNEL_SHA,
                    "fsverity": VERITY,
                    "digest": "sha256:" + KERNEL_SHA,
                }
            ],
        }
    }
    with database.session() as s:
        platform = s.query(NodePlatform).filter_by(name=PLATFORM).one()
        good = DiskImagePublication(
            platform_id=platform.id,
            version="1.2.0",
            reference="127.0.0.1:5000/ops/disk-images/debian-12-amd64:1.2.0",
            status="published",
            manifest_digest="sha256:" + "22" * 32,
            composefs_digest=COMPOSEFS,
            artifacts=artifacts,
            signer_identity="https://ci.example/ops/images/.ci/build.yml@refs/heads/main",
            signer_issuer="https://ci.example",
            signed_at=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
        )
        bad = DiskImagePublication(
            platform_id=platform.id,
            version="1.3.0",
            reference="127.0.0.1:5000/ops/disk-images/debian-12-amd64:1.3.0",
            status="failed",
            failure_reason="signature_invalid",
            failure_detail="the signer <b>evil</b> is not allowed",
            manifest_digest="sha256:" + "33" * 32,
        )
        s.add_all([good, bad])
        s.flush()
        return good.id, bad.id
