"""A rebuild of the same ref whose artifacts are identical (the webhook names an index digest already
published) is recognised by the platform: one publication, an event ``disk_image_rebuild_identical``
saying so, and nothing is downloaded again (the registry is not even opened). Real registry, real
sigstore bundles from the embedded authority (fixtures from conftest)."""

from __future__ import annotations

from pathlib import Path

from platform_publication_helpers import deliver, make_netboot_build, make_platform, sign_and_push
from sqlalchemy import select

from diskci.platform.db.models import DiskImagePublication, Event
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.publication_processor import DiskImagePublicationProcessor
from diskci.registry import RegistryClient, open_registry
from diskci.registry.reference import Reference
from diskci.supplychain.authority import SigningAuthority

PLATFORM = "debian-12-amd64"


def test_a_rebuild_with_the_same_index_digest_downloads_nothing_and_says_so(
    platform_db: Database, registry: str, authority: SigningAuthority, tmp_path: Path
) -> None:
    repository = f"{registry}/ops/rebuild-dedupe"
    platform_id = make_platform(platform_db, PLATFORM, repository, authority)
    build_dir = tmp_path / "build"
    make_netboot_build(build_dir, platform=PLATFORM, version="1.0.0")
    pub = sign_and_push(build_dir, authority, repository)
    opened: list[str] = []

    def counting_registry(ref: Reference) -> RegistryClient:
        opened.append(str(ref))
        return open_registry(ref)

    blobs = BlobCache(tmp_path / "blobs")
    processor = DiskImagePublicationProcessor(
        database=platform_db, blobs=blobs, authority_dir=tmp_path / "no-authority", registry=counting_registry
    )
    first = processor.process(deliver(platform_db, platform_id, pub))
    assert first.status == "published" and opened  # the first delivery reads the registry
    cached = sorted(p.name for p in blobs.root.rglob("*") if p.is_file())

    opened.clear()
    rebuild_delivery = deliver(platform_db, platform_id, pub)  # the rebuild's webhook: same digest
    again = processor.process(rebuild_delivery)

    assert again.duplicate and again.publication_id == first.publication_id
    assert opened == []  # nothing fetched: the registry was not opened
    assert sorted(p.name for p in blobs.root.rglob("*") if p.is_file()) == cached
    with platform_db.read_session() as s:
        assert len(s.scalars(select(DiskImagePublication)).all()) == 1
        [event] = s.scalars(select(Event).where(Event.type == "disk_image_rebuild_identical")).all()
        assert event.reason == "same_manifest_digest" and event.subject == f"{PLATFORM}:1.0.0"
        assert event.payload["publication_id"] == first.publication_id
        assert event.payload["delivery_id"] == rebuild_delivery
        assert event.payload["manifest_digest"] == pub.digest
        assert "nothing downloaded again" in event.payload["detail"]
