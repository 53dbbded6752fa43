"""What changes between two publications: the processor stores each verified publication's composefs
listing, and ``system_diff_disk_image_publications`` diffs two of them (SQLite and PostgreSQL, a real
registry and real bundles); an image the reader refuses still publishes, with its reason on record."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from platform_publication_helpers import (
    deliver,
    make_netboot_build,
    make_platform,
    make_processor,
    repository_for,
    sign_and_push,
)
from sqlalchemy import select

from diskci.errors import InvalidRequest, NotFound
from diskci.formats import composefs_diff
from diskci.formats.fstree import Node
from diskci.platform.actions.catalog import invoke
from diskci.platform.db.models import DiskImageListing, Event, NodePlatform, Role
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.publication_processor import DiskImagePublicationProcessor
from diskci.platform.settings import PlatformSettings
from diskci.supplychain.authority import SigningAuthority

PLATFORM = "debian-12-amd64"


@pytest.fixture
def repository(registry: str, request: pytest.FixtureRequest) -> str:
    return repository_for(registry, request.node.name)


@pytest.fixture
def processor(platform_db: Database, tmp_path: Path) -> DiskImagePublicationProcessor:
    return make_processor(platform_db, BlobCache(tmp_path / "blobs"), tmp_path)


@pytest.fixture
def platform_id(platform_db: Database, repository: str, authority: SigningAuthority) -> int:
    return make_platform(platform_db, PLATFORM, repository, authority)


def root(*, extra_package: bool) -> Node:
    """A small root; ``extra_package`` adds a package's files and changes what its install touches."""
    tree = Node.directory()
    etc = tree.add(b"etc", Node.directory())
    etc.add(b"hostname", Node.file(b"node\n"))
    usr = tree.add(b"usr", Node.directory())
    bin_ = usr.add(b"bin", Node.directory())
    bin_.add(b"busybox", Node.file(bytes(range(256)) * 64, 0o755))
    status = b"Package: busybox\n" + (b"Package: htop\n" if extra_package else b"")
    tree.add(b"var", Node.directory()).add(b"status", Node.file(status))
    if extra_package:
        bin_.add(b"htop", Node.file(os.urandom(5000), 0o755))
        share = usr.add(b"share", Node.directory()).add(b"htop", Node.directory())
        share.add(b"README", Node.file(b"htop\n" * 40))
        bin_.add(b"top", Node.symlink(b"htop"))
    else:
        null = Node(mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3))
        tree.add(b"dev", Node.directory()).add(b"null", null)
    return tree


def publish(
    database: Database,
    processor: DiskImagePublicationProcessor,
    platform_id: int,
    authority: SigningAuthority,
    repository: str,
    tmp_path: Path,
    version: str,
    composefs_root: Node | bytes | None,
) -> int:
    build_dir = tmp_path / f"build-{version}"
    make_netboot_build(
        build_dir, platform=PLATFORM, version=version, root_size=20_000, composefs_root=composefs_root
    )
    pushed = sign_and_push(build_dir, authority, repository)
    outcome = processor.process(deliver(database, platform_id, pushed))
    assert outcome.status == "published", outcome
    return outcome.publication_id


def diff(database: Database, settings: PlatformSettings, **data: Any) -> Any:
    out = invoke(
        "system_diff_disk_image_publications",
        {"platform": PLATFORM, **data},
        database=database,
        settings=settings,
        actor="test",
        role=Role.VIEWER,
    )
    return out.model_dump(mode="json")


def test_the_diff_of_two_publications_names_exactly_what_changed(
    platform_db: Database,
    platform_settings: PlatformSettings,
    processor: DiskImagePublicationProcessor,
    platform_id: int,
    authority: SigningAuthority,
    repository: str,
    tmp_path: Path,
) -> None:
    args = (platform_db, processor, platform_id, authority, repository, tmp_path)
    old = publish(*args, "1.0.0", root(extra_package=False))
    new = publish(*args, "1.1.0", root(extra_package=True))
    with platform_db.read_session() as s:
        rows = {r.publication_id: r for r in s.scalars(select(DiskImageListing))}
        assert set(rows) == {old, new}
        assert rows[new].architecture == "amd64" and rows[new].data is not None and rows[new].error is None
        assert rows[new].entries == len(composefs_diff.decode(rows[new].data))
    with pytest.raises(InvalidRequest, match="no default publication"):
        diff(platform_db, platform_settings, to_publication=new)
    with platform_db.session() as s:
        platform = s.get(NodePlatform, platform_id)
        assert platform is not None
        platform.default_publication_id = old

    result = diff(platform_db, platform_settings, to_publication=new)  # from the default
    assert result["from_publication"] == {
        "id": old,
        "version": "1.0.0",
        "status": "published",
        "is_default": True,
    }
    [amd64] = result["architectures"]
    changes = {e["path"]: (e["change"], e["fields"]) for e in amd64["entries"]}
    assert changes == {
        "/dev": ("removed", []),
        "/dev/null": ("removed", []),
        "/usr/bin/htop": ("added", []),
        "/usr/bin/top": ("added", []),
        "/usr/share": ("added", []),
        "/usr/share/htop": ("added", []),
        "/usr/share/htop/README": ("added", []),
        "/var/status": ("changed", ["size", "content"]),
    }
    assert amd64["counts"] == {"added": 5, "removed": 2, "changed": 1, "unchanged": 7}
    assert amd64["truncated"] is False and amd64["next_offset"] is None
    htop = next(e for e in amd64["entries"] if e["path"] == "/usr/bin/htop")
    assert htop["new"]["content"].startswith("fsverity:") and htop["new"]["mode"] == "0755"

    page = diff(platform_db, platform_settings, from_publication=old, to_publication=new, limit=3, offset=2)
    [amd64] = page["architectures"]
    assert [e["path"] for e in amd64["entries"]] == ["/usr/bin/htop", "/usr/bin/top", "/usr/share"]
    assert amd64["truncated"] is True and amd64["next_offset"] == 5
    under = diff(platform_db, platform_settings, from_publication=old, to_publication=new, under="/usr/share")
    assert [e["path"] for e in under["architectures"][0]["entries"]] == [
        "/usr/share",
        "/usr/share/htop",
        "/usr/share/htop/README",
    ]
    back = diff(
        platform_db, platform_settings, from_publication=new, to_publication=old, architecture="amd64"
    )
    assert back["architectures"][0]["counts"] == {"added": 2, "removed": 5, "changed": 1, "unchanged": 7}
    same = diff(platform_db, platform_settings, from_publication=new, to_publication=new)
    assert same["architectures"][0]["entries"] == []
    with pytest.raises(NotFound, match="architecture 'arm64'"):
        diff(platform_db, platform_settings, from_publication=old, to_publication=new, architecture="arm64")
    with pytest.raises(NotFound, match="no disk image publication with id 999999"):
        diff(platform_db, platform_settings, from_publication=old, to_publication=999999)


def test_listing_gaps_are_named_and_do_not_fail_the_publication(
    platform_db: Database,
    platform_settings: PlatformSettings,
    processor: DiskImagePublicationProcessor,
    platform_id: int,
    authority: SigningAuthority,
    repository: str,
    tmp_path: Path,
) -> None:
    args = (platform_db, processor, platform_id, authority, repository, tmp_path)
    good = publish(*args, "1.0.0", root(extra_package=False))
    no_image = publish(*args, "1.0.1", None)
    broken = publish(*args, "1.0.2", b"\0" * 8192)  # signed and fs-verity-checked, yet no composefs image

    with platform_db.read_session() as s:
        row = s.scalar(select(DiskImageListing).where(DiskImageListing.publication_id == broken))
        assert row is not None and row.data is None
        assert row.error is not None and row.error.startswith("amd64/rootfs.cfs: no composefs magic")
        assert s.scalar(select(DiskImageListing).where(DiskImageListing.publication_id == no_image)) is None
        [event] = s.scalars(select(Event).where(Event.type == "disk_image_listing_failed"))
        assert event.reason == "composefs_unreadable"
        assert event.payload["publication_id"] == broken and event.payload["architecture"] == "amd64"
    with pytest.raises(NotFound, match=r"could not be listed: amd64/rootfs\.cfs: no composefs magic"):
        diff(platform_db, platform_settings, from_publication=good, to_publication=broken)
    with pytest.raises(NotFound, match="the build has no composefs image"):
        diff(platform_db, platform_settings, from_publication=good, to_publication=no_image)


def test_a_publication_of_another_platform_is_refused(
    platform_db: Database,
    platform_settings: PlatformSettings,
    processor: DiskImagePublicationProcessor,
    platform_id: int,
    authority: SigningAuthority,
    repository: str,
    tmp_path: Path,
) -> None:
    pub = publish(platform_db, processor, platform_id, authority, repository, tmp_path, "1.0.0", None)
    make_platform(platform_db, "other", repository + "-other", authority)
    with pytest.raises(InvalidRequest, match="belongs to platform 'debian-12-amd64', not 'other'"):
        invoke(
            "system_diff_disk_image_publications",
            {"platform": "other", "from_publication": pub, "to_publication": pub},
            database=platform_db,
            settings=platform_settings,
            actor="test",
            role=Role.VIEWER,
        )
