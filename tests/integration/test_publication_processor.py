"""DiskImagePublicationProcessor against a real registry (Debian's docker-registry), real sigstore bundles
from the embedded signing authority, on SQLite and PostgreSQL: every hop tampered with is caught with its
reason and nothing is served; duplicates and a worker killed mid-way give exactly one publication."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from platform_publication_helpers import (
    IDENTITY,
    ISSUER,
    Published,
    deliver,
    make_netboot_build,
    make_platform,
    make_processor,
    repository_for,
    sign_and_push,
)
from sqlalchemy import func, select

from diskci.errors import NotFound
from diskci.manifest import BuildManifest
from diskci.platform.db.models import DiskImagePublication, Event, WebhookDelivery
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.netboot import NetbootService
from diskci.platform.services.publication_processor import DiskImagePublicationProcessor, RetryLater
from diskci.registry.push import push_publication
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import sign_publication

PLATFORM = "debian-12-amd64"


@pytest.fixture
def repository(registry: str, request: pytest.FixtureRequest) -> str:
    """A repository of its own for each test (``authority`` and ``registry`` come from conftest)."""
    return repository_for(registry, request.node.name)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "blobs")


@pytest.fixture
def processor(platform_db: Database, blobs: BlobCache, tmp_path: Path) -> DiskImagePublicationProcessor:
    return make_processor(platform_db, blobs, tmp_path)


@pytest.fixture
def platform_id(platform_db: Database, repository: str, authority: SigningAuthority) -> int:
    return make_platform(platform_db, PLATFORM, repository, authority)


def _build(tmp_path: Path, version: str, **kw: Any) -> Path:
    make_netboot_build(tmp_path / f"build-{version}", platform=PLATFORM, version=version, **kw)
    return tmp_path / f"build-{version}"


def _events(database: Database, type_: str) -> list[Event]:
    with database.read_session() as s:
        rows = list(s.scalars(select(Event).where(Event.type == type_).order_by(Event.id)))
        s.expunge_all()  # keep the loaded values after the read session ends
        return rows


def _publications(database: Database) -> list[DiskImagePublication]:
    with database.read_session() as s:
        rows = list(s.scalars(select(DiskImagePublication).order_by(DiskImagePublication.id)))
        s.expunge_all()
        return rows


def _assert_not_served(database: Database, pub_id: int) -> None:
    with database.read_session() as s:
        for name in ("vmlinuz", "initramfs.img", "rootfs.img"):
            with pytest.raises(NotFound):
                NetbootService.servable_artifact(s, pub_id, "amd64", name)


def test_verified_publication_is_published_once_with_its_event(
    platform_db: Database,
    processor: DiskImagePublicationProcessor,
    blobs: BlobCache,
    platform_id: int,
    authority: SigningAuthority,
    repository: str,
    tmp_path: Path,
) -> None:
    pub = sign_and_push(_build(tmp_path, "1.0.0"), authority, repository)
    outcome = processor.process(deliver(platform_db, platform_id, pub, critical=True))

    assert outcome.status == "published" and not outcome.duplicate
    [row] = _publications(platform_db)
    assert row.id == outcome.publication_id
    assert (row.status, row.manifest_digest, row.version, row.critical) == (
        "published",
        pub.digest,
        "1.0.0",
        True,
    )
    assert row.signer_identity == IDENTITY and row.signer_issuer == ISSUER and row.signed_at is not None
    recorded = {a.name: a for a in pub.build.architectures["amd64"].artifacts}
    served = {a["name"]: a for a in row.artifacts["amd64"]["artifacts"]}
    assert set(served) == set(recorded)
    for name, art in recorded.items():
        assert served[name]["sha256"] == art.sha256 and served[name]["fsverity"] == art.fsverity
        assert blobs.path(art.sha256).read_bytes() == (pub.build_dir / art.path).read_bytes()
    assert row.artifacts["amd64"]["cmdline"] == "console=ttyS0 quiet"
    [event] = _events(platform_db, "disk_image_published")
    assert event.payload["publication_id"] == row.id and event.subject == f"{PLATFORM}:1.0.0"
    with platform_db.read_session() as s:
        art = NetbootService.servable_artifact(s, row.id, "amd64", "rootfs.img")
    assert art["sha256"] == recorded["rootfs.img"].sha256


def test_same_manifest_delivered_twice_gives_one_publication(
    platform_db: Database,
    processor: DiskImagePublicationProcessor,
    platform_id: int,
    authority: SigningAuthority,
    repository: str,
    tmp_path: Path,
) -> None:
    pub = sign_and_push(_build(tmp_path, "1.0.1"), authority, repository)
    first = processor.process(deliver(platform_db, platform_id, pub))
    second_delivery = deliver(platform_db, platform_id, pub)
    second = processor.process(second_delivery)
    assert second.duplicate and second.publication_id == first.publication_id
    # and two deliveries processed at the same moment by two workers
    racers = [deliver(platform_db, platform_id, pub) for _ in range(2)]
    outcomes: list[Any] = []
    threads = [threading.Thread(target=lambda d=d: outcomes.append(processor.process(d))) for d in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {o.publication_id for o in outcomes} == {first.publication_id}
    assert len(_publications(platform_db)) == 1
    assert len(_events(platform_db, "disk_image_published")) == 1
    with platform_db.read_session() as s:
        linked = s.scalar(
            select(WebhookDelivery.publication_id).where(WebhookDelivery.delivery_id == second_delivery)
        )
    assert linked == first.publication_id


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _tamper_bundle(build_dir: Path) -> None:
    bundle_path = build_dir / "signatures" / "publication.sigstore.json"
    bundle = json.loads(bundle_path.read_text())
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[12] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    bundle_path.write_text(json.dumps(bundle))


def _publish_tampered(
    hop: str, tmp_path: Path, authority: SigningAuthority, repository: str, registry_server: Any
) -> tuple[Published, str | None]:
    """Publish a build with ``hop`` tampered with; returns it and the digest to deliver (None: its own)."""
    version = f"2.0.0-{hop.replace('_', '-')}"
    if hop == "fsverity":  # signed and pushed faithfully, but build.json lies about the root image
        return sign_and_push(_build(tmp_path, version, lie_about_fsverity=True), authority, repository), None
    if hop == "identity":
        return sign_and_push(
            _build(tmp_path, version),
            authority,
            repository,
            identity="https://git.example.com/mallory/x@main",
        ), None
    if hop == "issuer":
        return sign_and_push(
            _build(tmp_path, version), authority, repository, issuer="https://evil.example"
        ), None
    if hop == "unsigned":
        build_dir = _build(tmp_path, version)
        ref = f"{repository}:{version}"
        return Published(
            build_dir, BuildManifest.load(build_dir), push_publication(build_dir, ref), ref
        ), None
    if hop == "bundle":
        build_dir = _build(tmp_path, version)
        sign_publication(build_dir, authority=authority, identity=IDENTITY, issuer=ISSUER)
        _tamper_bundle(build_dir)
        ref = f"{repository}:{version}"
        return Published(
            build_dir, BuildManifest.load(build_dir), push_publication(build_dir, ref), ref
        ), None
    pub = sign_and_push(_build(tmp_path, version), authority, repository)
    if hop == "registry_blob":  # the root image's bytes changed inside the registry's storage
        root = next(a for a in pub.build.architectures["amd64"].artifacts if a.name == "rootfs.img")
        _flip_byte(registry_server.blob_data(f"sha256:{root.sha256}"))
    elif hop == "manifest":  # the amd64 manifest edited in the registry's storage (still valid JSON)
        stored = registry_server.blob_data(pub.push.manifests[-1])
        manifest = json.loads(stored.read_bytes())
        manifest["layers"][0]["size"] += 1
        stored.write_bytes(json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode())
    elif hop == "retagged":  # the tag now points at another (also signed) index
        other = _build(tmp_path, version + "-other")
        moved = sign_and_push(other, authority, repository)
        push_publication(other, f"{repository}:{version}")
        assert moved.digest != pub.digest
    elif hop == "delivered_digest":
        return pub, "sha256:" + "1" * 64
    return pub, None


TAMPERED = [
    ("registry_blob", "digest_mismatch"),
    ("manifest", "manifest_invalid"),
    ("bundle", "signature_invalid"),
    ("identity", "identity_mismatch"),
    ("issuer", "issuer_mismatch"),
    ("fsverity", "fsverity_mismatch"),
    ("unsigned", "signature_missing"),
    ("retagged", "digest_mismatch"),
    ("delivered_digest", "digest_mismatch"),
]


@pytest.mark.parametrize(("hop", "reason"), TAMPERED, ids=[h for h, _ in TAMPERED])
def test_each_tampered_hop_fails_with_its_reason_and_nothing_is_served(
    hop: str,
    reason: str,
    platform_db: Database,
    processor: DiskImagePublicationProcessor,
    platform_id: int,
    authority: SigningAuthority,
    repository: str,
    registry_server: Any,
    tmp_path: Path,
) -> None:
    pub, digest = _publish_tampered(hop, tmp_path, authority, repository, registry_server)
    outcome = processor.process(deliver(platform_db, platform_id, pub, digest=digest))

    assert (outcome.status, outcome.reason) == ("failed", reason), outcome.detail
    [row] = _publications(platform_db)
    assert (row.status, row.failure_reason) == ("failed", reason)
    assert row.failure_detail
    [event] = _events(platform_db, "disk_image_publication_failed")
    assert event.reason == reason and event.payload["publication_id"] == row.id
    assert _events(platform_db, "disk_image_published") == []
    _assert_not_served(platform_db, row.id)


def test_unreachable_registry_is_retried_then_fails(
    platform_db: Database,
    processor: DiskImagePublicationProcessor,
    authority: SigningAuthority,
    repository: str,
    tmp_path: Path,
) -> None:
    pub = sign_and_push(_build(tmp_path, "3.0.0"), authority, repository)
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}/ops/disk-images/dead"
    platform_id = make_platform(platform_db, PLATFORM, dead, authority)
    moved = Published(pub.build_dir, pub.build, pub.push, f"{dead}:3.0.0")
    delivery = deliver(platform_db, platform_id, moved)
    with pytest.raises(RetryLater):
        processor.process(delivery, final_attempt=False)
    [row] = _publications(platform_db)
    assert row.status == "processing"
    outcome = processor.process(delivery, final_attempt=True)
    assert (outcome.status, outcome.reason) == ("failed", "registry_unreachable")
    assert [e.reason for e in _events(platform_db, "disk_image_publication_failed")] == [
        "registry_unreachable"
    ]


_KILLED_WORKER = """
import os, signal, sys
from pathlib import Path
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.publication_processor import DiskImagePublicationProcessor
from diskci.registry import open_registry

class DiesMidDownload:
    def __init__(self, inner):
        self.inner, self.fetched = inner, 0
    def __getattr__(self, name):
        return getattr(self.inner, name)
    def fetch_blob(self, desc, dest):
        self.inner.fetch_blob(desc, dest)
        self.fetched += 1
        if self.fetched == 2:
            os.kill(os.getpid(), signal.SIGKILL)

url, blobs, delivery = sys.argv[1:4]
DiskImagePublicationProcessor(
    database=Database(url), blobs=BlobCache(Path(blobs)), authority_dir=Path(blobs) / "none",
    registry=lambda ref: DiesMidDownload(open_registry(ref)),
).process(delivery)
"""


def test_worker_killed_mid_processing_then_retried_gives_one_correct_result(
    platform_db: Database,
    processor: DiskImagePublicationProcessor,
    blobs: BlobCache,
    platform_id: int,
    authority: SigningAuthority,
    repository: str,
    tmp_path: Path,
) -> None:
    pub = sign_and_push(_build(tmp_path, "4.0.0"), authority, repository)
    delivery = deliver(platform_db, platform_id, pub)
    worker = subprocess.run(
        [sys.executable, "-c", _KILLED_WORKER, platform_db.url, str(blobs.root), delivery],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    [row] = _publications(platform_db)
    assert row.status == "processing"  # the dead worker's claim, nothing more
    assert _events(platform_db, "disk_image_published") == []

    outcome = processor.process(delivery)  # the queue runs the delivery again
    assert outcome.status == "published" and outcome.publication_id == row.id
    [row] = _publications(platform_db)
    assert row.status == "published"
    assert len(_events(platform_db, "disk_image_published")) == 1
    for art in pub.build.architectures["amd64"].artifacts:
        assert blobs.path(art.sha256).read_bytes() == (pub.build_dir / art.path).read_bytes()
    with platform_db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(DiskImagePublication)) == 1
