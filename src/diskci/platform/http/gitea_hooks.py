"""Gitea's own webhooks for a Gitea-backed platform: ``POST /api/v1/ci/gitea/{platform_name}``.

Gitea posts ``workflow_run``, ``workflow_job`` and ``push`` deliveries signed with the platform's Gitea
webhook secret (``system_configure_disk_image_ci`` makes it). Checks, in order, each answering with a
clear message and changing nothing:
  1. the body is at most ``webhook_max_body_bytes`` (counted while it streams)               → 413
  2. the platform exists and its CI backend is gitea, with a webhook secret                  → 404 / 400
  3. ``X-Gitea-Signature`` (or ``X-Hub-Signature-256``) is the HMAC-SHA256 of the raw body    → 401
  4. the body is the event ``X-Gitea-Event`` names (``gitea.webhooks.read_delivery``)          → 400
  5. the delivery is for the platform's repository                                           → 400
Then: ``workflow_run`` and ``workflow_job`` sync that run at once (``ci.gitea_runs.sync_delivered``; a
run diskci did not dispatch gets a CI run), answered 200 ``{"run_id", "status", "sync_error"}``;
``push`` and events diskci does not read are answered 202 ``{"ignored": ...}`` (Gitea starts the
workflow of a pushed tag itself: the run arrives by its own ``workflow_run`` delivery). A Gitea
outage while syncing is answered 200 with ``sync_error`` (the delivery's own fields are kept).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from diskci.errors import InvalidRequest
from diskci.platform.actions.ci_settings import GITEA_HOOK_PATH
from diskci.platform.actions.platforms import get_platform
from diskci.platform.ci import gitea_runs
from diskci.platform.db.models import CiRun
from diskci.platform.db.session import Database
from diskci.platform.gitea.platform_client import webhook_secret_of
from diskci.platform.gitea.webhooks import (
    MalformedGiteaEvent,
    PushEvent,
    WorkflowJobEvent,
    WorkflowRunEvent,
    read_delivery,
)
from diskci.platform.http.limits import read_bounded
from diskci.platform.secrets import SecretBox
from diskci.platform.settings import PlatformSettings

__all__ = ["router"]

router = APIRouter(tags=["ci"])


def _accept(request: Request, platform_name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    settings: PlatformSettings = request.app.state.settings
    database: Database = request.app.state.database
    box = SecretBox(key=settings.resolve_secret_key())
    # 2. the platform and its Gitea webhook secret (NotGiteaBacked: 400)
    with database.read_session() as session:
        platform = get_platform(session, platform_name)
        secret = webhook_secret_of(platform, box)
        platform_id, repository = platform.id, platform.gitea_repository or ""
    # 3-4. the signature, then the event
    delivery = read_delivery(request.headers, body, secret)
    event = delivery.event
    if isinstance(event, PushEvent) or event is None:
        what = f"a push of {event.ref}" if isinstance(event, PushEvent) else f"event {delivery.event_name!r}"
        return 202, {"ignored": f"{what}: Gitea starts the workflow itself; its runs arrive as workflow_run"}
    # 5. the platform's repository
    if event.repository and event.repository.lower() != repository.lower():
        raise MalformedGiteaEvent(
            f"a delivery of repository {event.repository!r}, not {platform_name}'s ({repository})"
        )
    if isinstance(event, WorkflowRunEvent):
        run_id = gitea_runs.sync_delivered(database, box, platform_id, event.run.id, event.run)
    elif isinstance(event, WorkflowJobEvent):
        run_id = gitea_runs.sync_delivered(
            database, box, platform_id, event.job.run_id, delivered_job=event.job
        )
    else:  # every event read_delivery types is handled above
        raise InvalidRequest(f"event {delivery.event_name!r} is not handled")
    with database.read_session() as session:
        run = session.get(CiRun, run_id) if run_id is not None else None
        if run is None:
            return 202, {"ignored": "the platform is gone"}
        return 200, {"run_id": run.id, "status": run.status, "conclusion": run.conclusion,
                     "sync_error": run.sync_error}  # fmt: skip


@router.post(
    GITEA_HOOK_PATH,
    summary="a Gitea webhook delivery (workflow_run, workflow_job, push) of a Gitea-backed platform",
    responses={200: {}, 202: {}, 400: {}, 401: {}, 404: {}, 413: {}, 503: {}},
)
async def gitea_hook(platform_name: str, request: Request) -> JSONResponse:
    settings: PlatformSettings = request.app.state.settings
    # 1. bounded while it streams (the body limit middleware has bounded it already)
    body = await read_bounded(request, settings.webhook_max_body_bytes, "Gitea webhook deliveries")
    status, answer = await run_in_threadpool(_accept, request, platform_name, body)
    return JSONResponse(status_code=status, content=answer)
