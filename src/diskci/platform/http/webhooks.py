"""The ``disk_image_built`` webhook receiver: authenticated by HMAC only, never by a bearer token.

Checks, in order, each answering with a clear message and creating nothing when it fails:
  1. the body is at most ``webhook_max_body_bytes`` (1 MiB; ``platform.http.limits``)    → 413
  2. an ``X-DiskCI-Signature-256: sha256=<hex>`` header is present                        → 401
  3. the delivery id is a UUID and the timestamp a Unix time                              → 400
  4. the timestamp is within ``webhook_tolerance_seconds`` (5 minutes) of now             → 401
  5. the body is a JSON object (``platform.http.jsonbody``) naming a node platform that has
     a webhook                                                                             → 400 / 401
  6. the signature is the HMAC-SHA256 of the raw body under the
     platform's current secret, or its previous one within the rotation grace (constant-time) → 401
  7. the payload matches the schema                                                        → 400
  8. the delivery id was never accepted before (a unique row in ``webhook_deliveries``)    → 409
Then the delivery is recorded, queued for the DiskImagePublicationProcessor, and answered 202.
"""

from __future__ import annotations

import hashlib
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
from diskci.notify import DiskImageBuilt  # the payload schema, shared with the sender
from diskci.platform.actions.catalog import validation_detail
from diskci.platform.actions.events import record_event
from diskci.platform.actions.webhooks import WEBHOOK_PATH, valid_secrets, webhook_for
from diskci.platform.db.models import Task, TaskStatus, WebhookDelivery, utcnow
from diskci.platform.db.session import Database
from diskci.platform.http.jsonbody import parse_json
from diskci.platform.secrets import SecretBox
from diskci.platform.settings import PlatformSettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-DiskCI-Signature-256"
DELIVERY_HEADER = "X-DiskCI-Delivery"
TIMESTAMP_HEADER = "X-DiskCI-Timestamp"
PUBLICATION_TASK_KIND = "disk_image_publication"
_SIGNATURE = re.compile(r"^sha256=([0-9a-f]{64})$")

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


def _signature(headers: Any) -> bytes:
    value = headers.get(SIGNATURE_HEADER)
    if not value:
        raise BadSignature(f"missing {SIGNATURE_HEADER} header")
    match = _SIGNATURE.match(value.strip())
    if not match:
        raise BadSignature(f"{SIGNATURE_HEADER} must be sha256=<64 lower-case hex digits>")
    return bytes.fromhex(match.group(1))


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
    summary="a disk image was built, signed and pushed (HMAC-signed by diskci notify)",
    responses={400: {}, 401: {}, 409: {}, 413: {}},
)
async def disk_image_built(request: Request) -> JSONResponse:
    body = await request.body()  # at most webhook_max_body_bytes: the body limit refused the rest
    # The rest waits on the database and the queue: keep it off the event loop.
    accepted = await run_in_threadpool(_accept, request, body)
    return JSONResponse(status_code=202, content=accepted.model_dump())


def _accept(request: Request, body: bytes) -> Accepted:
    settings: PlatformSettings = request.app.state.settings
    database: Database = request.app.state.database
    presented = _signature(request.headers)
    delivery_id = _delivery_id(request.headers)
    _check_timestamp(request.headers, settings.webhook_tolerance_seconds, time.time())
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
    expected = [hmac.new(s.encode(), body, hashlib.sha256).digest() for s in secrets]
    # Compare against every candidate (no early exit) so timing does not tell which one matched.
    matches = [hmac.compare_digest(presented, e) for e in expected]
    if not any(matches):
        raise BadSignature(f"{SIGNATURE_HEADER} does not match the body under the platform's webhook secret")
    try:
        payload = DiskImageBuilt.model_validate(data)
    except ValidationError as exc:
        raise MalformedDelivery(
            f"payload does not match the disk_image_built schema: {validation_detail(exc)}"
        ) from exc
    record = payload.model_dump(mode="json")
    try:
        with database.session() as session:
            if session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.delivery_id == delivery_id)):
                raise ReplayedDelivery(
                    f"delivery {delivery_id} was already accepted; it is never accepted twice"
                )
            session.add(
                WebhookDelivery(
                    delivery_id=delivery_id, platform_id=platform_id, received_at=now, payload=record
                )
            )
            session.flush()
    except IntegrityError as exc:  # the same id raced in on another connection
        raise ReplayedDelivery(
            f"delivery {delivery_id} was already accepted; it is never accepted twice"
        ) from exc
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
        _note_queued(database, delivery_id, task_id, platform_id, payload, with_task_row=True)
    except IntegrityError:  # the queue consumer recorded the task first
        _note_queued(database, delivery_id, task_id, platform_id, payload, with_task_row=False)
    return Accepted(delivery_id=delivery_id, task_id=task_id)
