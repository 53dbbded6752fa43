"""A publication whose processing meets an unexpected exception never stays ``processing`` for good.

The queue retries an unexpected exception; after its last attempt (or at once for a diskci error, which
it does not retry) the row is ``failed`` with ``internal_error`` and a ``disk_image_publication_failed``
event, the Task is ``failed``, and a later delivery of the same manifest takes the row over again.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from platform_publication_helpers import make_platform
from sqlalchemy import select

from diskci.errors import PlatformError
from diskci.platform.db.models import DiskImagePublication, Event, Task, WebhookDelivery
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.publication_processor import INTERNAL_ERROR, DiskImagePublicationProcessor
from diskci.platform.settings import PlatformSettings
from diskci.platform.tasks import TaskQueue, _process_publication
from diskci.supplychain.authority import SigningAuthority

PLATFORM = "debian-12-amd64"
DIGEST = "sha256:" + "ab" * 32


class Boom(RuntimeError):
    pass


def _processor(database: Database, tmp_path: Path, exc: Exception | None = None) -> Any:
    def registry(_reference: Any) -> Any:
        raise exc or Boom("the registry client blew up")

    return DiskImagePublicationProcessor(
        database=database,
        blobs=BlobCache(tmp_path / "blobs"),
        authority_dir=tmp_path / "no-authority",
        registry=registry,
    )


def _deliver(database: Database, platform_id: int) -> str:
    delivery_id = secrets.token_hex(16)
    payload = {
        "node_platform": PLATFORM,
        "version": "1.0.0",
        "reference": "127.0.0.1:9/ops/disk-images:1.0.0",
        "manifest_digest": DIGEST,
    }
    with database.session() as s:
        s.add(WebhookDelivery(delivery_id=delivery_id, platform_id=platform_id, payload=payload))
    return delivery_id


def _row(database: Database) -> DiskImagePublication:
    with database.read_session() as s:
        [row] = s.scalars(select(DiskImagePublication)).all()
        s.expunge(row)
        return row


def _failed_events(database: Database) -> list[Event]:
    with database.read_session() as s:
        events = list(s.scalars(select(Event).where(Event.type == "disk_image_publication_failed")))
        for e in events:
            s.expunge(e)
        return events


@pytest.fixture
def platform_id(platform_db: Database, authority: SigningAuthority) -> int:
    return make_platform(platform_db, PLATFORM, "127.0.0.1:9/ops/disk-images", authority)


def test_unexpected_exception_is_retried_then_fails_with_internal_error(
    platform_db: Database, platform_id: int, tmp_path: Path
) -> None:
    processor = _processor(platform_db, tmp_path)
    delivery = _deliver(platform_db, platform_id)
    with pytest.raises(Boom):
        processor.process(delivery, final_attempt=False)
    assert _row(platform_db).status == "processing"  # the queue runs it again
    assert _failed_events(platform_db) == []

    with pytest.raises(Boom):
        processor.process(delivery, final_attempt=True)
    row = _row(platform_db)
    assert (row.status, row.failure_reason) == ("failed", INTERNAL_ERROR)
    assert "Boom: the registry client blew up" in (row.failure_detail or "")
    [event] = _failed_events(platform_db)
    assert event.reason == INTERNAL_ERROR and event.payload["publication_id"] == row.id

    again = _deliver(platform_db, platform_id)  # a redelivery of the same manifest takes the row over
    with pytest.raises(Boom):
        processor.process(again, final_attempt=False)
    row = _row(platform_db)
    assert (row.status, row.delivery_id) == ("processing", again)


def test_unexpected_diskci_error_fails_the_publication_at_once(
    platform_db: Database, platform_id: int, tmp_path: Path
) -> None:
    processor = _processor(platform_db, tmp_path, PlatformError("an unexpected platform error"))
    delivery = _deliver(platform_db, platform_id)
    with pytest.raises(PlatformError):
        processor.process(delivery, final_attempt=False)  # not retried by the queue: decided now
    row = _row(platform_db)
    assert (row.status, row.failure_reason) == ("failed", INTERNAL_ERROR)
    assert [e.reason for e in _failed_events(platform_db)] == [INTERNAL_ERROR]


def test_task_failed_for_good_leaves_its_publication_failed_not_processing(
    platform_db: Database,
    platform_settings: PlatformSettings,
    platform_id: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = TaskQueue(platform_settings, database=platform_db)
    monkeypatch.setattr(queue, "processor", lambda: _processor(platform_db, tmp_path))
    delivery = _deliver(platform_db, platform_id)
    with pytest.raises(Boom):
        _process_publication(queue, delivery, None)  # no huey task: the one and last attempt
    with platform_db.read_session() as s:
        [task] = s.scalars(select(Task)).all()
        assert task.status == "failed" and "blew up" in (task.error or "")
    row = _row(platform_db)
    assert (row.status, row.failure_reason) == ("failed", INTERNAL_ERROR)
