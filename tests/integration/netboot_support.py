"""Database rows for the netboot route tests: a platform with one known node, and published
publications whose artifacts are stored in the blob cache."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from diskci.platform.db.models import DiskImagePublication, NodeInstance, NodePlatform
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache

MAC = "52:54:00:12:34:56"
HEXHYP = MAC.replace(":", "-")
PLATFORM = "debian-12-amd64"


def add_platform_with_node(database: Database) -> int:
    """The ``debian-12-amd64`` platform with node ``node-1`` (MAC ``MAC``) on it; the platform's id."""
    with database.session() as s:
        p = NodePlatform(
            name=PLATFORM,
            architectures=["amd64"],
            registry_repository=f"127.0.0.1:5000/ops/disk-images/{PLATFORM}",
            cosign_identity_regexp="https://git.example.com/.*",
            cosign_oidc_issuer="https://git.example.com",
        )
        s.add(p)
        s.flush()
        s.add(NodeInstance(hostname="node-1", mac_addresses=[MAC], platform_id=p.id))
        return p.id


def add_publication(
    database: Database,
    blobs: BlobCache,
    platform_id: int,
    files: dict[str, bytes],
    *,
    version: str,
    manifest_digest: str,
    status: str = "published",
    cmdline: str = "console=ttyS0 quiet",
    make_default: bool = False,
) -> int:
    """Store ``files`` in ``blobs`` and record an amd64 publication of them (pruned now if ``status`` is
    ``pruned``); with ``make_default``, the platform's default publication. The publication's id."""
    records = []
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        blobs.put_bytes(digest, data)
        records.append(
            {
                "name": name,
                "media_type": "application/octet-stream",
                "size": len(data),
                "sha256": digest,
                "fsverity": None,
                "digest": f"sha256:{digest}",
            }
        )
    with database.session() as s:
        pub = DiskImagePublication(
            platform_id=platform_id,
            version=version,
            reference=f"127.0.0.1:5000/ops/disk-images/{PLATFORM}:{version}",
            manifest_digest=manifest_digest,
            status=status,
            pruned_at=datetime.now(UTC) if status == "pruned" else None,
            artifacts={
                "amd64": {"manifest_digest": "sha256:" + "1" * 64, "cmdline": cmdline, "artifacts": records}
            },
        )
        s.add(pub)
        s.flush()
        if make_default:
            platform = s.get(NodePlatform, platform_id)
            assert platform is not None
            platform.default_publication_id = pub.id
        return pub.id
