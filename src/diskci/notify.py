"""``diskci notify``: tell the platform a publication exists, with a signed webhook POST.

Public API: ``DiskImageBuilt`` (the payload, documented in ``docs/webhook-payload.schema.json``),
``signing_key(secret)``, ``sign_delivery(secret, delivery_id, timestamp, body)``,
``send_notification(url, secret, payload) -> Delivery``.

Signed with the Standard Webhooks scheme (https://www.standardwebhooks.com, the ``standardwebhooks``
library): ``webhook-id: <uuid4>`` (the same on every retry of one delivery, so the receiver can drop
duplicates), ``webhook-timestamp: <unix seconds>`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`` — the id and the timestamp are signed with the body, so a captured delivery
cannot be sent again under a new id or time. The key is the secret the platform provisioned
(``signing_key``: a ``whsec_<base64>`` secret is decoded, any other is used as its UTF-8 bytes). 5xx
answers and connection errors are retried with exponential back-off; a 4xx answer fails at once with
the server's message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from pydantic import BaseModel, ConfigDict, Field
from standardwebhooks import Webhook

from diskci.errors import NotifyError
from diskci.mediatypes import WEBHOOK_SCHEMA

log = logging.getLogger("diskci.notify")
SIGNATURE_HEADER = "webhook-signature"
DELIVERY_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SECRET_PREFIX = "whsec_"


class SourceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(description="source repository URL")
    ref: str = Field(description="git ref built, e.g. refs/tags/v0.3.0")
    commit: str = Field(description="commit id built")


class DiskImageBuilt(BaseModel):
    """The ``disk_image_built`` webhook payload."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"$id": WEBHOOK_SCHEMA})

    node_platform: str = Field(description="node platform name, e.g. debian-12")
    version: str = Field(description="the published version (the index tag)")
    reference: str = Field(description="where the publication is: host/repo:tag or oci-layout:PATH:tag")
    manifest_digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="digest of the OCI index")
    source: SourceRef
    run_id: str = Field(description="CI run that built it")
    critical: bool = Field(default=False, description="a security-critical update")


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    status: int
    attempts: int
    response: str


def signing_key(secret: str | bytes) -> bytes:
    """The HMAC key of a webhook secret: a Standard Webhooks ``whsec_<base64>`` secret decoded, any
    other secret (what ``provision_disk_image_webhook`` generates) as its UTF-8 bytes."""
    raw = secret.encode() if isinstance(secret, str) else secret
    if raw.startswith(SECRET_PREFIX.encode()):
        try:
            text = raw[len(SECRET_PREFIX) :]
            raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
        except binascii.Error as exc:
            raise NotifyError(f"the {SECRET_PREFIX} webhook secret is not base64: {exc}") from None
    if not raw:
        raise NotifyError("the webhook secret is empty")
    return raw


def signature(secret: str | bytes, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one delivery (Standard Webhooks)."""
    signed_at = datetime.fromtimestamp(timestamp, UTC)
    return Webhook(signing_key(secret)).sign(delivery_id, signed_at, body.decode())


def sign_delivery(secret: str | bytes, delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one delivery of ``body``."""
    return {
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, delivery_id, timestamp, body),
    }


def _server_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason_phrase
    if isinstance(data, dict):
        for key in ("detail", "message", "error"):
            if key in data:
                return str(data[key])
    return json.dumps(data)[:500]


def _error_name(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return ""
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def send_notification(
    url: str,
    secret: bytes,
    payload: DiskImageBuilt,
    *,
    attempts: int = 5,
    backoff: float = 1.0,
    timeout: float = 10.0,
    transport: httpx.BaseTransport | None = None,
) -> Delivery:
    """POST ``payload`` to ``url``; retries 5xx and connection errors, raises ``NotifyError`` otherwise."""
    if not secret:
        raise NotifyError("the webhook secret is empty")
    body = payload.model_dump_json().encode()
    delivery_id = str(uuid.uuid4())
    last = ""
    with httpx.Client(timeout=timeout, transport=transport) as client:
        for attempt in range(1, attempts + 1):
            headers = {
                "Content-Type": "application/json",
                **sign_delivery(secret, delivery_id, int(time.time()), body),
                "User-Agent": "diskci-notify",
            }
            try:
                resp = client.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                last = f"cannot reach {url}: {exc}"
            else:
                if resp.status_code < 300:
                    log.info("webhook delivered (%s, HTTP %d)", delivery_id, resp.status_code)
                    return Delivery(delivery_id, resp.status_code, attempt, resp.text[:2000])
                if resp.status_code == 409 and attempt > 1 and _error_name(resp) == "ReplayedDelivery":
                    # An earlier attempt was accepted but its answer was lost: it is delivered.
                    log.info(
                        "webhook already delivered (%s, answer to attempt %d lost)", delivery_id, attempt - 1
                    )
                    return Delivery(delivery_id, resp.status_code, attempt, resp.text[:2000])
                if 400 <= resp.status_code < 500:
                    raise NotifyError(
                        f"{url} refused the notification (HTTP {resp.status_code}): {_server_message(resp)}"
                    )
                last = f"{url} answered HTTP {resp.status_code}: {_server_message(resp)}"
            if attempt < attempts:
                delay = backoff * 2 ** (attempt - 1)
                log.warning(
                    "webhook attempt %d/%d failed (%s); retrying in %.1fs", attempt, attempts, last, delay
                )
                time.sleep(delay)
    raise NotifyError(f"webhook not delivered after {attempts} attempts: {last}")


def payload_schema() -> dict[str, object]:
    """The JSON schema of the payload (what ``docs/webhook-payload.schema.json`` holds)."""
    schema = DiskImageBuilt.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
