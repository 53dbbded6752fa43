"""The push-webhook receiver: a pushed tag of a platform's image-build repository becomes one CI run.

``POST /api/v1/ci/push/{platform_name}`` takes the push events of Gitea, Forgejo and GitHub (and of the
``post-receive`` hook ``diskci ci hook`` installs, which sends Gitea's), authenticated by their
signature only. Checks, in order, each answering with a clear message and creating nothing:
  1. the body is at most the route's limit (``platform.http.limits``; checked again here, before
     anything reads it)                                                                    → 413
  2. the platform exists and has CI configured (a repository and a push secret)            → 404 / 409
  3. a signature is present: ``X-Gitea-Signature`` / ``X-Forgejo-Signature`` (hex) or
     ``X-Hub-Signature-256`` (``sha256=<hex>``)                                            → 401
  4. it is the HMAC-SHA256 of the raw body under the platform's push secret (constant time) → 401
  5. the body is a push event: ``ref`` and ``after`` (a commit sha)                         → 400
Then: a deleted ref (``after`` all zeros), a branch, or a tag the workflow's ``on.push.tags`` (read at
the pushed commit) does not match is answered 202 ``{"ignored": "<why>"}``; a matching tag makes a run
(event ``push``, trigger key ``push:<ref>:<sha>``), answered 201 ``{"run_id", "status", "duplicate":
false}``; the same tag at the same commit again is answered 200 with the existing run and
``"duplicate": true``.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from diskci.ci.pushhook import push_signature
from diskci.errors import InvalidRequest, Unauthorized
from diskci.platform.actions.ci_settings import PUSH_PATH, push_secret
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import get_platform
from diskci.platform.ci import triggers
from diskci.platform.ci.gitsource import ResolvedRef
from diskci.platform.db.session import Database
from diskci.platform.http.jsonbody import parse_json_object
from diskci.platform.http.limits import read_bounded
from diskci.platform.secrets import SecretBox
from diskci.platform.settings import PlatformSettings

__all__ = ["SIGNATURE_HEADERS", "BadPushSignature", "MalformedPushEvent", "push_signature", "router"]

HEX_SIGNATURE_HEADERS = ("X-Gitea-Signature", "X-Forgejo-Signature")
GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
SIGNATURE_HEADERS = (*HEX_SIGNATURE_HEADERS, GITHUB_SIGNATURE_HEADER)
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
TAG_PREFIX = "refs/tags/"

router = APIRouter(tags=["ci"])


class BadPushSignature(Unauthorized):
    pass


class MalformedPushEvent(InvalidRequest):
    pass


def _presented(headers: Any) -> list[str]:
    """The hex signatures the request carries, lower-cased (malformed ones are dropped)."""
    found = []
    for name in HEX_SIGNATURE_HEADERS:
        value = (headers.get(name) or "").strip()
        if _HEX.match(value):
            found.append(value.lower())
    github = (headers.get(GITHUB_SIGNATURE_HEADER) or "").strip()
    if github.startswith("sha256=") and _HEX.match(github[7:]):
        found.append(github[7:].lower())
    if not found:
        raise BadPushSignature(
            f"no push signature: send {' or '.join(HEX_SIGNATURE_HEADERS)} (hex HMAC-SHA256 of the body)"
            f" or {GITHUB_SIGNATURE_HEADER} (sha256=<hex>)"
        )
    return found


def _verify(headers: Any, body: bytes, secret: str) -> None:
    expected = push_signature(secret, body)
    # every presented signature is compared (no early exit), each in constant time
    matches = [hmac.compare_digest(p.encode(), expected.encode()) for p in _presented(headers)]
    if not any(matches):
        raise BadPushSignature("the push signature does not match the body under the platform's push secret")


def _event(body: bytes) -> tuple[str, str]:
    """``(ref, after)`` of a push event body."""
    try:
        data = parse_json_object(body, what="push event")
    except InvalidRequest as exc:
        raise MalformedPushEvent(exc.message) from exc
    ref, after = data.get("ref"), data.get("after")
    if not isinstance(ref, str) or not ref.startswith("refs/") or len(ref) > 255:
        raise MalformedPushEvent("push event: ref must be a full ref name (refs/tags/v1, refs/heads/main)")
    if not isinstance(after, str) or not _SHA.match(after):
        raise MalformedPushEvent("push event: after must be the pushed commit's sha (40 or 64 hex digits)")
    return ref, after


def _accept(request: Request, platform_name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    settings: PlatformSettings = request.app.state.settings
    database: Database = request.app.state.database
    box = SecretBox(key=settings.resolve_secret_key())
    # 2. the platform, its repository and its secret (read, then the transaction ends)
    with database.read_session() as session:
        platform = get_platform(session, platform_name)
        source = triggers.git_source(settings, platform)
        secret = push_secret(platform, box)
        platform_id = platform.id
        gitea_backed = platform.ci_backend == "gitea"
    if secret is None:
        raise triggers.CiNotConfigured(
            f"node platform {platform_name!r} has no push secret",
            hint="Make one: system_configure_disk_image_ci with rotate_push_secret true.",
        )
    # 3-4. the signature, before the body is parsed
    _verify(request.headers, body, secret)
    # 5. the event
    ref, after = _event(body)
    if gitea_backed:  # Gitea starts the workflow itself; its workflow_run webhook brings the run here
        return 202, {"ignored": f"node platform {platform_name!r} builds on Gitea: Gitea runs {ref}"}
    if set(after) == {"0"}:
        return 202, {"ignored": f"{ref} was deleted"}
    if not ref.startswith(TAG_PREFIX):
        return 202, {"ignored": f"{ref} is not a tag: only a pushed tag starts a run"}
    tag = ref.removeprefix(TAG_PREFIX)
    resolved = ResolvedRef(ref=ref, sha=after)
    workflow_text = triggers.read_workflow(source, resolved)  # fetches the pushed commit if needed
    patterns = triggers.push_tag_patterns(workflow_text)
    if patterns is None or not patterns.matches(tag):
        wanted = "no tag push" if patterns is None else f"tags {patterns.tags or '(any)'}"
        return 202, {"ignored": f"tag {tag} does not match the workflow's on.push ({wanted})"}
    key = triggers.push_trigger_key(ref, after)
    with database.session() as session:
        platform = get_platform(session, platform_name)
        if platform.id != platform_id:
            raise triggers.CiNotConfigured(f"node platform {platform_name!r} changed meanwhile; push again")
        started = triggers.start_run(
            session, platform, resolved, workflow_text, event="push", trigger_key=key
        )
        run = started.run
        if not started.duplicate:
            record_event(
                session,
                "ci_run_queued",
                platform=platform,
                subject=f"run {run.id}",
                payload={"run_id": run.id, "ref": ref, "sha": after, "event": "push", "trigger_key": key},
            )
        answer = {
            "run_id": run.id,
            "status": run.status,
            "ref": ref,
            "sha": after,
            "duplicate": started.duplicate,
        }
    return (200 if started.duplicate else 201), answer


@router.post(
    PUSH_PATH,
    summary="a push to a platform's image-build repository (Gitea, Forgejo or GitHub push webhook)",
    responses={200: {}, 201: {}, 202: {}, 400: {}, 401: {}, 404: {}, 409: {}, 413: {}},
)
async def ci_push(platform_name: str, request: Request) -> JSONResponse:
    settings: PlatformSettings = request.app.state.settings
    # 1. bounded while it streams (the body limit middleware has bounded it already)
    body = await read_bounded(request, settings.webhook_max_body_bytes, "push events")
    status, answer = await run_in_threadpool(_accept, request, platform_name, body)
    return JSONResponse(status_code=status, content=answer)
