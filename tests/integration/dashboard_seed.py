"""A node platform with a published (and a failed) publication, for the dashboard tests; and, with
``seed_ci``, its CI runs (one in progress with a growing log), a busy CI worker with host statistics,
a node with a boot report and a few events.

The published publication's SBOM and build.json are real blobs in the platform's blob cache."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from diskci import mediatypes as mt
from diskci.platform.actions.catalog import invoke
from diskci.platform.actions.events import record_event
from diskci.platform.db.models import (
    CiJob,
    CiLogRow,
    CiRun,
    CiRunner,
    DiskImagePublication,
    NodeInstance,
    NodePlatform,
    Role,
)
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.settings import PlatformSettings

PLATFORM = "debian-12-amd64"
COMPOSEFS = "sha256:" + "c0" * 32
KERNEL_SHA = "ab" * 32
VERITY = "sha256:" + "fe" * 32
SBOM = {
    "spdxVersion": "SPDX-2.3",
    "SPDXID": "SPDXRef-DOCUMENT",
    "packages": [
        {"SPDXID": "SPDXRef-RootFS", "name": "debian-12-amd64-amd64-rootfs", "versionInfo": "1.2.0"},
        {
            "SPDXID": "SPDXRef-Package-deb-busybox-static-amd64",
            "name": "busybox-static",
            "versionInfo": "1:1.35.0-4+b3",
            "sourceInfo": "built from the source package busybox 1:1.35.0-4",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": "pkg:deb/debian/busybox-static@1%3A1.35.0-4%2Bb3?arch=amd64",
                }
            ],
        },
        {
            "SPDXID": "SPDXRef-Package-deb-base-files-amd64",
            "name": "base-files",
            "versionInfo": "12.4+deb12u8",
        },
    ],
    "relationships": [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-RootFS",
        }
    ],
}
BUILD_JSON = {
    "diskci_version": "0.9.0",
    "platform": PLATFORM,
    "version": "1.2.0",
    "spec_digest": "sha256:" + "5e" * 32,
    "spec": {},
    "source_date_epoch": 1764000000,
    "tools": {"mmdebstrap": "1.3.5"},
    "architectures": {
        "amd64": {"architecture": "amd64", "inputs": {"mirror": "http://deb.debian.org/debian"}}
    },
}
SOURCE = {"repo": "https://git.example/ops/images", "ref": "refs/tags/v1.2.0", "commit": "9f" * 20}


def _blob(blobs: BlobCache, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    blobs.put_bytes(digest, data)
    return digest


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
    blobs = BlobCache(settings.blob_dir)
    sbom = json.dumps(SBOM).encode()
    sbom_sha = _blob(blobs, sbom)
    config_sha = _blob(blobs, json.dumps(BUILD_JSON).encode())
    artifacts = {
        "amd64": {
            "manifest_digest": "sha256:" + "11" * 32,
            "config_sha256": config_sha,
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
                },
                {
                    "name": "sbom.spdx.json",
                    "media_type": mt.SBOM_SPDX,
                    "size": len(sbom),
                    "sha256": sbom_sha,
                    "digest": "sha256:" + sbom_sha,
                },
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
            source=SOURCE,
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


STAGE_ROWS = [
    "12:00:01 INFO rootfs (amd64) …",
    "12:00:01 INFO rootfs amd64: cache hit (key 0123456789abcdef)",
    "12:00:01 INFO rootfs (amd64) done (0.2s)",
    "12:00:02 INFO composefs (amd64) …",
]
RUNNING_JOB = "build amd64"


@dataclass(frozen=True)
class SeededCi:
    running_run: int  # in progress: job "build amd64" (its log grows with add_log_rows), then "publish"
    done_run: int  # completed with success, linked to the published publication
    worker_id: int  # a busy CI worker (running the in-progress job) with host statistics
    idle_worker_id: int  # an online worker with no job
    node_id: int  # a node whose last boot report names the published publication


def seed_ci(database: Database, published_id: int) -> SeededCi:
    """Runs, CI workers, a node and events beside ``seed``'s platform."""
    now = datetime.now(UTC)
    stats = {
        "disk": {"path": "/var/lib/diskci/work", "total": 100 * 2**30, "free": 37 * 2**30},
        "memory": {"total": 16 * 2**30, "available": 11 * 2**30},
        "load": [0.42, 0.9, 1.37],
    }
    with database.session() as s:
        platform = s.query(NodePlatform).filter_by(name=PLATFORM).one()
        workers = []
        for hostname, labels in (("ci-busy-1", ["amd64", "arm64"]), ("ci-idle-2", ["amd64"])):
            node = NodeInstance(
                hostname=hostname,
                mac_addresses=[],
                provider="local",
                provider_region="local",
                instance_type="local.small",
                modules=["gitea-runner"],
                build_targets=labels,
                status="running",
                created_at=now - timedelta(hours=1),
            )
            s.add(node)
            s.flush()
            runner = CiRunner(
                uuid=f"00000000-0000-4000-8000-{node.id:012d}",
                name=hostname,
                labels=labels,
                token_hash=hashlib.sha256(hostname.encode()).hexdigest(),
                instance_id=node.id,
                last_seen=now,
                stats=stats,
                stats_at=now,
            )
            s.add(runner)
            s.flush()
            workers.append((node, runner))
        done = CiRun(
            platform_id=platform.id,
            ref="refs/tags/v1.2.0",
            sha="9f" * 20,
            event="push",
            status="completed",
            conclusion="success",
            created_at=now - timedelta(hours=2),
            started_at=now - timedelta(hours=2),
            completed_at=now - timedelta(hours=2) + timedelta(minutes=7, seconds=12),
            publication_id=published_id,
        )
        running = CiRun(
            platform_id=platform.id,
            ref="refs/tags/v1.3.0",
            sha="a1" * 20,
            event="push",
            status="in_progress",
            created_at=now - timedelta(minutes=3),
            started_at=now - timedelta(minutes=3),
        )
        s.add_all([done, running])
        s.flush()
        s.add(
            CiJob(
                run_id=done.id,
                position=0,
                job_id="build",
                name="build amd64",
                labels=["amd64"],
                status="completed",
                conclusion="success",
                runner_id=workers[0][1].id,
                steps=[{"name": "Build", "status": "completed", "conclusion": "success"}],
                log_complete=True,
                started_at=done.started_at,
                completed_at=done.completed_at,
            )
        )
        job = CiJob(
            run_id=running.id,
            position=0,
            job_id="build",
            name=RUNNING_JOB,
            labels=["amd64"],
            status="in_progress",
            runner_id=workers[0][1].id,
            steps=[
                {"name": "Check out", "status": "completed", "conclusion": "success"},
                {"name": "Build", "status": "in_progress", "conclusion": None},
                {"name": "Sign and push", "status": "queued", "conclusion": None},
            ],
            started_at=running.started_at,
        )
        s.add(job)
        s.add(
            CiJob(
                run_id=running.id,
                position=1,
                job_id="publish",
                name="publish",
                labels=["amd64"],
                needs=["build"],
                status="waiting",
            )
        )
        s.flush()
        for i, row in enumerate(["::group::Build", *STAGE_ROWS]):
            s.add(CiLogRow(job_id=job.id, index=i, content=row))
        job.log_length = 1 + len(STAGE_ROWS)
        node = NodeInstance(
            hostname="node-7",
            platform_id=platform.id,
            mac_addresses=["52:54:00:12:34:56"],
            status="booted",
            last_report={
                "status": "booted",
                "publication": published_id,
                "verified_boot": False,
                "received_at": now.isoformat(),
                "source": "127.0.0.1",
            },
            last_seen=now,
        )
        s.add(node)
        s.flush()
        record_event(
            s, "ci_run_queued", platform=platform, subject=f"run {running.id}", payload={"run_id": running.id}
        )
        record_event(
            s,
            "netboot_report",
            platform=platform,
            subject="node-7",
            reason="booted",
            payload={"publication": published_id},
        )
        return SeededCi(
            running_run=running.id,
            done_run=done.id,
            worker_id=workers[0][0].id,
            idle_worker_id=workers[1][0].id,
            node_id=node.id,
        )


def add_log_rows(database: Database, run_id: int, rows: list[str], job_name: str = RUNNING_JOB) -> None:
    """Append ``rows`` to a job's log as a runner's UpdateLog would."""
    with database.session() as s:
        job = s.query(CiJob).filter_by(run_id=run_id, name=job_name).one()
        for i, row in enumerate(rows, start=job.log_length):
            s.add(CiLogRow(job_id=job.id, index=i, content=row))
        job.log_length += len(rows)


def finish_run(database: Database, run_id: int) -> None:
    """End the run with success and close its logs."""
    now = datetime.now(UTC)
    with database.session() as s:
        run = s.get(CiRun, run_id)
        assert run is not None
        for job in run.jobs:
            job.status, job.conclusion, job.log_complete, job.completed_at = "completed", "success", True, now
        run.status, run.conclusion, run.completed_at = "completed", "success", now
