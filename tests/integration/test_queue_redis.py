"""The processor and retention on a Redis-backed huey queue, consumed by TWO ``diskci platform consume``
processes at once (Redis at 127.0.0.1:6379, a queue name unique to the test), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from platform_publication_helpers import deliver, make_netboot_build, make_platform, sign_and_push
from sqlalchemy import select, update

from diskci.platform.db.models import DiskImagePublication, Event, Task, WebhookDelivery
from diskci.platform.db.session import Database
from diskci.platform.settings import PlatformSettings
from diskci.supplychain.authority import SigningAuthority
from polling import wait_until

pytestmark = pytest.mark.redis

REDIS = "redis://127.0.0.1:6379/0"
_ENQUEUE = """
import sys
from diskci.platform.settings import PlatformSettings
from diskci.platform.tasks import TaskQueue
queue = TaskQueue(PlatformSettings())
kind = sys.argv[1]
for arg in sys.argv[2:]:
    print(queue.enqueue_publication(arg) if kind == "publication" else queue.retention_now().id, flush=True)
"""


@pytest.fixture
def queue_env(platform_db: Database, tmp_path: Path) -> Iterator[dict[str, str]]:
    queue_url = f"{REDIS}?queue=diskci-test-{secrets.token_hex(6)}"
    env = {
        **os.environ,
        "DISKCI_QUEUE_URL": queue_url,
        "DISKCI_DATABASE_URL": platform_db.url,
        "DISKCI_STATE_DIR": str(tmp_path / "state"),
        "DISKCI_SECRET_KEY": "queue-test-key-" + "q" * 32,
    }
    yield env
    from diskci.platform.tasks import make_huey

    make_huey(PlatformSettings(queue_url=queue_url, state_dir=tmp_path / "state")).flush()


@pytest.fixture
def workers(queue_env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two queue consumer processes (one thread each) on the test's queue."""
    procs = []
    logs = []
    for n in range(2):
        log = open(tmp_path / f"worker-{n}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from diskci.cli.main import main; main()",
                    "platform",
                    "consume",
                    "-w",
                    "1",
                ],
                env=queue_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def _enqueue(env: dict[str, str], kind: str, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _ENQUEUE, kind, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _wait(condition: Any, what: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    def done() -> bool:
        if condition():
            return True
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            pytest.fail(f"{what}: workers exited {dead}")
        return False

    def logs() -> str:
        return "\n".join((tmp_path / f"worker-{n}.log").read_text()[-1500:] for n in range(2))

    wait_until(done, 90, interval=0.2, what=what, detail=logs)


def test_two_queue_consumers_process_and_prune(
    platform_db: Database,
    queue_env: dict[str, str],
    workers: list[subprocess.Popen[bytes]],
    authority: SigningAuthority,
    registry: str,
    tmp_path: Path,
) -> None:
    repository = f"{registry}/ops/queue-{secrets.token_hex(4)}/debian-12-amd64"
    platform_id = make_platform(platform_db, "debian-12-amd64", repository, authority)
    pubs = []
    for n in range(4):
        build_dir = tmp_path / f"build-{n}"
        make_netboot_build(build_dir, platform="debian-12-amd64", version=f"1.0.{n}", root_size=50_000)
        pubs.append(sign_and_push(build_dir, authority, repository))
    # every image delivered twice: the two workers race on the same manifests
    deliveries = [deliver(platform_db, platform_id, p) for p in pubs for _ in range(2)]
    task_ids = _enqueue(queue_env, "publication", *deliveries, "no-such-delivery")
    assert len(set(task_ids)) == len(deliveries) + 1

    def all_done() -> bool:
        with platform_db.read_session() as s:
            done = s.scalars(
                select(Task.task_id).where(
                    Task.task_id.in_(task_ids), Task.status.in_(["succeeded", "failed"])
                )
            ).all()
            return len(done) == len(task_ids)

    _wait(all_done, "publication tasks", workers, tmp_path)
    with platform_db.read_session() as s:
        tasks = {t.task_id: t for t in s.scalars(select(Task).where(Task.task_id.in_(task_ids)))}
        assert [tasks[t].status for t in task_ids] == ["succeeded"] * len(deliveries) + ["failed"]
        unknown = tasks[task_ids[-1]]
        assert unknown.attempts == 1 and "no webhook delivery 'no-such-delivery'" in (unknown.error or "")
    with platform_db.read_session() as s:
        rows = s.scalars(select(DiskImagePublication).order_by(DiskImagePublication.version)).all()
        assert [(r.version, r.status) for r in rows] == [(f"1.0.{n}", "published") for n in range(4)]
        assert {r.manifest_digest for r in rows} == {p.digest for p in pubs}
        published = s.scalars(select(Event).where(Event.type == "disk_image_published")).all()
        assert len(published) == 4
        linked = s.scalars(
            select(WebhookDelivery.publication_id).where(WebhookDelivery.publication_id.is_not(None))
        )
        assert len(linked.all()) == len(deliveries)
        ids = [r.id for r in rows]

    # retention on the same queue: the three older ones expire; two sweeps are queued at once
    with platform_db.session() as s:
        for age, pub_id in zip((400, 300, 200, 1), ids, strict=True):
            s.execute(
                update(DiskImagePublication)
                .where(DiskImagePublication.id == pub_id)
                .values(created_at=datetime.now(UTC) - timedelta(days=age))
            )
    sweeps = _enqueue(queue_env, "retention", "first", "second")

    def pruned() -> bool:
        with platform_db.read_session() as s:
            return (
                len(s.scalars(select(Event).where(Event.type == "disk_image_publication_pruned")).all()) == 3
            )

    _wait(pruned, "retention", workers, tmp_path)
    from diskci.platform.tasks import make_huey

    queue = make_huey(PlatformSettings(queue_url=queue_env["DISKCI_QUEUE_URL"], state_dir=tmp_path / "state"))

    def both_swept() -> bool:
        return all(queue.result(task_id, preserve=True) is not None for task_id in sweeps)

    _wait(both_swept, "the second sweep", workers, tmp_path)  # it must prune nothing more
    with platform_db.read_session() as s:
        statuses = {r.id: r.status for r in s.scalars(select(DiskImagePublication))}
        assert statuses == {ids[0]: "pruned", ids[1]: "pruned", ids[2]: "pruned", ids[3]: "published"}
        assert len(s.scalars(select(Event).where(Event.type == "disk_image_publication_pruned")).all()) == 3
    assert all(p.poll() is None for p in workers)


def test_daily_retention_runs_at_the_configured_time() -> None:
    from diskci.platform.tasks import TaskQueue

    queue = TaskQueue(PlatformSettings())
    hour, minute = queue.settings.retention_hour, queue.settings.retention_minute
    due = datetime(2026, 1, 5, hour, minute)
    task = queue.retention_daily.s()
    assert task.validate_datetime(due)
    assert not task.validate_datetime(due + timedelta(minutes=1))
    assert not task.validate_datetime(due + timedelta(hours=1))
