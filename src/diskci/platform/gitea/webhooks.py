"""Gitea's own webhook deliveries (``workflow_run``, ``workflow_job``, ``push``): checked, then typed.

``read_delivery(headers, body, secret)`` does, in order, each failing with a clear error:
  1. a signature is present: ``X-Gitea-Signature`` (hex), else ``X-Hub-Signature-256``
     (``sha256=<hex>``; Gitea sends both)                                          → BadGiteaSignature
  2. it is the HMAC-SHA256 of the raw body under the webhook's secret (constant time) → BadGiteaSignature
  3. the body is a JSON object                                                       → MalformedGiteaEvent
  4. for the three events diskci reads, the payload has their fields (``workflow_run`` / ``workflow_job``
     in the REST API's shapes, ``models``; a push's ``ref`` and ``after``)          → MalformedGiteaEvent
It returns a ``GiteaDelivery``: the delivery id (``X-Gitea-Delivery``), the event name
(``X-Gitea-Event``), and the typed event, or None for an event diskci does not read (``ping``, issues).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from diskci.ci.pushhook import push_signature
from diskci.errors import InvalidRequest, Unauthorized
from diskci.platform.gitea.models import WorkflowJob, WorkflowRun

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "BadGiteaSignature",
    "GiteaDelivery",
    "MalformedGiteaEvent",
    "PushEvent",
    "WorkflowJobEvent",
    "WorkflowRunEvent",
    "read_delivery",
    "sign_body",
]

SIGNATURE_HEADER = "X-Gitea-Signature"
HUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-Gitea-Event"
DELIVERY_HEADER = "X-Gitea-Delivery"
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class BadGiteaSignature(Unauthorized):
    """A Gitea delivery without a signature, or not signed with the webhook's secret."""


class MalformedGiteaEvent(InvalidRequest):
    """A signed Gitea delivery whose body is not the event its header names."""


@dataclass(frozen=True)
class WorkflowRunEvent:
    """``workflow_run``: ``action`` is ``requested`` | ``in_progress`` | ``completed``."""

    action: str
    run: WorkflowRun
    repository: str  # owner/name
    sender: str


@dataclass(frozen=True)
class WorkflowJobEvent:
    """``workflow_job``: ``action`` is ``queued`` | ``waiting`` | ``in_progress`` | ``completed``."""

    action: str
    job: WorkflowJob
    repository: str
    sender: str


@dataclass(frozen=True)
class PushEvent:
    """``push``: ``after`` is all zeros for a deleted ref."""

    ref: str
    before: str
    after: str
    repository: str
    pusher: str

    @property
    def deleted(self) -> bool:
        return set(self.after) == {"0"}


GiteaEvent = WorkflowRunEvent | WorkflowJobEvent | PushEvent


@dataclass(frozen=True)
class GiteaDelivery:
    delivery_id: str
    event_name: str
    event: GiteaEvent | None


def sign_body(secret: str, body: bytes) -> str:
    """``X-Gitea-Signature`` for ``body``: the hex HMAC-SHA256 under ``secret``."""
    return push_signature(secret, body)


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value whatever its case in ``headers`` (a plain dict, or Starlette's headers)."""
    wanted = name.lower()
    return next((v.strip() for k, v in headers.items() if k.lower() == wanted), "")


def _presented(headers: Mapping[str, str]) -> str:
    gitea = _header(headers, SIGNATURE_HEADER)
    if _HEX.match(gitea):
        return gitea.lower()
    hub = _header(headers, HUB_SIGNATURE_HEADER)
    if hub.startswith("sha256=") and _HEX.match(hub[7:]):
        return hub[7:].lower()
    raise BadGiteaSignature(
        f"no Gitea webhook signature: send {SIGNATURE_HEADER} (hex HMAC-SHA256 of the body)"
        f" or {HUB_SIGNATURE_HEADER} (sha256=<hex>)"
    )


def _names(payload: dict[str, Any]) -> tuple[str, str]:
    repository = payload.get("repository") or {}
    sender = payload.get("sender") or {}
    full_name = repository.get("full_name", "") if isinstance(repository, dict) else ""
    login = sender.get("login", "") if isinstance(sender, dict) else ""
    return str(full_name), str(login)


def _event(name: str, payload: dict[str, Any]) -> GiteaEvent | None:
    repository, sender = _names(payload)
    try:
        if name == "workflow_run":
            run = WorkflowRun.model_validate(payload.get("workflow_run"))
            return WorkflowRunEvent(str(payload.get("action", "")), run, repository, sender)
        if name == "workflow_job":
            job = WorkflowJob.model_validate(payload.get("workflow_job"))
            return WorkflowJobEvent(str(payload.get("action", "")), job, repository, sender)
    except ValidationError as exc:
        raise MalformedGiteaEvent(f"not a {name} event: {exc}") from exc
    if name == "push":
        ref, before, after = (payload.get(k) for k in ("ref", "before", "after"))
        if not (isinstance(ref, str) and ref and isinstance(after, str) and after):
            raise MalformedGiteaEvent("not a push event: it needs 'ref' and 'after'")
        pusher = payload.get("pusher")
        login = (pusher.get("login") or pusher.get("username") or "") if isinstance(pusher, dict) else ""
        return PushEvent(ref, str(before or ""), after, repository, str(login))
    return None


def read_delivery(headers: Mapping[str, str], body: bytes, secret: str) -> GiteaDelivery:
    """Check a delivery's signature and type its event (see the module's steps)."""
    presented = _presented(headers)
    if not secret or not hmac.compare_digest(presented, sign_body(secret, body)):
        raise BadGiteaSignature("the Gitea webhook signature does not match this webhook's secret")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedGiteaEvent("the delivery's body is not JSON") from exc
    if not isinstance(payload, dict):
        raise MalformedGiteaEvent("the delivery's body is not a JSON object")
    name = _header(headers, EVENT_HEADER)
    return GiteaDelivery(
        delivery_id=_header(headers, DELIVERY_HEADER),
        event_name=name,
        event=_event(name, payload),
    )
