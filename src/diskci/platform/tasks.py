"""The platform's task queue: a factory building the huey instance for a ``PlatformSettings``, with
the queued work registered on it (publication processing, daily retention).

``TaskQueue(settings)`` is the one way to get the queue: ``diskci platform serve`` consumes it in
threads, ``diskci platform consume`` in a queue consumer process, the HTTP app enqueues on it, and the
tests build their own. The queue comes from ``settings.queue_url``: ``sqlite:///PATH`` (the default, a
SqliteHuey file in the state directory, consumed by threads inside ``diskci platform serve``) or
``redis://HOST:PORT/DB`` (RedisHuey, consumed by ``diskci platform consume`` processes on any number of
machines). The queue name defaults to ``diskci``; ``?queue=NAME`` on the URL picks another (tests use a
unique one). For ``huey_consumer``, ``diskci.platform.tasks.huey`` is built from the ``DISKCI_*``
environment when it is first asked for (``huey_consumer diskci.platform.tasks.huey``); nothing is built
at import.

A queue consumer killed mid-task loses that task; the delivery is processed again when it is
re-enqueued (``TaskQueue.enqueue_publication`` with the same delivery id), and the processor makes
that safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, cached_property
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from huey import Huey, RedisHuey, SqliteHuey, crontab
from huey.api import Task as HueyTask
from huey.api import TaskWrapper
from huey.consumer import Consumer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from diskci.errors import DiskciError, UsageError
from diskci.platform.db.models import Task, TaskStatus
from diskci.platform.db.session import Database, get_database
from diskci.platform.settings import PlatformSettings

log = logging.getLogger(__name__)

DEFAULT_QUEUE_NAME = "diskci"
PUBLICATION_TASK_KIND = "disk_image_publication"
PUBLICATION_RETRIES = 3
PUBLICATION_RETRY_DELAY = 10


def make_huey(settings: PlatformSettings) -> Huey:
    """The huey instance for ``settings.queue_url`` (SQLite file or Redis)."""
    parts = urlsplit(settings.queue_url)
    query = parse_qs(parts.query)
    name = query.get("queue", [DEFAULT_QUEUE_NAME])[0]
    if parts.scheme in ("redis", "rediss"):
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return RedisHuey(name, url=url, utc=True)
    if parts.scheme == "sqlite":
        path = parts.path if parts.netloc == "" else f"/{parts.netloc}{parts.path}"
        path = path[1:] if path.startswith("//") else path
        if not path or path == "/":
            raise UsageError(f"DISKCI_QUEUE_URL {settings.queue_url!r}: give a file, sqlite:////abs/queue.db")
        from pathlib import Path

        from diskci.platform.statefiles import private_sqlite_file

        private_sqlite_file(Path(path))  # 0600 in a 0700 directory, like the database
        return SqliteHuey(name, filename=path, utc=True)
    raise UsageError(
        f"DISKCI_QUEUE_URL {settings.queue_url!r}: unsupported queue (use sqlite:///PATH or redis://HOST:PORT/DB)"
    )


@dataclass(frozen=True)
class _Registered:
    huey: Huey
    process_publication: TaskWrapper
    retention_daily: TaskWrapper
    retention_now: TaskWrapper


class TaskQueue:
    """The platform's queue for one ``PlatformSettings``: the huey instance with the tasks registered.

    Nothing is built until first used (``huey``, a task, ``enqueue_publication``), so an adapter can
    hold one without creating the queue file. Tasks use ``database``, or else the process-wide one
    (which every entry point configures from the same settings at start).
    """

    def __init__(self, settings: PlatformSettings, *, database: Database | None = None) -> None:
        self.settings = settings
        self._database = database

    @cached_property
    def _registered(self) -> _Registered:
        return _register(self, make_huey(self.settings))

    @property
    def huey(self) -> Huey:
        return self._registered.huey

    @property
    def process_publication(self) -> TaskWrapper:
        """``process_publication(delivery_id)``: verify and record the publication a delivery announced."""
        return self._registered.process_publication

    @property
    def retention_daily(self) -> TaskWrapper:
        """The daily retention sweep at ``retention_hour:retention_minute`` UTC."""
        return self._registered.retention_daily

    @property
    def retention_now(self) -> TaskWrapper:
        """A retention sweep on demand (tests, operators)."""
        return self._registered.retention_now

    def database(self) -> Database:
        return self._database if self._database is not None else get_database()

    def enqueue_publication(self, delivery_id: str) -> str:
        """Queue the processing of a delivery; returns the task_id (the Task row appears when it runs)."""
        queued = self.process_publication.s(delivery_id)
        self.huey.enqueue(queued)
        return str(queued.id)

    def consumer(self, *, workers: int, worker_type: str = "thread") -> Consumer:
        """A queue consumer of this queue (periodic tasks included): ``.start()`` in-process, ``.run()``."""
        return self.huey.create_consumer(workers=workers, worker_type=worker_type, periodic=True)

    def processor(self) -> Any:
        from diskci.platform.services.blobcache import BlobCache
        from diskci.platform.services.publication_processor import (
            AUTHORITY_DIR,
            DiskImagePublicationProcessor,
        )

        return DiskImagePublicationProcessor(
            database=self.database(),
            blobs=BlobCache(self.settings.blob_dir),
            authority_dir=self.settings.state_dir / AUTHORITY_DIR,
        )

    def retention_service(self) -> Any:
        from diskci.platform.services.blobcache import BlobCache
        from diskci.platform.services.retention import DiskImageRetentionService, delete_publication

        return DiskImageRetentionService(
            database=self.database(), blobs=BlobCache(self.settings.blob_dir), deleter=delete_publication
        )

    def run_retention(self) -> dict[str, Any]:
        from diskci.platform.services.retention import RetentionLocked

        try:
            result = self.retention_service().sweep()
        except RetentionLocked as exc:
            log.info("retention: %s; skipped", exc)
            return {"skipped": str(exc)}
        summary: dict[str, Any] = result.as_dict()
        log.info("retention: pruned %d, failed %d", len(result.pruned), len(result.failed))
        return summary


def _record_task(database: Database, task_id: str, kind: str, payload: dict[str, Any], **values: Any) -> None:
    """Upsert the Task row that lets operators follow a queued job by its task_id.

    The webhook receiver inserts the same row when it queues the delivery; whoever comes second updates.
    """
    for _ in range(2):
        try:
            with database.session() as s:
                row = s.scalar(select(Task).where(Task.task_id == task_id))
                if row is None:
                    row = Task(task_id=task_id, kind=kind, payload=payload)
                    s.add(row)
                for key, value in values.items():
                    setattr(row, key, value)
            return
        except IntegrityError:
            continue  # inserted by the receiver meanwhile: update it


def _register(queue: TaskQueue, huey: Huey) -> _Registered:
    """Register the platform's tasks on ``huey`` (task names stay ``diskci.platform.tasks.<name>``)."""
    settings = queue.settings

    def process_publication(delivery_id: str, task: HueyTask | None = None) -> dict[str, Any]:
        """Verify and record the publication a ``disk_image_built`` delivery announced."""
        return _process_publication(queue, delivery_id, task)

    def retention_daily() -> dict[str, Any]:
        """The daily retention sweep (skipped, not failed, when another consumer is sweeping)."""
        return queue.run_retention()

    def retention_now() -> dict[str, Any]:
        """A sweep on demand (tests, operators)."""
        return queue.run_retention()

    schedule = crontab(minute=str(settings.retention_minute), hour=str(settings.retention_hour))
    return _Registered(
        huey=huey,
        process_publication=huey.task(
            retries=PUBLICATION_RETRIES, retry_delay=PUBLICATION_RETRY_DELAY, context=True
        )(process_publication),
        retention_daily=huey.periodic_task(schedule)(retention_daily),
        retention_now=huey.task()(retention_now),
    )


def _process_publication(queue: TaskQueue, delivery_id: str, task: HueyTask | None) -> dict[str, Any]:
    """Verify and record the publication a ``disk_image_built`` delivery announced."""
    from diskci.platform.services.publication_processor import RetryLater

    task_id = task.id if task is not None else f"local-{delivery_id}"
    final = task is None or task.retries == 0
    database = queue.database()
    _record_task(
        database,
        task_id,
        PUBLICATION_TASK_KIND,
        {"delivery_id": delivery_id},
        status=TaskStatus.RUNNING.value,
        started_at=datetime.now(UTC),
        attempts=PUBLICATION_RETRIES - task.retries + 1 if task is not None else 1,
    )
    try:
        outcome = queue.processor().process(delivery_id, final_attempt=final)
    except RetryLater as exc:
        _record_task(
            database, task_id, PUBLICATION_TASK_KIND, {}, status=TaskStatus.QUEUED.value, error=str(exc)
        )
        raise
    except DiskciError as exc:  # permanent (an unknown delivery, a bad payload): no point in retrying
        log.error("delivery %s: %s", delivery_id, exc.diagnostics())
        _record_task(
            database,
            task_id,
            PUBLICATION_TASK_KIND,
            {},
            status=TaskStatus.FAILED.value,
            error=exc.diagnostics()[:4000],
            finished_at=datetime.now(UTC),
        )
        return {"error": type(exc).__name__, "detail": exc.diagnostics()}
    except Exception as exc:  # unexpected (a database outage ...): recorded, then retried by the queue
        _record_task(
            database,
            task_id,
            PUBLICATION_TASK_KIND,
            {},
            status=TaskStatus.FAILED.value,
            error=str(exc)[:4000],
            finished_at=datetime.now(UTC),
        )
        raise
    result = outcome.as_dict()
    log.info("delivery %s: publication %s %s", delivery_id, outcome.publication_id, outcome.status)
    _record_task(
        database,
        task_id,
        PUBLICATION_TASK_KIND,
        {},
        status=TaskStatus.SUCCEEDED.value,
        result=result,
        finished_at=datetime.now(UTC),
    )
    return result


@cache
def _environment_queue() -> TaskQueue:
    return TaskQueue(PlatformSettings())


def __getattr__(name: str) -> Any:
    """``huey``: the queue of the ``DISKCI_*`` environment, built when first asked for (``huey_consumer``)."""
    if name == "huey":
        return _environment_queue().huey
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
