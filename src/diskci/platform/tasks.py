"""The platform's task queue: a factory building the huey instance for a ``PlatformSettings``, with
the queued work registered on it (publication processing, daily retention, CI job lease expiry every
30 s: ``expire_ci_jobs``, whose lost jobs each get a ``ci_job_worker_lost`` event; the polling of
Gitea-backed CI runs, ``ci.gitea_polling``: a chain of rounds, started every minute when none is alive).

``TaskQueue(settings)`` is the one way to get the queue: ``diskci platform serve`` consumes it in
threads, ``diskci platform consume`` in a queue consumer process, the HTTP app enqueues on it, and the
tests build their own. The queue comes from ``settings.queue_url``: ``sqlite:///PATH`` (the default, a
SqliteHuey file in the state directory, consumed by threads inside ``diskci platform serve``) or
``redis://HOST:PORT/DB`` (RedisHuey, consumed by ``diskci platform consume`` processes on any number of
machines). The queue name defaults to ``diskci``; ``?queue=NAME`` on the URL picks another (tests use a
unique one). For ``huey_consumer``, ``diskci.platform.tasks.huey`` is built from the ``DISKCI_*``
environment when it is first asked for (``huey_consumer diskci.platform.tasks.huey``); nothing is built
at import.

Crash recovery: a queue may drop a message whose consumer dies mid-task (SQLite huey deletes it when
it is dequeued), so the Task row, not the message, is the record of the work. A running task holds a
lease (``Task.lease_expires_at``, ``settings.task_lease_seconds``) that a heartbeat thread renews;
``recover_deliveries`` re-queues every delivery whose Task is ``running`` with an expired lease, or
``queued`` with no message in the queue, or that never got a Task. It runs every minute
(``recover_abandoned``) and when ``diskci platform serve``/``consume`` start (``TaskQueue.recover``,
which also removes the blob cache's temporary files of dead processes). The processor takes over the
publication row it finds ``processing``, so a recovered delivery ends in exactly one publication.
CI worker tasks (``ci_worker_task``: provision or terminate, ``services.worker_lifecycle``) are Task
rows written by their action and queued under the same id once it commits; ``recover`` re-queues them
by the same lease rules (``recover_ci_worker_tasks``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, cached_property
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from huey import Huey, RedisHuey, SqliteHuey, crontab
from huey.api import Task as HueyTask
from huey.api import TaskWrapper
from huey.consumer import Consumer
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from diskci.errors import DiskciError, UsageError
from diskci.platform.db.models import Task, TaskStatus, WebhookDelivery
from diskci.platform.db.session import Database, get_database
from diskci.platform.secrets import SecretBox
from diskci.platform.settings import PlatformSettings

log = logging.getLogger(__name__)

DEFAULT_QUEUE_NAME = "diskci"
PUBLICATION_TASK_KIND = "disk_image_publication"
PUBLICATION_RETRIES = 3
PUBLICATION_RETRY_DELAY = 10
CI_WORKER_RETRIES = 4  # a provisioning or termination attempt that failed is tried again this often
CI_WORKER_RETRY_DELAY = 5
CI_LEASE_CHECK_SECONDS = 30  # how often CI job leases are checked (a periodic task, plus one scheduled)


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
    recover_abandoned: TaskWrapper
    ci_worker_task: TaskWrapper
    expire_ci_leases: TaskWrapper
    expire_ci_leases_periodic: TaskWrapper


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

    @property
    def recover_abandoned(self) -> TaskWrapper:
        """Every minute: re-queue the deliveries whose processing was abandoned (``recover``)."""
        return self._registered.recover_abandoned

    @property
    def expire_ci_leases(self) -> TaskWrapper:
        """Fail the CI jobs whose worker stopped calling (``worker_lost``); the periodic task runs it every
        minute and schedules it once more 30 s later, so a lost worker is noticed within ~30 s."""
        return self._registered.expire_ci_leases

    @property
    def ci_worker_task(self) -> TaskWrapper:
        """``ci_worker_task(task_id)``: provision or terminate a CI worker, as its Task row says."""
        return self._registered.ci_worker_task

    def enqueue_ci_worker_task(self, task_id: str) -> str:
        """Queue the CI worker Task row ``task_id`` (the queue message gets the same id); returns it."""
        self.huey.enqueue(self.ci_worker_task.s(task_id, id=task_id))
        return task_id

    def database(self) -> Database:
        return self._database if self._database is not None else get_database()

    def waiting_task_ids(self) -> set[str]:
        """The ids of the messages in the queue now (pending and scheduled for a retry)."""
        return {str(t.id) for t in self.huey.pending()} | {str(t.id) for t in self.huey.scheduled()}

    def recover(self, *, at_start: bool = False) -> list[str]:
        """Re-queue abandoned deliveries (``recover_deliveries``); at start, also remove temporary files
        that dead processes left in the blob cache. Returns the re-queued delivery ids."""
        if at_start:
            from diskci.platform.services.blobcache import BlobCache

            removed = BlobCache(self.settings.blob_dir).remove_orphaned_temporaries()
            if removed:
                log.info("recovery: removed %d temporary file(s) of dead processes", len(removed))
        requeued = recover_deliveries(
            self.database(),
            self.enqueue_publication,
            lease_seconds=self.settings.task_lease_seconds,
            waiting=self.waiting_task_ids(),
        )
        if requeued:
            log.warning("recovery: re-queued %d abandoned deliveries: %s", len(requeued), requeued)
        workers = recover_ci_worker_tasks(
            self.database(),
            self.enqueue_ci_worker_task,
            lease_seconds=self.settings.task_lease_seconds,
            waiting=self.waiting_task_ids(),
        )
        if workers:
            log.warning("recovery: re-queued %d abandoned CI worker task(s): %s", len(workers), workers)
        return requeued

    def enqueue_publication(self, delivery_id: str) -> str:
        """Queue the processing of a delivery; returns the task_id (the Task row appears when it runs)."""
        queued = self.process_publication.s(delivery_id)
        self.huey.enqueue(queued)
        return str(queued.id)

    def consumer(self, *, workers: int, worker_type: str = "thread") -> Consumer:
        """A queue consumer of this queue (periodic tasks included): ``.start()`` in-process, ``.run()``."""
        # max_delay: an idle worker looks again within 1 s (huey's default backs off to 10 s), so a
        # delivery that arrives after a quiet spell waits at most a second
        return self.huey.create_consumer(
            workers=workers, worker_type=worker_type, periodic=True, max_delay=1.0
        )

    def processor(self) -> Any:
        from diskci.platform.secureboot.signing import sign_after_publish
        from diskci.platform.services.blobcache import BlobCache
        from diskci.platform.services.publication_processor import (
            AUTHORITY_DIR,
            DiskImagePublicationProcessor,
        )

        database, blobs = self.database(), BlobCache(self.settings.blob_dir)
        return DiskImagePublicationProcessor(
            database=database,
            blobs=blobs,
            authority_dir=self.settings.state_dir / AUTHORITY_DIR,
            after_published=sign_after_publish(self.settings, database, blobs),
        )

    def retention_service(self) -> Any:
        from diskci.platform.services.blobcache import BlobCache
        from diskci.platform.services.retention import DiskImageRetentionService, delete_publication

        return DiskImageRetentionService(
            database=self.database(),
            blobs=BlobCache(self.settings.blob_dir),
            deleter=delete_publication,
            event_retention_days=self.settings.event_retention_days,
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


def lease_until(lease_seconds: int, now: datetime | None = None) -> datetime:
    """When a lease taken (or renewed) now runs out."""
    return (now or datetime.now(UTC)) + timedelta(seconds=lease_seconds)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC time (SQLite may hand back naive ones)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def abandoned(task: Task, now: datetime, *, lease_seconds: int, waiting: set[str] | None) -> bool:
    """Whether nobody will finish ``task``: ``running`` with its lease run out, or ``queued`` past its
    lease with no message in the queue (``waiting``: the queue's ids; None when unknown)."""
    if task.status == TaskStatus.RUNNING.value:
        return task.lease_expires_at is None or as_utc(task.lease_expires_at) < now
    if task.status == TaskStatus.QUEUED.value and waiting is not None and task.task_id not in waiting:
        deadline = task.lease_expires_at or lease_until(lease_seconds, as_utc(task.created_at))
        return as_utc(deadline) < now
    return False


def requeue_delivery(
    database: Database,
    enqueue: Callable[[str], str],
    delivery_id: str,
    *,
    lease_seconds: int,
    abandoned_task: Task | None,
    now: datetime | None = None,
) -> str | None:
    """Queue ``delivery_id`` again in place of ``abandoned_task`` (compare-and-set on its status and
    lease, so only one recoverer wins); returns the new task id, or None when another won."""
    now = now or datetime.now(UTC)
    with database.session() as s:
        if abandoned_task is not None:
            won = (
                s.query(Task)
                .filter(
                    Task.id == abandoned_task.id,
                    Task.status == abandoned_task.status,
                    or_(Task.lease_expires_at.is_(None), Task.lease_expires_at < now),
                )
                .update(
                    {
                        Task.status: TaskStatus.FAILED.value,
                        Task.error: "abandoned (its worker died or its queue message was lost); re-queued",
                        Task.finished_at: now,
                        Task.lease_expires_at: None,
                    },
                    synchronize_session=False,
                )
            )
        else:
            won = (
                s.query(WebhookDelivery)
                .filter(WebhookDelivery.delivery_id == delivery_id, WebhookDelivery.task_id.is_(None))
                .update({WebhookDelivery.task_id: "recovering"}, synchronize_session=False)
            )
    if not won:
        return None
    try:
        task_id = enqueue(delivery_id)
    except Exception:  # the queue is down: leave the work abandoned, for the next recovery
        with database.session() as s:
            if abandoned_task is not None:
                s.query(Task).filter(Task.id == abandoned_task.id).update(
                    {Task.status: abandoned_task.status, Task.finished_at: None}, synchronize_session=False
                )
            else:
                s.query(WebhookDelivery).filter(WebhookDelivery.delivery_id == delivery_id).update(
                    {WebhookDelivery.task_id: None}, synchronize_session=False
                )
        raise
    _record_task(
        database,
        task_id,
        PUBLICATION_TASK_KIND,
        {"delivery_id": delivery_id},
        status=TaskStatus.QUEUED.value,
        lease_expires_at=lease_until(lease_seconds, now),
    )
    with database.session() as s:
        s.query(WebhookDelivery).filter(WebhookDelivery.delivery_id == delivery_id).update(
            {WebhookDelivery.task_id: task_id}, synchronize_session=False
        )
    return task_id


def recover_deliveries(
    database: Database,
    enqueue: Callable[[str], str],
    *,
    lease_seconds: int,
    waiting: set[str] | None,
    now: datetime | None = None,
) -> list[str]:
    """Re-queue every delivery whose processing was abandoned (``abandoned``), and every delivery
    accepted more than a lease ago that never got a task; returns their ids."""
    now = now or datetime.now(UTC)
    with database.read_session() as s:
        open_tasks = list(
            s.scalars(
                select(Task).where(
                    Task.kind == PUBLICATION_TASK_KIND,
                    Task.status.in_([TaskStatus.RUNNING.value, TaskStatus.QUEUED.value]),
                )
            )
        )
        untasked = list(
            s.scalars(
                select(WebhookDelivery.delivery_id).where(
                    WebhookDelivery.task_id.is_(None),
                    WebhookDelivery.publication_id.is_(None),
                    WebhookDelivery.received_at < now - timedelta(seconds=lease_seconds),
                )
            )
        )
        for task in open_tasks:
            s.expunge(task)
    requeued: list[str] = []
    for task in open_tasks:
        delivery_id = (task.payload or {}).get("delivery_id")
        if not delivery_id or not abandoned(task, now, lease_seconds=lease_seconds, waiting=waiting):
            continue
        if requeue_delivery(
            database, enqueue, delivery_id, lease_seconds=lease_seconds, abandoned_task=task, now=now
        ):
            requeued.append(delivery_id)
    for delivery_id in untasked:
        if requeue_delivery(
            database, enqueue, delivery_id, lease_seconds=lease_seconds, abandoned_task=None, now=now
        ):
            requeued.append(delivery_id)
    return requeued


@contextmanager
def _heartbeat(database: Database, task_id: str, lease_seconds: int) -> Iterator[None]:
    """Renew the lease of the running ``task_id`` every third of a lease until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(max(lease_seconds / 3, 0.2)):
            try:
                with database.session() as s:
                    s.query(Task).filter(
                        Task.task_id == task_id, Task.status == TaskStatus.RUNNING.value
                    ).update({Task.lease_expires_at: lease_until(lease_seconds)}, synchronize_session=False)
            except Exception:  # a database hiccup: the next beat tries again
                log.warning("task %s: could not renew its lease", task_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"lease-{task_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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

    def recover_abandoned() -> list[str]:
        """Re-queue the deliveries whose processing was abandoned."""
        return queue.recover()

    def expire_ci_leases() -> list[int]:
        """Fail the CI jobs whose lease ran out (``worker_lost``), each with an event."""
        return expire_ci_jobs(queue.database())

    expire_ci_leases_task = huey.task()(expire_ci_leases)

    def expire_ci_leases_periodic() -> list[int]:
        """Every minute, and (scheduled) half a minute later: lease expiry every 30 s."""
        expire_ci_leases_task.schedule(delay=CI_LEASE_CHECK_SECONDS)
        return expire_ci_jobs(queue.database())

    def ci_worker_task(task_id: str, task: HueyTask | None = None) -> dict[str, Any]:
        """Provision or terminate a CI worker (the Task row ``task_id`` says which and whom)."""
        return _run_ci_worker_task(queue, task_id, task)

    def secureboot_resign_daily() -> dict[str, Any]:
        """Renew the Secure Boot window of every default publication's signed UKIs (when a key is set)."""
        from diskci.platform.secureboot.signing import resign_defaults_if_configured

        return resign_defaults_if_configured(settings, queue.database())

    from diskci.platform.ci import gitea_polling

    gitea_poller = gitea_polling.GiteaRunPoller()

    def sync_gitea_runs(chain: str) -> float | None:
        """One round of Gitea-backed run polling (back-off per run, 2 s to 60 s); schedules the next."""
        box = SecretBox(key=settings.resolve_secret_key())
        delay = gitea_polling.chain_round(huey, chain, gitea_poller, queue.database(), box)
        if delay is not None:
            sync_gitea_runs_task.schedule((chain,), delay=delay)
        return delay

    sync_gitea_runs_task = huey.task(name="sync_gitea_runs")(sync_gitea_runs)

    def sync_gitea_runs_periodic() -> str | None:
        """Every minute: start the Gitea run polling chain when none is alive."""
        chain = gitea_polling.start_chain(huey)
        if chain is not None:
            sync_gitea_runs_task(chain)
        return chain

    schedule = crontab(minute=str(settings.retention_minute), hour=str(settings.retention_hour))
    huey.periodic_task(schedule, name="secureboot_resign_daily")(secureboot_resign_daily)
    huey.periodic_task(crontab(minute="*"), name="sync_gitea_runs_periodic")(sync_gitea_runs_periodic)
    return _Registered(
        huey=huey,
        process_publication=huey.task(
            retries=PUBLICATION_RETRIES, retry_delay=PUBLICATION_RETRY_DELAY, context=True
        )(process_publication),
        retention_daily=huey.periodic_task(schedule)(retention_daily),
        retention_now=huey.task()(retention_now),
        recover_abandoned=huey.periodic_task(crontab(minute="*"))(recover_abandoned),
        ci_worker_task=huey.task(retries=CI_WORKER_RETRIES, retry_delay=CI_WORKER_RETRY_DELAY, context=True)(
            ci_worker_task
        ),
        expire_ci_leases=expire_ci_leases_task,
        expire_ci_leases_periodic=huey.periodic_task(crontab(minute="*"))(expire_ci_leases_periodic),
    )


def expire_ci_jobs(database: Database) -> list[int]:
    """Fail every in-progress CI job whose lease ran out (``scheduler.expire_leases``, reason
    ``worker_lost``) and record a ``ci_job_worker_lost`` event for each; returns their ids."""
    from diskci.platform.actions.events import record_event
    from diskci.platform.ci.scheduler import expire_leases

    with database.session() as session:
        lost = expire_leases(session)
        for job in lost:
            record_event(
                session,
                "ci_job_worker_lost",
                platform_id=job.run.platform_id,
                subject=f"run {job.run_id}: {job.name}",
                reason="worker_lost",
                payload={"run_id": job.run_id, "job": job.name, "runner_id": job.runner_id},
            )
        if lost:
            log.warning("CI: %d job(s) lost their worker: %s", len(lost), [j.id for j in lost])
        return [job.id for job in lost]


def _process_publication(queue: TaskQueue, delivery_id: str, task: HueyTask | None) -> dict[str, Any]:
    """Verify and record the publication a ``disk_image_built`` delivery announced."""
    from diskci.platform.services.publication_processor import RetryLater

    task_id = task.id if task is not None else f"local-{delivery_id}"
    final = task is None or task.retries == 0
    database = queue.database()
    lease = queue.settings.task_lease_seconds
    _record_task(
        database,
        task_id,
        PUBLICATION_TASK_KIND,
        {"delivery_id": delivery_id},
        status=TaskStatus.RUNNING.value,
        started_at=datetime.now(UTC),
        lease_expires_at=lease_until(lease),
        attempts=PUBLICATION_RETRIES - task.retries + 1 if task is not None else 1,
    )
    try:
        with _heartbeat(database, task_id, lease):
            outcome = queue.processor().process(delivery_id, final_attempt=final)
    except RetryLater as exc:
        _record_task(
            database,
            task_id,
            PUBLICATION_TASK_KIND,
            {},
            status=TaskStatus.QUEUED.value,
            error=str(exc),
            lease_expires_at=lease_until(lease + PUBLICATION_RETRY_DELAY),
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
            lease_expires_at=None,
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
            lease_expires_at=None,
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
        lease_expires_at=None,
    )
    return result


def _claim_worker_task(database: Database, task_id: str, lease_seconds: int) -> Task | None:
    """Take the queued (or abandoned running) Task ``task_id``: running, under a lease; None when it
    is finished, unknown, or another consumer holds it (a message delivered twice)."""
    now = datetime.now(UTC)
    with database.session() as s:
        won = (
            s.query(Task)
            .filter(
                Task.task_id == task_id,
                or_(
                    Task.status == TaskStatus.QUEUED.value,
                    (Task.status == TaskStatus.RUNNING.value)
                    & (or_(Task.lease_expires_at.is_(None), Task.lease_expires_at < now)),
                ),
            )
            .update(
                {
                    Task.status: TaskStatus.RUNNING.value,
                    Task.started_at: now,
                    Task.lease_expires_at: lease_until(lease_seconds, now),
                    Task.attempts: Task.attempts + 1,
                },
                synchronize_session=False,
            )
        )
        if not won:
            return None
        row = s.scalar(select(Task).where(Task.task_id == task_id))
        if row is not None:
            s.expunge(row)
        return row


def _run_ci_worker_task(queue: TaskQueue, task_id: str, task: HueyTask | None) -> dict[str, Any]:
    """Run the CI worker Task ``task_id`` (``services.worker_lifecycle.run_step``) under a lease; a
    failed attempt is recorded (``step_failed``) and retried by the queue until the last one."""
    from diskci.platform.services import worker_lifecycle

    database = queue.database()
    lease = queue.settings.task_lease_seconds
    row = _claim_worker_task(database, task_id, lease)
    if row is None:
        log.info("CI worker task %s: finished, unknown or taken by another consumer; skipped", task_id)
        return {"skipped": task_id}
    final = task is None or task.retries == 0
    try:
        with _heartbeat(database, task_id, lease):
            result = worker_lifecycle.run_step(database, queue.settings, row.kind, dict(row.payload or {}))
    except Exception as exc:
        detail = exc.diagnostics() if isinstance(exc, DiskciError) else f"{type(exc).__name__}: {exc}"
        log.error("CI worker task %s (%s), attempt %d: %s", task_id, row.kind, row.attempts, detail)
        worker_lifecycle.step_failed(
            database, row.kind, dict(row.payload or {}), detail, attempt=row.attempts, final=final
        )
        status = TaskStatus.FAILED if final else TaskStatus.QUEUED
        retry_lease = None if final else lease_until(lease + CI_WORKER_RETRY_DELAY)
        _record_task(
            database,
            task_id,
            row.kind,
            {},
            status=status.value,
            error=detail[:4000],
            lease_expires_at=retry_lease,
            finished_at=datetime.now(UTC) if final else None,
        )
        if final:
            return {"error": type(exc).__name__, "detail": detail}
        raise
    _record_task(
        database,
        task_id,
        row.kind,
        {},
        status=TaskStatus.SUCCEEDED.value,
        result=result,
        error=None,
        finished_at=datetime.now(UTC),
        lease_expires_at=None,
    )
    return result


def recover_ci_worker_tasks(
    database: Database,
    enqueue: Callable[[str], str],
    *,
    lease_seconds: int,
    waiting: set[str] | None,
    now: datetime | None = None,
) -> list[str]:
    """Queue again every CI worker Task that was abandoned (``abandoned``: its consumer died, or its
    message was lost); returns their task ids. A compare-and-set on status and lease lets one
    recoverer win."""
    from diskci.platform.services.worker_lifecycle import WORKER_TASK_KINDS

    now = now or datetime.now(UTC)
    with database.read_session() as s:
        rows = list(
            s.scalars(
                select(Task).where(
                    Task.kind.in_(WORKER_TASK_KINDS),
                    Task.status.in_([TaskStatus.RUNNING.value, TaskStatus.QUEUED.value]),
                )
            )
        )
        for row in rows:
            s.expunge(row)
    requeued = []
    for row in rows:
        if not abandoned(row, now, lease_seconds=lease_seconds, waiting=waiting):
            continue
        with database.session() as s:
            won = (
                s.query(Task)
                .filter(
                    Task.id == row.id,
                    Task.status == row.status,
                    Task.lease_expires_at.is_(None)
                    if row.lease_expires_at is None
                    else Task.lease_expires_at == row.lease_expires_at,
                )
                .update(
                    {
                        Task.status: TaskStatus.QUEUED.value,
                        Task.lease_expires_at: lease_until(lease_seconds, now),
                    },
                    synchronize_session=False,
                )
            )
        if won:
            enqueue(row.task_id)
            requeued.append(row.task_id)
    return requeued


@cache
def _environment_queue() -> TaskQueue:
    return TaskQueue(PlatformSettings())


def __getattr__(name: str) -> Any:
    """``huey``: the queue of the ``DISKCI_*`` environment, built when first asked for (``huey_consumer``)."""
    if name == "huey":
        return _environment_queue().huey
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
