"""DiskImageRetentionService on SQLite and PostgreSQL with publications verified by the real processor from
a real registry: the rules, a preview that deletes nothing, pruning of registry objects and blob-cache
entries, a registry failure left for the next run, and the lock that keeps two sweeps apart."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from platform_publication_helpers import deliver, make_netboot_build, make_platform, sign_and_push
from sqlalchemy import select, text, update

from diskci.errors import RegistryError
from diskci.platform.db.models import DiskImagePublication, Event, NodePlatform, Task
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.publication_processor import DiskImagePublicationProcessor
from diskci.platform.services.retention import (
    _PG_LOCK_KEY,
    LOCK_NAME,
    STALE_LOCK_AFTER,
    DiskImageRetentionService,
    RetentionLocked,
    delete_publication,
)
from diskci.registry import open_registry
from diskci.supplychain.authority import SigningAuthority

NOW = datetime.now(UTC)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "blobs")


@pytest.fixture
def service(platform_db: Database, blobs: BlobCache) -> DiskImageRetentionService:
    return DiskImageRetentionService(
        database=platform_db, blobs=blobs, deleter=delete_publication, blob_min_age_seconds=0
    )


@pytest.fixture
def publish(
    platform_db: Database,
    blobs: BlobCache,
    authority: SigningAuthority,
    registry: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Any:
    """``publish(platform, version, age_days, critical=False) -> publication id`` through the processor."""
    processor = DiskImagePublicationProcessor(
        database=platform_db, blobs=blobs, authority_dir=tmp_path / "none"
    )
    platforms: dict[str, int] = {}
    test = request.node.name.lower().replace("[", "-").replace("]", "").replace("_", "-")

    def run(platform: str, version: str, age_days: float, *, critical: bool = False) -> int:
        repository = f"{registry}/ops/{test}/{platform}"
        if platform not in platforms:
            platforms[platform] = make_platform(platform_db, platform, repository, authority)
        build_dir = tmp_path / f"{platform}-{version}"
        make_netboot_build(build_dir, platform=platform, version=version, root_size=20_000)
        pub = sign_and_push(build_dir, authority, repository)
        outcome = processor.process(deliver(platform_db, platforms[platform], pub, critical=critical))
        assert outcome.status == "published", outcome.detail
        with platform_db.session() as s:
            s.execute(
                update(DiskImagePublication)
                .where(DiskImagePublication.id == outcome.publication_id)
                .values(created_at=NOW - timedelta(days=age_days))
            )
        return outcome.publication_id

    return run


def _row(database: Database, pub_id: int) -> DiskImagePublication:
    with database.read_session() as s:
        row = s.get(DiskImagePublication, pub_id)
        assert row is not None
        s.expunge(row)
        return row


def _in_registry(database: Database, pub_id: int) -> bool:
    row = _row(database, pub_id)
    client = open_registry(row.reference)
    try:
        client.resolve(row.manifest_digest)
    except RegistryError:
        return False
    return True


def _set_default(database: Database, platform: str, pub_id: int) -> None:
    with database.session() as s:
        s.execute(
            update(NodePlatform).where(NodePlatform.name == platform).values(default_publication_id=pub_id)
        )


def test_rules_preview_and_sweep(
    platform_db: Database, service: DiskImageRetentionService, blobs: BlobCache, publish: Any
) -> None:
    old_routine = publish("p-a", "1", 400)
    old_critical = publish("p-a", "2", 400, critical=True)
    young_critical = publish("p-a", "3", 200, critical=True)
    old_default = publish("p-a", "4", 100)
    expired = publish("p-a", "5", 95)
    young = publish("p-a", "6", 10)
    newest = publish("p-a", "7", 1)
    _set_default(platform_db, "p-a", old_default)
    only_one = publish("p-b", "1", 1000)  # a platform's newest published is never pruned, however old
    expected = {old_routine, old_critical, expired}

    preview = service.preview()
    assert {c.id for c in preview.candidates} == expected
    rules = {c.id: c.rule for c in preview.candidates}
    assert rules[old_critical] == "critical, older than 365 days"
    assert rules[old_routine] == "routine, older than 90 days"
    assert preview.pruned == [] and preview.blobs_removed > 0
    for pub_id in expected:  # the preview deleted nothing: rows, registry objects, blobs
        row = _row(platform_db, pub_id)
        assert row.status == "published" and _in_registry(platform_db, pub_id)
        for art in row.artifacts["amd64"]["artifacts"]:
            assert blobs.has(art["sha256"])
    assert service.preview(platform="p-b").candidates == []

    result = service.sweep()
    assert sorted(result.pruned) == sorted(expected) and result.failed == {}
    for pub_id in expected:
        row = _row(platform_db, pub_id)
        assert row.status == "pruned" and row.pruned_at is not None
        assert not _in_registry(platform_db, pub_id)
        client = open_registry(row.reference)
        assert client.referrers(row.manifest_digest) == []
        for digest in [e["manifest_digest"] for e in row.artifacts.values()]:
            with pytest.raises(RegistryError):
                client.resolve(digest)
        for art in row.artifacts["amd64"]["artifacts"]:
            assert not blobs.has(art["sha256"])
    for pub_id in (young_critical, old_default, young, newest, only_one):
        row = _row(platform_db, pub_id)
        assert row.status == "published" and _in_registry(platform_db, pub_id)
        for art in row.artifacts["amd64"]["artifacts"]:
            assert blobs.has(art["sha256"])
    with platform_db.read_session() as s:
        events = list(s.scalars(select(Event).where(Event.type == "disk_image_publication_pruned")))
        assert sorted(e.payload["id"] for e in events) == sorted(expected)
    again = service.sweep()
    assert again.candidates == [] and again.pruned == []


def test_registry_failure_leaves_the_row_for_the_next_run(
    platform_db: Database, service: DiskImageRetentionService, publish: Any
) -> None:
    old = publish("p-c", "1", 400)
    publish("p-c", "2", 1)
    live_reference = _row(platform_db, old).reference
    with socket.socket() as sock:  # the registry is down: a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{sock.getsockname()[1]}/ops/disk-images/p-c:1"
    with platform_db.session() as s:
        s.execute(update(DiskImagePublication).where(DiskImagePublication.id == old).values(reference=down))
    result = service.sweep()
    assert result.pruned == [] and list(result.failed) == [old]
    assert _row(platform_db, old).status == "published"
    with platform_db.read_session() as s:
        [event] = s.scalars(select(Event).where(Event.type == "disk_image_publication_prune_failed"))
        assert event.reason == "registry_error" and event.payload["publication_id"] == old
    with platform_db.session() as s:  # the registry is back
        s.execute(
            update(DiskImagePublication)
            .where(DiskImagePublication.id == old)
            .values(reference=live_reference)
        )
    assert service.sweep().pruned == [old]
    assert _row(platform_db, old).status == "pruned" and not _in_registry(platform_db, old)


def test_two_sweeps_never_prune_at_once(
    platform_db: Database, service: DiskImageRetentionService, blobs: BlobCache, publish: Any
) -> None:
    old = publish("p-d", "1", 400)
    publish("p-d", "2", 1)
    other = DiskImageRetentionService(
        database=platform_db, blobs=blobs, deleter=delete_publication, blob_min_age_seconds=0
    )
    with service.lock():
        with pytest.raises(RetentionLocked):
            other.sweep()
        assert other.preview().candidates[0].id == old  # a preview needs no lock
        assert _row(platform_db, old).status == "published"
    # racing: two threads sweep at the same moment; the publication is pruned exactly once
    outcomes: list[Any] = []

    def sweep(s: DiskImageRetentionService) -> None:
        try:
            outcomes.append(s.sweep().pruned)
        except RetentionLocked as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=sweep, args=(s,)) for s in (service, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(str(o) for o in outcomes if isinstance(o, list) and o) == [str([old])]
    with platform_db.read_session() as s:
        assert len(list(s.scalars(select(Event).where(Event.type == "disk_image_publication_pruned")))) == 1
        assert s.scalar(select(Task).where(Task.task_id == LOCK_NAME)) is None  # released


def test_lock_of_a_dead_worker_is_taken_over(
    platform_db: Database, service: DiskImageRetentionService
) -> None:
    if platform_db.backend == "postgresql":
        # a worker holding the advisory lock dies: the server releases it with the connection
        conn = platform_db.engine.connect()
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        with pytest.raises(RetentionLocked):
            service.sweep()
        conn.invalidate()  # the connection is closed, not returned to the pool
        conn.close()
        assert service.sweep().failed == {}
        return
    # SQLite: a lock row left by a dead worker is taken over once it is older than STALE_LOCK_AFTER
    with platform_db.session() as s:
        s.add(
            Task(
                task_id=LOCK_NAME,
                kind="disk_image_retention",
                status="running",
                payload={"holder": "dead:1"},
                started_at=NOW - timedelta(hours=1),
            )
        )
    with pytest.raises(RetentionLocked):
        service.sweep()
    with platform_db.session() as s:
        s.execute(update(Task).where(Task.task_id == LOCK_NAME).values(started_at=NOW - STALE_LOCK_AFTER * 2))
    assert service.sweep().failed == {}
