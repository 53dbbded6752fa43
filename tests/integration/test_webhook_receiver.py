"""The ``disk_image_built`` receiver: Standard Webhooks signature, timestamp window, replay, size and schema
checks.

A bad delivery gets its status and a clear message, and creates nothing: no delivery row, no task,
no event, nothing queued.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from diskci.notify import sign_delivery
from diskci.platform.actions.catalog import invoke
from diskci.platform.db.models import DiskImageWebhook, Event, Role, Task, WebhookDelivery
from diskci.platform.db.session import Database
from diskci.platform.settings import PlatformSettings
from polling import wait_until

URL = "/api/v1/system/webhooks/disk_image_built"
PLATFORM = "debian-12-amd64"


def payload(**over: Any) -> dict[str, Any]:
    return {
        "node_platform": PLATFORM,
        "version": "2026.11.26-1",
        "reference": f"127.0.0.1:5000/ops/disk-images/{PLATFORM}:2026.11.26-1",
        "manifest_digest": "sha256:" + "ab" * 32,
        "source": {"repo": "ops/images", "ref": "refs/heads/main", "commit": "0123456789abcdef"},
        "run_id": "42",
        "critical": False,
        **over,
    }


def headers(
    secret: str, body: bytes, *, delivery: str | None = None, ts: int | None = None
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        **sign_delivery(
            secret, delivery or str(uuid.uuid4()), ts if ts is not None else int(time.time()), body
        ),
    }


@pytest.fixture
def secret(platform_db: Database, platform_settings: PlatformSettings) -> str:
    def call(action: str, /, **data: Any) -> Any:
        return invoke(
            action, data, database=platform_db, settings=platform_settings, actor="t", role=Role.ADMIN
        )

    call(
        "system_create_node_platform",
        name=PLATFORM,
        architectures=["amd64"],
        registry_repository=f"127.0.0.1:5000/ops/disk-images/{PLATFORM}",
        cosign_identity_regexp=r"^https://ci\.example/.+$",
        cosign_oidc_issuer="https://ci.example",
    )
    return str(call("provision_disk_image_webhook", platform=PLATFORM).secret)


@pytest.fixture
def nothing_created(platform_db: Database, enqueued: list[str]) -> Callable[[], None]:
    """Asserts that no delivery, task or webhook event exists and nothing was queued."""

    def check() -> None:
        with platform_db.session() as s:
            assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
            assert s.scalar(select(func.count()).select_from(Task)) == 0
            assert s.scalar(select(func.count()).where(Event.type == "disk_image_webhook_received")) == 0
        assert enqueued == []

    return check


def expect(response: Any, status: int, error: str, detail: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert detail in body["detail"]


def test_good_delivery_is_accepted_and_queued(
    platform_client: Any, secret: str, platform_db: Database, enqueued: list[str]
) -> None:
    body = json.dumps(payload()).encode()
    delivery = str(uuid.uuid4())
    r = platform_client.post(URL, content=body, headers=headers(secret, body, delivery=delivery))
    assert r.status_code == 202, r.text
    assert r.json() == {"delivery_id": delivery, "task_id": f"task-1-{delivery}"}
    assert enqueued == [delivery]
    with platform_db.session() as s:
        row = s.scalar(select(WebhookDelivery))
        assert row is not None and row.delivery_id == delivery and row.task_id == f"task-1-{delivery}"
        assert row.payload["manifest_digest"] == "sha256:" + "ab" * 32
        task = s.scalar(select(Task))
        assert task is not None and task.status == "queued" and task.payload == {"delivery_id": delivery}
        assert s.scalar(select(func.count()).where(Event.type == "disk_image_webhook_received")) == 1


def test_forged_signature(platform_client: Any, secret: str, nothing_created: Callable[[], None]) -> None:
    body = json.dumps(payload()).encode()
    forged = headers("x" * 43, body)
    expect(platform_client.post(URL, content=body, headers=forged), 401, "BadSignature", "does not match")
    # The right secret over a different body does not verify either.
    tampered = json.dumps(payload(critical=True)).encode()
    h = headers(secret, body)
    expect(platform_client.post(URL, content=tampered, headers=h), 401, "BadSignature", "does not match")
    h["webhook-signature"] = "md5=abc"
    expect(platform_client.post(URL, content=body, headers=h), 401, "BadSignature", "v1,<base64")
    del h["webhook-signature"]
    expect(platform_client.post(URL, content=body, headers=h), 401, "BadSignature", "missing")
    nothing_created()


@pytest.mark.parametrize(("offset", "word"), [(-330, "old"), (-3600, "old"), (330, "in the future")])
def test_stale_or_future_timestamp(
    platform_client: Any, secret: str, nothing_created: Callable[[], None], offset: int, word: str
) -> None:
    body = json.dumps(payload()).encode()
    h = headers(secret, body, ts=int(time.time()) + offset)
    expect(platform_client.post(URL, content=body, headers=h), 401, "StaleDelivery", word)
    nothing_created()


def test_malformed_headers(platform_client: Any, secret: str, nothing_created: Callable[[], None]) -> None:
    body = json.dumps(payload()).encode()
    h = headers(secret, body, delivery="not-a-uuid")
    expect(platform_client.post(URL, content=body, headers=h), 400, "MalformedDelivery", "is not a UUID")
    h = headers(secret, body)
    h["webhook-timestamp"] = "yesterday"
    expect(platform_client.post(URL, content=body, headers=h), 400, "MalformedDelivery", "not a Unix time")
    del h["webhook-timestamp"]
    expect(
        platform_client.post(URL, content=body, headers=h),
        400,
        "MalformedDelivery",
        "missing webhook-timestamp",
    )
    nothing_created()


def test_replayed_delivery_id(
    platform_client: Any, secret: str, platform_db: Database, enqueued: list[str]
) -> None:
    body = json.dumps(payload()).encode()
    h = headers(secret, body)
    assert platform_client.post(URL, content=body, headers=h).status_code == 202
    again = platform_client.post(URL, content=body, headers=h)
    expect(again, 409, "ReplayedDelivery", "never accepted twice")
    # Even a fresh signature and timestamp over a different body: the id is spent.
    other = json.dumps(payload(version="2")).encode()
    h2 = headers(secret, other, delivery=h["webhook-id"])
    expect(platform_client.post(URL, content=other, headers=h2), 409, "ReplayedDelivery", "already accepted")
    assert len(enqueued) == 1
    with platform_db.session() as s:
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 1


def test_oversized_body(platform_client: Any, secret: str, nothing_created: Callable[[], None]) -> None:
    big = json.dumps(payload(version="v", padding="x" * (1024 * 1024))).encode()
    expect(
        platform_client.post(URL, content=big, headers=headers(secret, big)), 413, "BodyTooLarge", "1048576"
    )

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming
        for _ in range(17):
            yield b"y" * 65536

    r = platform_client.post(URL, content=chunks(), headers=headers(secret, b""))
    expect(r, 413, "BodyTooLarge", "exceeds")
    nothing_created()


@pytest.mark.parametrize(
    ("body", "status", "error", "detail"),
    [
        (b"{not json", 400, "MalformedDelivery", "not JSON"),
        (b"[1, 2]", 400, "MalformedDelivery", "JSON object"),
        (b'{"version": "1"}', 400, "MalformedDelivery", "node_platform"),
        (json.dumps(payload(node_platform="unknown")).encode(), 401, "BadSignature", "no webhook"),
        (
            json.dumps(payload(manifest_digest="sha256:xyz")).encode(),
            400,
            "MalformedDelivery",
            "manifest_digest",
        ),
        (
            json.dumps({k: v for k, v in payload().items() if k != "source"}).encode(),
            400,
            "MalformedDelivery",
            "source: Field required",
        ),
        (
            json.dumps(payload(source={"repo": "r", "commit": "abc"})).encode(),
            400,
            "MalformedDelivery",
            "source.ref: Field required",
        ),
        (json.dumps(payload(extra="field")).encode(), 400, "MalformedDelivery", "extra"),
        (json.dumps(payload(critical="maybe")).encode(), 400, "MalformedDelivery", "critical"),
    ],
)
def test_malformed_bodies(
    platform_client: Any,
    secret: str,
    nothing_created: Callable[[], None],
    body: bytes,
    status: int,
    error: str,
    detail: str,
) -> None:
    expect(platform_client.post(URL, content=body, headers=headers(secret, body)), status, error, detail)
    nothing_created()


def test_previous_secret_valid_only_within_grace(
    platform_client: Any, secret: str, platform_db: Database, platform_settings: PlatformSettings
) -> None:
    rotated = invoke(
        "provision_disk_image_webhook",
        {"platform": PLATFORM},
        database=platform_db,
        settings=platform_settings,
        actor="t",
        role=Role.ADMIN,
    )
    body = json.dumps(payload()).encode()
    assert platform_client.post(URL, content=body, headers=headers(secret, body)).status_code == 202
    assert platform_client.post(URL, content=body, headers=headers(rotated.secret, body)).status_code == 202
    with platform_db.session() as s:
        hook = s.scalar(select(DiskImageWebhook))
        assert hook is not None
        hook.previous_valid_until = datetime.now(UTC) - timedelta(seconds=1)
    r = platform_client.post(URL, content=body, headers=headers(secret, body))
    expect(r, 401, "BadSignature", "does not match")
    assert platform_client.post(URL, content=body, headers=headers(rotated.secret, body)).status_code == 202


def test_webhook_ignores_bearer_tokens(
    platform_client: Any, secret: str, admin_headers: dict[str, str]
) -> None:
    body = json.dumps(payload()).encode()
    r = platform_client.post(URL, content=body, headers={**admin_headers, "Content-Type": "application/json"})
    expect(r, 401, "BadSignature", "missing webhook-signature")


def test_real_queue_receives_the_delivery(
    platform_settings: PlatformSettings, platform_db: Database, secret: str
) -> None:
    """Without a test double: the delivery lands in the huey queue of ``diskci.platform.tasks``."""
    from fastapi.testclient import TestClient

    from diskci.platform import tasks
    from diskci.platform.http.app import create_app

    tasks.huey.flush()
    app = create_app(platform_settings, database=platform_db, migrate=False)
    body = json.dumps(payload()).encode()
    with TestClient(app) as client:
        r = client.post(URL, content=body, headers=headers(secret, body))
    assert r.status_code == 202, r.text
    pending = tasks.huey.pending()
    assert len(pending) == 1
    assert pending[0].id == r.json()["task_id"]
    assert pending[0].args == (r.json()["delivery_id"],)
    tasks.huey.flush()


def test_concurrent_deliveries_with_one_id_are_accepted_once(
    platform_app: Any, secret: str, platform_db: Database, enqueued: list[str]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    body = json.dumps(payload()).encode()
    h = headers(secret, body)

    def post(_: int) -> int:
        with TestClient(platform_app) as client:
            return int(client.post(URL, content=body, headers=h).status_code)

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(post, range(4)))
    assert codes == [202, 409, 409, 409]
    assert enqueued == [h["webhook-id"]]


def test_diskci_notify_delivers_to_a_live_server(
    platform_app: Any, secret: str, platform_db: Database, enqueued: list[str]
) -> None:
    """The sender (``diskci.notify``) and this receiver agree, over real HTTP."""
    import socket
    import threading

    import uvicorn

    from diskci.notify import DiskImageBuilt, send_notification

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(platform_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, interval=0.02, what="the uvicorn server to start")
        delivery = send_notification(
            f"http://127.0.0.1:{port}{URL}", secret.encode(), DiskImageBuilt.model_validate(payload())
        )
        assert delivery.status == 202 and enqueued == [delivery.delivery_id]
        from diskci.errors import NotifyError

        with pytest.raises(NotifyError, match="HTTP 401"):
            send_notification(
                f"http://127.0.0.1:{port}{URL}", b"wrong-secret", DiskImageBuilt.model_validate(payload())
            )
    finally:
        server.should_exit = True
        thread.join(10)


def test_queue_failure_answers_503_and_the_retry_is_accepted(
    platform_settings: PlatformSettings, platform_db: Database, secret: str
) -> None:
    from fastapi.testclient import TestClient

    from diskci.platform.http.app import create_app

    calls: list[str] = []

    def flaky(delivery_id: str) -> str:
        calls.append(delivery_id)
        if len(calls) == 1:
            raise ConnectionError("redis down")
        return "task-after-retry"

    app = create_app(platform_settings, database=platform_db, enqueue=flaky, migrate=False)
    body = json.dumps(payload()).encode()
    h = headers(secret, body)
    with TestClient(app) as client:
        expect(client.post(URL, content=body, headers=h), 503, "QueueUnavailable", "redis down")
        with platform_db.session() as s:
            assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
        r = client.post(URL, content=body, headers=h)  # the sender retries with the same delivery id
    assert r.status_code == 202 and r.json()["task_id"] == "task-after-retry"
    assert calls == [h["webhook-id"]] * 2


def test_captured_delivery_with_a_new_id_or_timestamp_is_refused(
    platform_client: Any, secret: str, nothing_created: Callable[[], None]
) -> None:
    """The id and the timestamp are signed (Standard Webhooks): a captured signature does not carry over."""
    body = json.dumps(payload()).encode()
    captured = headers(secret, body, ts=int(time.time()) - 60)
    for name, value in (("webhook-id", str(uuid.uuid4())), ("webhook-timestamp", str(int(time.time())))):
        forged = {**captured, name: value}
        expect(platform_client.post(URL, content=body, headers=forged), 401, "BadSignature", "does not match")
    nothing_created()


def test_redelivery_of_abandoned_work_is_requeued_not_refused(
    platform_client: Any, secret: str, platform_db: Database, enqueued: list[str]
) -> None:
    """A worker died with the Task running: the sender's retry (same id) is queued again, once."""
    body = json.dumps(payload()).encode()
    delivery = str(uuid.uuid4())
    first = platform_client.post(URL, content=body, headers=headers(secret, body, delivery=delivery))
    assert first.status_code == 202, first.text
    with platform_db.session() as s:
        task = s.scalar(select(Task))
        assert task is not None
        task.status = "running"  # ... and its worker is SIGKILLed: the lease is never renewed
        task.lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
    again = platform_client.post(URL, content=body, headers=headers(secret, body, delivery=delivery))
    assert again.status_code == 202, again.text
    assert again.json()["task_id"] != first.json()["task_id"]
    assert enqueued == [delivery, delivery]
    with platform_db.session() as s:
        statuses = {t.task_id: t.status for t in s.scalars(select(Task))}
        row = s.scalar(select(WebhookDelivery))
        assert row is not None and row.task_id == again.json()["task_id"]
    assert statuses == {first.json()["task_id"]: "failed", again.json()["task_id"]: "queued"}
    # The re-queued work is alive: a further retry is a replay.
    third = platform_client.post(URL, content=body, headers=headers(secret, body, delivery=delivery))
    expect(third, 409, "ReplayedDelivery", "is queued")
    assert len(enqueued) == 2


def test_recovery_requeues_lost_and_expired_work_once(
    platform_client: Any, secret: str, platform_db: Database, enqueued: list[str]
) -> None:
    """``recover_deliveries``: a queued Task whose message is gone, and a running one past its lease."""
    from diskci.platform.tasks import recover_deliveries

    ids = []
    for version in ("1", "2", "3"):
        body = json.dumps(payload(version=version)).encode()
        r = platform_client.post(URL, content=body, headers=headers(secret, body))
        assert r.status_code == 202, r.text
        ids.append(r.json()["delivery_id"])
    past = datetime.now(UTC) - timedelta(seconds=1)
    with platform_db.session() as s:
        lost, expired, alive = (
            s.scalar(select(Task).where(Task.payload["delivery_id"].as_string() == d)) for d in ids
        )
        assert lost is not None and expired is not None and alive is not None
        lost.lease_expires_at = past  # queued, but its message is not in the queue
        expired.status, expired.lease_expires_at = "running", past
        alive.status = "running"  # lease still running: left alone
        waiting = {alive.task_id}
    enqueued.clear()

    def enqueue(delivery_id: str) -> str:
        enqueued.append(delivery_id)
        return f"recovered-{delivery_id}"

    requeued = recover_deliveries(platform_db, enqueue, lease_seconds=60, waiting=waiting)
    assert sorted(requeued) == sorted(ids[:2])
    assert recover_deliveries(platform_db, enqueue, lease_seconds=60, waiting=waiting) == []  # once
    assert sorted(enqueued) == sorted(ids[:2])


def _fail_processing(platform_db: Database, tmp_path: Any, authority: Any, delivery: str) -> None:
    """The delivery's processing as the queue consumer ends it after an unexpected exception on its
    last attempt: the processor marks the publication ``failed`` with ``internal_error``, the Task is
    ``failed``."""
    from diskci.platform.services.blobcache import BlobCache
    from diskci.platform.services.publication_processor import DiskImagePublicationProcessor

    def broken_registry(_reference: Any) -> Any:  # a test double: the platform's own failure
        raise RuntimeError("the registry client blew up")

    processor = DiskImagePublicationProcessor(
        database=platform_db,
        blobs=BlobCache(tmp_path / "blobs"),
        authority_dir=authority.directory,
        registry=broken_registry,
    )
    with pytest.raises(RuntimeError, match="blew up"):
        processor.process(delivery, final_attempt=True)
    with platform_db.session() as s:
        task = s.scalar(select(Task).where(Task.payload["delivery_id"].as_string() == delivery))
        assert task is not None
        task.status, task.finished_at, task.lease_expires_at = "failed", datetime.now(UTC), None


def test_redelivery_after_an_internal_failure_is_requeued_once(
    platform_client: Any,
    secret: str,
    platform_db: Database,
    enqueued: list[str],
    tmp_path: Any,
    authority: Any,
) -> None:
    """Processing ended ``internal_error`` (the platform's failure, not the sender's): the sender's retry
    with the same id is queued again, once; the processor then takes the failed row over."""
    from diskci.platform.db.models import DiskImagePublication

    body = json.dumps(payload()).encode()
    delivery = str(uuid.uuid4())
    first = platform_client.post(URL, content=body, headers=headers(secret, body, delivery=delivery))
    assert first.status_code == 202, first.text
    _fail_processing(platform_db, tmp_path, authority, delivery)
    with platform_db.session() as s:
        pub = s.scalar(select(DiskImagePublication))
        assert pub is not None and (pub.status, pub.failure_reason) == ("failed", "internal_error")
    again = platform_client.post(URL, content=body, headers=headers(secret, body, delivery=delivery))
    assert again.status_code == 202, again.text
    assert again.json()["task_id"] != first.json()["task_id"]
    assert enqueued == [delivery, delivery]
    with platform_db.session() as s:
        statuses = {t.task_id: t.status for t in s.scalars(select(Task))}
        row = s.scalar(select(WebhookDelivery))
        assert row is not None and row.task_id == again.json()["task_id"]
        assert s.scalar(select(func.count()).select_from(DiskImagePublication)) == 1
    assert statuses == {first.json()["task_id"]: "failed", again.json()["task_id"]: "queued"}
    third = platform_client.post(URL, content=body, headers=headers(secret, body, delivery=delivery))
    expect(third, 409, "ReplayedDelivery", "is queued")
    assert len(enqueued) == 2


def test_redelivery_after_a_failed_check_stays_a_replay(
    platform_client: Any,
    secret: str,
    platform_db: Database,
    enqueued: list[str],
    tmp_path: Any,
    authority: Any,
) -> None:
    """A publication that failed a check (here: the signer's identity) is the sender's to fix with a
    new build: the same delivery again is refused, nothing is queued."""
    from diskci.platform.db.models import DiskImagePublication

    body = json.dumps(payload()).encode()
    delivery = str(uuid.uuid4())
    assert (
        platform_client.post(URL, content=body, headers=headers(secret, body, delivery=delivery)).status_code
        == 202
    )
    _fail_processing(platform_db, tmp_path, authority, delivery)
    with platform_db.session() as s:
        pub = s.scalar(select(DiskImagePublication))
        assert pub is not None
        pub.failure_reason = "identity_mismatch"
    again = platform_client.post(URL, content=body, headers=headers(secret, body, delivery=delivery))
    expect(again, 409, "ReplayedDelivery", "is failed")
    assert enqueued == [delivery]


def test_redelivery_after_an_internal_failure_while_the_queue_is_down_can_be_retried(
    platform_settings: PlatformSettings, platform_db: Database, secret: str, tmp_path: Any, authority: Any
) -> None:
    """The re-queue meets a queue outage: 503, and the sender's next retry is re-queued."""
    from fastapi.testclient import TestClient

    from diskci.platform.http.app import create_app

    calls: list[str] = []

    def queue_down_on_the_second_call(delivery_id: str) -> str:  # a test double for the queue
        calls.append(delivery_id)
        if len(calls) == 2:
            raise ConnectionError("redis down")
        return f"task-{len(calls)}"

    app = create_app(
        platform_settings, database=platform_db, enqueue=queue_down_on_the_second_call, migrate=False
    )
    body = json.dumps(payload()).encode()
    h = headers(secret, body)
    with TestClient(app) as client:
        assert client.post(URL, content=body, headers=h).status_code == 202
        _fail_processing(platform_db, tmp_path, authority, h["webhook-id"])
        expect(client.post(URL, content=body, headers=h), 503, "QueueUnavailable", "redis down")
        r = client.post(URL, content=body, headers=h)
    assert r.status_code == 202 and r.json()["task_id"] == "task-3", r.text
    with platform_db.session() as s:
        row = s.scalar(select(WebhookDelivery))
        assert row is not None and row.task_id == "task-3"
