"""The ``disk_image_built`` webhook receiver: authenticated by its Standard Webhooks signature only, never
by a bearer token (the scheme and the headers: ``diskci.notify``, the ``standardwebhooks`` library).

Checks, in order, each answering with a clear message and creating nothing when it fails:
  1. the body is at most ``webhook_max_body_bytes`` (1 MiB; ``platform.http.limits``)    → 413
  2. a ``webhook-signature: v1,<base64>`` header is present                              → 401
  3. the ``webhook-id`` is a UUID and the ``webhook-timestamp`` a Unix time               → 400
  4. the timestamp is within ``webhook_tolerance_seconds`` (5 minutes) of now             → 401
  5. the body is a JSON object (``platform.http.jsonbody``) naming a node platform that has
     a webhook                                                                             → 400 / 401
  6. the signature is the HMAC-SHA256 of ``<id>.<timestamp>.<body>`` under the platform's
     current secret, or its previous one within the rotation grace (constant-time)         → 401
  7. the payload matches the schema                                                        → 400
  8. the delivery id was never accepted before (a unique row in ``webhook_deliveries``)    → 409
Then the delivery is recorded, queued for the DiskImagePublicationProcessor, and answered 202.

A delivery id already accepted is answered 409 ``ReplayedDelivery`` while its work is done or alive
(queued, or running under a live lease). If its processing was abandoned (the worker died: the Task's
lease ran out, or it never got a task), the redelivery re-queues it and is answered 202 again, so a
crash is never mistaken for a delivery. Likewise when its processing ended in the platform's own failure,
not the sender's: its publication ``failed`` with ``internal_error`` (a database outage, a bug; the
processor marks it so only once the queue will not retry it), the redelivery re-queues it and the
processor takes the failed row over again. A delivery whose publication failed a check (a bad
signature, a digest mismatch, an unreachable registry) is the sender's to fix, with a new build and
a new delivery: its redelivery stays a replay.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from diskci.errors import Conflict, InvalidRequest, PlatformError, Unauthorized
from diskci.notify import (  # the payload schema and the signature scheme, shared with the sender
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DiskImageBuilt,
    signature,
)
from diskci.platform.actions.catalog import validation_detail
from diskci.platform.actions.events import record_event
from diskci.platform.actions.webhooks import WEBHOOK_PATH, valid_secrets, webhook_for
from diskci.platform.db.models import (
    DiskImagePublication,
    PublicationStatus,
    Task,
    TaskStatus,
    WebhookDelivery,
    utcnow,
)
from diskci.platform.db.session import Database
from diskci.platform.http.jsonbody import parse_json
from diskci.platform.secrets import SecretBox
from diskci.platform.services.publication_processor import INTERNAL_ERROR
from diskci.platform.settings import PlatformSettings
from diskci.platform.tasks import abandoned, as_utc, lease_until, requeue_delivery

log = logging.getLogger(__name__)

PUBLICATION_TASK_KIND = "disk_image_publication"
_SIGNATURE = re.compile(r"^v1,([A-Za-z0-9+/]{43}=)$")

router = APIRouter(tags=["webhooks"])


class BadSignature(Unauthorized):
    pass


class StaleDelivery(Unauthorized):
    pass


class ReplayedDelivery(Conflict):
    pass


class MalformedDelivery(InvalidRequest):
    pass


class QueueUnavailable(PlatformError):
    http_status = 503


class Accepted(BaseModel):
    delivery_id: str
    task_id: str


def _delivery_id(headers: Any) -> str:
    value = headers.get(DELIVERY_HEADER)
    if not value:
        raise MalformedDelivery(f"missing {DELIVERY_HEADER} header")
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise MalformedDelivery(f"{DELIVERY_HEADER} {value[:80]!r} is not a UUID") from exc


def _check_timestamp(headers: Any, tolerance: int, now: float) -> None:
    value = headers.get(TIMESTAMP_HEADER)
    if not value:
        raise MalformedDelivery(f"missing {TIMESTAMP_HEADER} header")
    if not re.fullmatch(r"[0-9]{1,12}", value):
        raise MalformedDelivery(f"{TIMESTAMP_HEADER} {value[:40]!r} is not a Unix time in seconds")
    skew = now - int(value)
    if abs(skew) > tolerance:
        raise StaleDelivery(
            f"{TIMESTAMP_HEADER} is {int(abs(skew))} s {'old' if skew > 0 else 'in the future'};"
            f" deliveries are accepted within {tolerance} s"
        )


def _signatures(headers: Any) -> list[bytes]:
    """The ``v1`` signatures of ``webhook-signature`` (space-separated; other versions are ignored)."""
    value = headers.get(SIGNATURE_HEADER)
    if not value:
        raise BadSignature(f"missing {SIGNATURE_HEADER} header")
    out: list[bytes] = []
    for item in value.split():
        match = _SIGNATURE.match(item)
        if match:
            try:
                out.append(base64.b64decode(match.group(1), validate=True))
            except binascii.Error:
                continue
    if not out:
        raise BadSignature(f"{SIGNATURE_HEADER} must hold v1,<base64 HMAC-SHA256> (Standard Webhooks)")
    return out


def _parse(body: bytes) -> dict[str, Any]:
    try:
        data = parse_json(body, what="body")
    except InvalidRequest as exc:
        raise MalformedDelivery(exc.message) from exc
    if not isinstance(data, dict):
        raise MalformedDelivery("body must be a JSON object")
    name = data.get("node_platform")
    if not isinstance(name, str) or not name:
        raise MalformedDelivery("node_platform: a node platform name is required")
    return data


def _note_queued(
    database: Database,
    delivery_id: str,
    task_id: str,
    platform_id: int,
    payload: DiskImageBuilt,
    *,
    with_task_row: bool,
    lease_seconds: int,
) -> None:
    """Link the delivery to its task, show the task as queued, and record the event."""
    with database.session() as session:
        row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id))
        if row is not None:
            row.task_id = task_id
        if with_task_row and session.scalar(select(Task.id).where(Task.task_id == task_id)) is None:
            session.add(
                Task(
                    task_id=task_id,
                    kind=PUBLICATION_TASK_KIND,
                    status=TaskStatus.QUEUED.value,
                    payload={"delivery_id": delivery_id},
                    created_at=utcnow(),
                    lease_expires_at=lease_until(lease_seconds),
                )
            )
            session.flush()
        record_event(
            session,
            "disk_image_webhook_received",
            platform_id=platform_id,
            subject=f"{payload.node_platform}:{payload.version}",
            payload={
                "delivery_id": delivery_id,
                "task_id": task_id,
                "manifest_digest": payload.manifest_digest,
            },
        )


@router.post(
    WEBHOOK_PATH,
    status_code=202,
    response_model=Accepted,
    summary="a disk image was built, signed and pushed (Standard Webhooks-signed by diskci notify)",
    responses={400: {}, 401: {}, 409: {}, 413: {}, 503: {}},
)
async def disk_image_built(request: Request) -> JSONResponse:
    body = await request.body()  # at most webhook_max_body_bytes: the body limit refused the rest
    # The rest waits on the database and the queue: keep it off the event loop.
    accepted = await run_in_threadpool(_accept, request, body)
    return JSONResponse(status_code=202, content=accepted.model_dump())


def _accept(request: Request, body: bytes) -> Accepted:
    settings: PlatformSettings = request.app.state.settings
    database: Database = request.app.state.database
    presented = _signatures(request.headers)
    delivery_id = _delivery_id(request.headers)
    _check_timestamp(request.headers, settings.webhook_tolerance_seconds, time.time())
    timestamp = int(request.headers[TIMESTAMP_HEADER])
    data = _parse(body)
    platform_name = data["node_platform"]
    box = SecretBox(key=settings.resolve_secret_key())
    now = utcnow()
    with database.read_session() as session:
        webhook = webhook_for(session, platform_name)
        if webhook is None:
            raise BadSignature(f"no webhook is provisioned for node platform {platform_name!r}")
        platform_id = webhook.platform_id
        secrets = valid_secrets(webhook, box, now)
    expected = [base64.b64decode(signature(s, delivery_id, timestamp, body)[3:]) for s in secrets]
    # Compare every pair (no early exit) so timing does not tell which one matched.
    matches = [hmac.compare_digest(p, e) for p in presented for e in expected]
    if not any(matches):
        raise BadSignature(
            f"{SIGNATURE_HEADER} does not match the id, timestamp and body under the webhook secret"
        )
    try:
        payload = DiskImageBuilt.model_validate(data)
    except ValidationError as exc:
        raise MalformedDelivery(
            f"payload does not match the disk_image_built schema: {validation_detail(exc)}"
        ) from exc
    record = payload.model_dump(mode="json")
    lease = settings.task_lease_seconds
    seen = False
    try:
        with database.session() as session:
            seen = (
                session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.delivery_id == delivery_id))
                is not None
            )
            if not seen:
                session.add(
                    WebhookDelivery(
                        delivery_id=delivery_id, platform_id=platform_id, received_at=now, payload=record
                    )
                )
                session.flush()
    except IntegrityError:  # the same id raced in on another connection
        seen = True
    if seen:
        return _redelivered(request, database, delivery_id, lease)
    try:
        task_id = request.app.state.ports.enqueue_publication(delivery_id)
    except Exception as exc:
        log.exception("could not queue delivery %s", delivery_id)
        with database.session() as session:  # forget it, so that the sender's retry is accepted
            row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id))
            if row is not None:
                session.delete(row)
        raise QueueUnavailable(f"the task queue is unavailable ({exc}); retry the delivery later") from exc
    try:
        _note_queued(
            database, delivery_id, task_id, platform_id, payload, with_task_row=True, lease_seconds=lease
        )
    except IntegrityError:  # the queue consumer recorded the task first
        _note_queued(
            database, delivery_id, task_id, platform_id, payload, with_task_row=False, lease_seconds=lease
        )
    return Accepted(delivery_id=delivery_id, task_id=task_id)


def _redelivered(request: Request, database: Database, delivery_id: str, lease_seconds: int) -> Accepted:
    """A delivery id seen before: re-queued (202) if its processing was abandoned, else refused (409)."""
    now = utcnow()
    with database.read_session() as session:
        row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id))
        task = None
        if row is not None and row.task_id is not None:
            task = session.scalar(select(Task).where(Task.task_id == row.task_id))
            if task is not None:
                session.expunge(task)
        untasked = (
            row is not None
            and row.task_id is None
            and row.publication_id is None
            and lease_until(lease_seconds, as_utc(row.received_at)) < now
        )
        internal_failure = (
            task is not None
            and task.status == TaskStatus.FAILED.value
            and row is not None
            and row.publication_id is not None
            and _failed_internally(session, row.publication_id)
        )
    state = "is being processed"
    if task is not None:
        state = f"is {task.status} (task {task.task_id})"
    if internal_failure and task is not None:
        task_id = _requeue_after_internal_failure(request, database, delivery_id, task, lease_seconds)
        if task_id is not None:
            return Accepted(delivery_id=delivery_id, task_id=task_id)
    if untasked or (task is not None and abandoned(task, now, lease_seconds=lease_seconds, waiting=None)):
        task_id = requeue_delivery(
            database,
            request.app.state.ports.enqueue_publication,
            delivery_id,
            lease_seconds=lease_seconds,
            abandoned_task=task,
        )
        if task_id is not None:
            log.warning("delivery %s: its processing was abandoned; re-queued as %s", delivery_id, task_id)
            return Accepted(delivery_id=delivery_id, task_id=task_id)
    raise ReplayedDelivery(
        f"delivery {delivery_id} was already accepted and {state}; it is never accepted twice"
    )


def _failed_internally(session: Any, publication_id: int) -> bool:
    """Whether the publication ended ``failed`` with ``internal_error`` (the platform's failure)."""
    pub = session.get(DiskImagePublication, publication_id)
    return (
        pub is not None
        and pub.status == PublicationStatus.FAILED.value
        and pub.failure_reason == INTERNAL_ERROR
    )


def _requeue_after_internal_failure(
    request: Request, database: Database, delivery_id: str, failed: Task, lease_seconds: int
) -> str | None:
    """Queue ``delivery_id`` again after ``failed`` ended in ``internal_error``; the new task id, or None
    when a concurrent redelivery (or the publication's own retry) got there first.

    Compare-and-set: the delivery is unlinked from the failed task only while it is still linked to it
    and its publication is still failed internally, so two redeliveries racing queue it once; the
    re-queue itself is ``requeue_delivery``'s (its own compare-and-set on the unlinked delivery). If the
    queue is down the link is put back, so that the sender's next retry finds the same state."""
    with database.session() as session:
        row = session.scalar(
            select(WebhookDelivery)
            .where(WebhookDelivery.delivery_id == delivery_id, WebhookDelivery.task_id == failed.task_id)
            .with_for_update()
        )
        if row is None or row.publication_id is None or not _failed_internally(session, row.publication_id):
            return None
        row.task_id = None
    try:
        task_id = requeue_delivery(
            database,
            request.app.state.ports.enqueue_publication,
            delivery_id,
            lease_seconds=lease_seconds,
            abandoned_task=None,
        )
    except Exception as exc:
        log.exception("could not re-queue delivery %s", delivery_id)
        with database.session() as session:
            session.query(WebhookDelivery).filter(
                WebhookDelivery.delivery_id == delivery_id, WebhookDelivery.task_id.is_(None)
            ).update({WebhookDelivery.task_id: failed.task_id}, synchronize_session=False)
        raise QueueUnavailable(f"the task queue is unavailable ({exc}); retry the delivery later") from exc
    if task_id is not None:
        log.warning(
            "delivery %s: its processing failed internally (task %s); re-queued as %s",
            delivery_id,
            failed.task_id,
            task_id,
        )
    return task_id
