"""Retention sweep over 100,000 publications (goal: under 10 s).

Seeds a platform database (SQLite by default, or ``--database-url``) with ``--publications`` published
rows spread over ``--platforms`` platforms and two years of age, ``--expired`` of which have crossed
their platform's routine or critical period since the last daily run; those have real objects in an
OCI image layout registry per platform (index, per-arch manifest and a signature-bundle referrer) and
real files in the blob cache. Then times, on the same data: the preview (selection only), and the
sweep (lock, selection, registry deletions, row updates with events, blob-cache garbage collection).
Seeding is not timed.

Run: ``.venv/bin/python bench/retention.py [--publications 100000] [--expired 500]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

GOAL_SECONDS = 10.0


def _hex(n: int, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{n}".encode()).hexdigest()


def seed(database: Any, layouts: Path, blobs: Any, args: argparse.Namespace) -> int:
    """Insert the platforms and publications; returns how many are expected to be pruned."""
    from sqlalchemy import insert, update

    from diskci import mediatypes as mt
    from diskci.canonical import canonical_json
    from diskci.platform.db.models import DiskImagePublication, NodePlatform
    from diskci.registry import Descriptor, open_registry

    rng = random.Random(42)
    now = datetime.now(UTC)
    per_platform = args.publications // args.platforms
    expired_per_platform = args.expired // args.platforms
    with database.session() as s:
        for p in range(args.platforms):
            s.add(
                NodePlatform(
                    name=f"bench-{p:03d}",
                    architectures=["amd64", "arm64"],
                    registry_repository=f"oci-layout:{layouts / f'bench-{p:03d}'}",
                    cosign_identity_regexp="https://ci.example/.*",
                    cosign_oidc_issuer="https://ci.example",
                    retention_routine_days=90,
                    retention_critical_days=365,
                )
            )
    empty = b"{}"
    expected = 0
    for p in range(args.platforms):
        layout = f"oci-layout:{layouts / f'bench-{p:03d}'}"
        client = open_registry(layout) if expired_per_platform else None
        rows: list[dict[str, Any]] = []
        for i in range(per_platform):
            n = p * per_platform + i
            version = f"{i // 1000}.{i % 1000}.0"
            critical = rng.random() < 0.05
            if i < expired_per_platform:  # crossed its period within the last day
                age = (365 if critical else 90) + rng.uniform(0.01, 0.99)
            elif i == per_platform - 1:
                age = 0.5  # the newest
            else:  # already pruned long ago, or still young
                age = rng.uniform(1, 89) if rng.random() < 0.5 else rng.uniform(0, 360)
                if age >= 90 and not critical:
                    age = rng.uniform(1, 89)
            arts: dict[str, Any] = {}
            index_digest = "sha256:" + _hex(n, "index")
            for arch in ("amd64", "arm64"):
                files = [
                    {
                        "name": name,
                        "media_type": "application/octet-stream",
                        "size": 4096,
                        "sha256": _hex(n, f"{arch}/{name}"),
                        "fsverity": None,
                        "digest": "sha256:" + _hex(n, f"{arch}/{name}"),
                    }
                    for name in ("vmlinuz", "initramfs.img", "rootfs.img")
                ]
                arts[arch] = {
                    "manifest_digest": "sha256:" + _hex(n, arch),
                    "cmdline": "console=ttyS0",
                    "artifacts": files,
                }
            if i < expired_per_platform and client is not None:
                expected += 1
                # real registry objects and blob-cache files for what the sweep will delete
                manifests = []
                for arch in ("amd64", "arm64"):
                    for f in arts[arch]["artifacts"]:
                        data = f"{n}/{arch}/{f['name']}".encode() * 64
                        digest = hashlib.sha256(data).hexdigest()
                        blobs.put_bytes(digest, data)
                        f.update(sha256=digest, digest=f"sha256:{digest}", size=len(data))
                    manifest = canonical_json(
                        {
                            "schemaVersion": 2,
                            "mediaType": mt.OCI_MANIFEST,
                            "artifactType": mt.ARTIFACT_TYPE_IMAGE,
                            "config": Descriptor.for_bytes(mt.OCI_EMPTY, empty).to_json(),
                            "layers": [],
                            "annotations": {"n": str(n), mt.ANNOTATION_ARCH: arch},
                        }
                    )
                    arts[arch]["manifest_digest"] = client.push_manifest(manifest, mt.OCI_MANIFEST)
                    manifests.append(Descriptor.for_bytes(mt.OCI_MANIFEST, manifest).to_json())
                index = canonical_json(
                    {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
                )
                index_digest = client.push_manifest(index, mt.OCI_INDEX, tag=version)
                referrer = canonical_json(
                    {
                        "schemaVersion": 2,
                        "mediaType": mt.OCI_MANIFEST,
                        "artifactType": mt.SIGSTORE_BUNDLE_V03,
                        "config": Descriptor.for_bytes(mt.OCI_EMPTY, empty).to_json(),
                        "layers": [],
                        "subject": Descriptor.for_bytes(mt.OCI_INDEX, index).to_json(),
                    }
                )
                client.add_referrer(referrer, Descriptor.for_bytes(mt.OCI_INDEX, index))
            rows.append(
                {
                    "platform_id": p + 1,
                    "version": version,
                    "reference": f"{layout}:{version}",
                    "status": "published",
                    "manifest_digest": index_digest,
                    "artifacts": arts,
                    "critical": critical,
                    "created_at": now - timedelta(days=age),
                    "updated_at": now,
                }
            )
        with database.session() as s:
            s.execute(insert(DiskImagePublication), rows)
            # the default: a young one (never pruned anyway)
            s.execute(
                update(NodePlatform)
                .where(NodePlatform.id == p + 1)
                .values(default_publication_id=p * per_platform + per_platform)
            )
    return expected


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--publications", type=int, default=100_000)
    ap.add_argument("--platforms", type=int, default=20)
    ap.add_argument("--expired", type=int, default=500)
    ap.add_argument("--database-url", default="", help="default: a temporary SQLite file")
    args = ap.parse_args()

    from diskci.platform.db.session import Database
    from diskci.platform.services.blobcache import BlobCache
    from diskci.platform.services.retention import DiskImageRetentionService, delete_publication

    with tempfile.TemporaryDirectory(prefix="diskci-bench-retention-") as tmp:
        work = Path(tmp)
        database = Database(args.database_url or f"sqlite:///{work / 'platform.db'}")
        database.upgrade()
        blobs = BlobCache(work / "blobs")
        t0 = time.perf_counter()
        expected = seed(database, work / "layouts", blobs, args)
        seeded = time.perf_counter() - t0
        service = DiskImageRetentionService(
            database=database, blobs=blobs, deleter=delete_publication, blob_min_age_seconds=0
        )
        t0 = time.perf_counter()
        preview = service.preview()
        preview_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = service.sweep()
        sweep_s = time.perf_counter() - t0
        database.dispose()
    ok = sweep_s < GOAL_SECONDS and len(result.pruned) == expected and not result.failed
    print(
        f"retention bench: {args.publications} publications on {args.platforms} platforms "
        f"({database.backend}; seeded in {seeded:.1f} s, not timed)"
    )
    print(f"  preview: {len(preview.candidates)} candidates in {preview_s:.2f} s")
    print(
        f"  sweep:   {len(result.pruned)} pruned (expected {expected}), {len(result.failed)} failed, "
        f"{result.blobs_removed} blobs removed, in {sweep_s:.2f} s   goal < {GOAL_SECONDS:.0f} s   "
        f"{'PASS' if ok else 'MISS'}"
    )
    print(
        json.dumps(
            {
                "publications": args.publications,
                "preview_s": round(preview_s, 3),
                "sweep_s": round(sweep_s, 3),
                "pruned": len(result.pruned),
            }
        )
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DISKCI_STATE_DIR", tempfile.gettempdir())
    sys.exit(main())
