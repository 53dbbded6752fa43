"""The server side of Gitea's runner protocol (runner.v1 over Connect, JSON codec), as act_runner speaks it.

Unary Connect calls under ``/api/actions``: ``POST /api/actions/runner.v1.RunnerService/<Method>`` with
``Content-Type: application/json`` and a protojson body (fields in lowerCamelCase or as in the .proto,
int64 as strings or numbers, enums by name or number, ``google.protobuf.Timestamp`` as RFC 3339,
bytes base64); the answer is protojson the same way (int64 as strings), an error is Connect's
``{"code": "unauthenticated", "message": "..."}`` with the matching HTTP status.

- ``Register`` spends a one-time registration token and answers the runner's uuid and token, which
  every other call carries in ``x-runner-uuid`` and ``x-runner-token`` (checked before the body is read).
- ``Declare`` records the runner's version and labels.
- ``FetchTask`` hands the oldest queued job whose labels the runner all has: a ``Task`` with the
  one-job workflow (``workflowPayload``), the ``context`` (event, event_name, ref, ref_name, ref_type,
  sha, repository, run_id, job, server_url..., and ``diskci_clone_url``: the platform's image-build
  repository, where the runner clones from), the outputs and results of the jobs it ``needs``, the
  platform's CI variables as ``vars`` (``DISKCI_WEBHOOK_URL`` defaulting to its webhook's URL) and, when
  it has a webhook, ``secrets`` ``{"DISKCI_WEBHOOK_SECRET": <its current secret>}``.
- ``UpdateTask`` records the job's state (result, steps, outputs); its answer carries the job's result
  as the platform has it, ``RESULT_CANCELLED`` once the job is cancelled (act_runner then stops).
- ``UpdateLog`` appends rows by index and answers ``ackIndex``; ``noMore`` closes the log.
- ``ping.v1.PingService/Ping`` answers ``Hello, <data>!`` without credentials.

``tasksVersion`` is answered (it grows with every job created) but never spares a look for a job:
a job a finished one released is found at once. Every call of a runner is a heartbeat (``last_seen``)
and renews the lease of its job.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from diskci.ci.workflow import WORKFLOW_PATH
from diskci.errors import DiskciError, InvalidRequest, NotFound
from diskci.platform.actions.webhooks import secret_purpose as webhook_secret_purpose
from diskci.platform.ci import oidc, runners, scheduler
from diskci.platform.db.models import (
    CiConclusion,
    CiJob,
    CiRun,
    CiRunner,
    CiRunnerStatus,
    CiStatus,
    DiskImageWebhook,
    NodePlatform,
    utcnow,
)
from diskci.platform.db.session import Database
from diskci.platform.http.jsonbody import parse_json_object
from diskci.platform.secrets import SecretBox
from diskci.platform.settings import PlatformSettings

__all__ = ["BODY_LIMITS", "PREFIX", "UnknownTask", "router"]

PREFIX = "/api/actions"
SERVICE = "runner.v1.RunnerService"
UPDATE_LOG_PATH = f"{PREFIX}/{SERVICE}/UpdateLog"
UPDATE_TASK_PATH = f"{PREFIX}/{SERVICE}/UpdateTask"
# act_runner sends every row not yet acknowledged in one UpdateLog: allow a second of a busy build
BODY_LIMITS = {UPDATE_LOG_PATH: 16 * 1024 * 1024, UPDATE_TASK_PATH: 4 * 1024 * 1024}
DEFAULT_ACTIONS_URL = "https://github.com"  # where ``uses: owner/action@ref`` resolves (Gitea's default)

RESULTS = ["RESULT_UNSPECIFIED", "RESULT_SUCCESS", "RESULT_FAILURE", "RESULT_CANCELLED", "RESULT_SKIPPED"]
_CONCLUSION_OF = {
    "RESULT_SUCCESS": CiConclusion.SUCCESS.value,
    "RESULT_FAILURE": CiConclusion.FAILURE.value,
    "RESULT_CANCELLED": CiConclusion.CANCELLED.value,
    "RESULT_SKIPPED": CiConclusion.SKIPPED.value,
}
_RESULT_OF = {v: k for k, v in _CONCLUSION_OF.items()}
_CONNECT_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    413: "resource_exhausted",
    415: "internal",
    429: "resource_exhausted",
    503: "unavailable",
}

router = APIRouter(prefix=PREFIX, include_in_schema=False)


class UnknownTask(NotFound):
    """A task id that is not a job this runner is running (or ran)."""


# --- protojson ---------------------------------------------------------------------------------------


def _field(msg: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A field by its JSON name (lowerCamelCase) or its .proto name, as protojson accepts both."""
    head, *rest = name.split("_")
    camel = head + "".join(p.title() for p in rest)
    if camel in msg:
        return msg[camel]
    return msg.get(name, default)


def _int64(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRequest(f"{what}: not an int64")
    try:
        number = int(value)
    except ValueError as exc:
        raise InvalidRequest(f"{what}: not an int64 ({value!r})") from exc
    if not -(2**63) <= number < 2**63:
        raise InvalidRequest(f"{what}: out of the int64 range")
    return number


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what}: not a string")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{what}: not a list of strings")
    return list(value)


def _result(value: Any, what: str) -> str:
    if value is None:
        return RESULTS[0]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(RESULTS):
        return RESULTS[value]
    if isinstance(value, str) and value in RESULTS:
        return value
    raise InvalidRequest(f"{what}: not a runner.v1.Result ({value!r})")


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _time(value: Any, what: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{what}: not an RFC 3339 time")
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"{what}: not an RFC 3339 time ({value[:40]!r})") from exc
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{what}: an RFC 3339 time needs its offset")
    return parsed.astimezone(UTC)


def _rfc3339(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _message(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what}: not a message")
    return value


# --- the calls ---------------------------------------------------------------------------------------


def _runner_message(runner: CiRunner, token: str | None = None) -> dict[str, Any]:
    busy = runner.status == CiRunnerStatus.BUSY.value
    message: dict[str, Any] = {
        "id": str(runner.id),
        "uuid": runner.uuid,
        "name": runner.name,
        "status": "RUNNER_STATUS_ACTIVE" if busy else "RUNNER_STATUS_IDLE",
        "version": runner.version,
        "labels": list(runner.labels),
    }
    if token is not None:
        message["token"] = token
    return message


def _register(session: Session, body: dict[str, Any], _runner: CiRunner | None) -> dict[str, Any]:
    labels = _strings(_field(body, "labels"), "labels") or (
        _strings(_field(body, "agent_labels"), "agentLabels")
        + _strings(_field(body, "custom_labels"), "customLabels")
    )
    runner, token = runners.register(
        session,
        registration_token=_string(_field(body, "token"), "token"),
        name=_string(_field(body, "name"), "name"),
        labels=labels,
        version=_string(_field(body, "version"), "version"),
    )
    return {"runner": _runner_message(runner, token)}


def _declare(session: Session, body: dict[str, Any], runner: CiRunner | None) -> dict[str, Any]:
    assert runner is not None
    runner.version = _string(_field(body, "version"), "version")[:64]
    runner.labels = runners.check_labels(_strings(_field(body, "labels"), "labels"))
    return {"runner": _runner_message(runner)}


def _ref_parts(ref: str) -> tuple[str, str]:
    for prefix, kind in (("refs/tags/", "tag"), ("refs/heads/", "branch")):
        if ref.startswith(prefix):
            return ref.removeprefix(prefix), kind
    return ref, ""


def _vars_and_secrets(
    session: Session, platform: NodePlatform, box: SecretBox
) -> tuple[dict[str, str], dict[str, str]]:
    """The task's ``vars`` (the platform's CI variables; DISKCI_WEBHOOK_URL defaults to its webhook's
    URL) and ``secrets`` (DISKCI_WEBHOOK_SECRET: the webhook's current secret, when it has one)."""
    variables = dict(platform.ci_variables or {})
    secrets: dict[str, str] = {}
    webhook = session.scalar(select(DiskImageWebhook).where(DiskImageWebhook.platform_id == platform.id))
    if webhook is not None:
        variables.setdefault("DISKCI_WEBHOOK_URL", webhook.url)
        secrets["DISKCI_WEBHOOK_SECRET"] = box.decrypt(
            webhook.secret_encrypted, purpose=webhook_secret_purpose(platform.id)
        )
    return variables, secrets


def _task(session: Session, job: CiJob, settings: PlatformSettings) -> dict[str, Any]:
    run: CiRun = job.run
    server_url = settings.ci_base_url
    ref_name, ref_type = _ref_parts(run.ref)
    repository = run.platform.name
    event: dict[str, Any] = {"ref": run.ref, "repository": {"name": repository, "full_name": repository}}
    if run.event == "workflow_dispatch":
        event["inputs"] = dict(run.inputs or {})
    else:
        event.update(after=run.sha, head_commit={"id": run.sha})
    context = {
        "event": event,
        "event_name": run.event,
        "ref": run.ref,
        "ref_name": ref_name,
        "ref_type": ref_type,
        "sha": run.sha,
        "diskci_clone_url": run.platform.image_build_repository or "",
        "repository": repository,
        "repository_owner": "",
        "actor": "diskci",
        "run_id": str(run.id),
        "run_number": str(run.id),
        "run_attempt": "1",
        "job": job.job_id,
        "workflow": WORKFLOW_PATH.rsplit("/", 1)[-1],
        "server_url": server_url,
        "gitea_default_actions_url": DEFAULT_ACTIONS_URL,
        "token": oidc.issue_runtime_token(session, job),  # buys the job OIDC ID tokens
    }
    needs: dict[str, Any] = {}
    for other in run.jobs:
        if other.job_id in job.needs:
            need = needs.setdefault(other.job_id, {"outputs": {}, "result": "RESULT_SUCCESS"})
            need["outputs"].update(other.outputs or {})
            if other.conclusion != CiConclusion.SUCCESS.value:
                need["result"] = _RESULT_OF.get(other.conclusion or "", "RESULT_FAILURE")
    variables, secrets = _vars_and_secrets(
        session, run.platform, SecretBox(key=settings.resolve_secret_key())
    )
    return {
        "id": str(job.id),
        "workflowPayload": base64.b64encode(job.payload.encode()).decode(),
        "context": context,
        "secrets": secrets,
        "needs": needs,
        "vars": variables,
    }


def _fetch_task(
    session: Session, body: dict[str, Any], runner: CiRunner | None, settings: PlatformSettings
) -> dict[str, Any]:
    assert runner is not None
    _int64(_field(body, "tasks_version"), "tasksVersion")
    job = scheduler.claim_job(session, runner)
    answer: dict[str, Any] = {"tasksVersion": str(scheduler.latest_version(session))}
    if job is not None:
        answer["task"] = _task(session, job, settings)
    return answer


def _own_job(session: Session, runner: CiRunner, task_id: int) -> CiJob:
    job = session.get(CiJob, task_id)
    if job is None or job.runner_id != runner.id:
        raise UnknownTask(f"task {task_id} is not a task of this runner")
    return job


def _update_task(session: Session, body: dict[str, Any], runner: CiRunner | None) -> dict[str, Any]:
    assert runner is not None
    state = _message(_field(body, "state"), "state")
    task_id = _int64(_field(state, "id"), "state.id")
    conclusion = _CONCLUSION_OF.get(_result(_field(state, "result"), "state.result"))
    steps = []
    raw_steps = _field(state, "steps") or []
    if not isinstance(raw_steps, list):
        raise InvalidRequest("state.steps: not a list")
    for i, raw in enumerate(raw_steps):
        step = _message(raw, f"state.steps[{i}]")
        steps.append(
            scheduler.StepReport(
                index=_int64(_field(step, "id"), f"state.steps[{i}].id"),
                conclusion=_CONCLUSION_OF.get(_result(_field(step, "result"), f"state.steps[{i}].result")),
                started_at=_time(_field(step, "started_at"), f"state.steps[{i}].startedAt"),
                completed_at=_time(_field(step, "stopped_at"), f"state.steps[{i}].stoppedAt"),
                log_index=_int64(_field(step, "log_index"), f"state.steps[{i}].logIndex"),
                log_length=_int64(_field(step, "log_length"), f"state.steps[{i}].logLength"),
            )
        )
    outputs = _message(_field(body, "outputs"), "outputs")
    if not all(isinstance(v, str) for v in outputs.values()):
        raise InvalidRequest("outputs: not a map of strings")
    job = _own_job(session, runner, task_id)  # once the message is known to be well-formed
    sent = scheduler.record_state(
        session,
        job,
        conclusion=conclusion,
        steps=steps,
        outputs=outputs,
    )
    result = (
        _RESULT_OF.get(job.conclusion or "", RESULTS[0])
        if job.status == CiStatus.COMPLETED.value
        else RESULTS[0]
    )
    return {"state": {"id": str(job.id), "result": result}, "sentOutputs": sent}


def _update_log(session: Session, body: dict[str, Any], runner: CiRunner | None) -> dict[str, Any]:
    assert runner is not None
    task_id = _int64(_field(body, "task_id"), "taskId")
    raw_rows = _field(body, "rows") or []
    if not isinstance(raw_rows, list):
        raise InvalidRequest("rows: not a list")
    rows = []
    for i, raw in enumerate(raw_rows):
        row = _message(raw, f"rows[{i}]")
        rows.append(
            scheduler.LogRow(
                time=_time(_field(row, "time"), f"rows[{i}].time"),
                content=_string(_field(row, "content"), f"rows[{i}].content"),
            )
        )
    index = _int64(_field(body, "index"), "index")
    if index < 0:
        raise InvalidRequest("index: negative")
    no_more = _field(body, "no_more", False)
    if not isinstance(no_more, bool):
        raise InvalidRequest("noMore: not a boolean")
    job = _own_job(session, runner, task_id)
    ack = scheduler.append_log(session, job, index=index, rows=rows, no_more=no_more)
    return {"ackIndex": str(ack)}


# --- transport ---------------------------------------------------------------------------------------


def _connect_error(exc: DiskciError) -> JSONResponse:
    status = getattr(exc, "http_status", 500)
    code = _CONNECT_CODES.get(status, "internal")
    return JSONResponse({"code": code, "message": exc.message}, status_code=status)


Handler = Callable[[Session, dict[str, Any], CiRunner | None], dict[str, Any]]


def _authenticate(database: Database, request: Request) -> int:
    with database.read_session() as session:
        runner = runners.authenticate(
            session, request.headers.get("x-runner-uuid"), request.headers.get("x-runner-token")
        )
        return runner.id


def _handle(
    database: Database, handler: Handler, body: dict[str, Any], runner_id: int | None
) -> dict[str, Any]:
    with database.session() as session:
        runner = None
        if runner_id is not None:
            runner = session.scalar(select(CiRunner).where(CiRunner.id == runner_id).with_for_update())
            if runner is None or runner.revoked_at is not None:
                raise runners.RunnerUnauthenticated("unknown runner, or a wrong or revoked runner token")
            runner.last_seen = utcnow()
            if runner.status == CiRunnerStatus.OFFLINE.value:
                runner.status = CiRunnerStatus.ONLINE.value
        return handler(session, body, runner)


async def _call(request: Request, handler: Handler, *, authenticated: bool = True) -> JSONResponse:
    database: Database = request.app.state.database
    try:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return JSONResponse(
                {
                    "code": "internal",
                    "message": f"content type {content_type or 'none'!r}: only application/json",
                },
                status_code=415,
            )
        runner_id = await run_in_threadpool(_authenticate, database, request) if authenticated else None
        body = parse_json_object(await request.body(), what=request.url.path.rsplit("/", 1)[-1])
        answer = await run_in_threadpool(_handle, database, handler, body, runner_id)
    except DiskciError as exc:
        return _connect_error(exc)
    return JSONResponse(answer)


@router.post(f"/{SERVICE}/Register")
async def register(request: Request) -> JSONResponse:
    return await _call(request, _register, authenticated=False)


@router.post(f"/{SERVICE}/Declare")
async def declare(request: Request) -> JSONResponse:
    return await _call(request, _declare)


@router.post(f"/{SERVICE}/FetchTask")
async def fetch_task(request: Request) -> JSONResponse:
    settings = request.app.state.settings

    def handler(session: Session, body: dict[str, Any], runner: CiRunner | None) -> dict[str, Any]:
        return _fetch_task(session, body, runner, settings)

    return await _call(request, handler)


@router.post(f"/{SERVICE}/UpdateTask")
async def update_task(request: Request) -> JSONResponse:
    return await _call(request, _update_task)


@router.post(f"/{SERVICE}/UpdateLog")
async def update_log(request: Request) -> JSONResponse:
    return await _call(request, _update_log)


@router.post("/ping.v1.PingService/Ping")
async def ping(request: Request) -> JSONResponse:
    def handler(_session: Session, body: dict[str, Any], _runner: CiRunner | None) -> dict[str, Any]:
        return {"data": f"Hello, {_string(_field(body, 'data'), 'data')}!"}

    return await _call(request, handler, authenticated=False)
