"""The FastAPI application factory: action routes, webhook receiver, netboot, health.

Every registered action is served as ``POST /api/v1/<action name>`` with its pydantic input as the JSON
body and its output as the response, behind a bearer token whose role must allow the action. The token
and the role are checked before a byte of the body is read; then the body (bounded, like every body,
by ``platform.http.limits``) is parsed by ``platform.http.jsonbody`` and validated, strictly, in
``invoke()``. Errors become ``{"error": "<ErrorClass>", "detail": "..."}`` with the error's HTTP
status, in one handler.

The app's ports (the task queue) are built once from what ``create_app`` was given and handed to
``invoke()`` and to the webhook receiver. A destructive action never acts on its first call: it answers
428 ``ConfirmationRequired`` with a one-time ``confirmation_id`` bound to the action, its arguments and
the caller (5 minutes; ``platform.mcp.confirmations``, as for the MCP tools and the CLI's ``--yes``),
and acts when the same call is repeated with the header ``X-Diskci-Confirmation: <id>``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from diskci import __version__
from diskci.errors import DiskciError, InvalidRequest
from diskci.platform.actions.catalog import (
    ActionSpec,
    ConfirmationRequired,
    DatabaseUnavailable,
    check_role,
    confirmation_needed,
    invoke,
    load_all,
    preview_action,
)
from diskci.platform.actions.webhooks import WEBHOOK_PATH
from diskci.platform.db.session import Database, configure, set_default
from diskci.platform.http.auth import Principal, PrincipalDep
from diskci.platform.http.errors import error_response, http_error_response
from diskci.platform.http.jsonbody import parse_json_object
from diskci.platform.http.limits import BodyLimitMiddleware, RouteLimits
from diskci.platform.http.runner_protocol import BODY_LIMITS as RUNNER_LIMITS
from diskci.platform.http.runner_protocol import router as runner_protocol_router
from diskci.platform.http.worker_heartbeat import BODY_LIMITS as HEARTBEAT_LIMITS
from diskci.platform.http.worker_heartbeat import router as worker_heartbeat_router
from diskci.platform.mcp import confirmations
from diskci.platform.ports import EnqueuePublication, Ports
from diskci.platform.services.netboot import MAX_REPORT_BYTES, REPORT_PATH
from diskci.platform.settings import PlatformSettings
from diskci.platform.statefiles import private_dir

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
CONFIRMATION_HEADER = "X-Diskci-Confirmation"
DESTRUCTIVE_NOTE = (
    "**Destructive: confirmed in two steps.** The first call does nothing: it answers **428**"
    " `ConfirmationRequired` with a one-time `confirmation_id` (and `expires_at`, `action`, `arguments`,"
    " and `would_affect`: the objects the call would change)."
    " Show the operator what it would do; once they agree, repeat the same call (same token, same body)"
    f" with the header `{CONFIRMATION_HEADER}: <confirmation_id>` within 5 minutes. A reused, expired or"
    " foreign id, or a changed body, answers 403 `ConfirmationRefused` and nothing changes (the CLI's"
    " `--yes` confirms at once)."
)
CONFIRMATION_PARAMETER: dict[str, Any] = {
    "name": CONFIRMATION_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 64},
    "description": "The confirmation_id the first call answered with (428): confirms this call, once.",
}


async def _diskci_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DiskciError)
    if getattr(exc, "http_status", 400) >= 500:
        log.error("request failed: %s", exc.diagnostics())
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in exc.errors()
    )
    return error_response(InvalidRequest(f"invalid request: {problems}"))


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return http_error_response(exc)


class ErrorBody(BaseModel):
    """Every error answer: the error's class name, and what was wrong."""

    error: str
    detail: str


_ERROR_STATUSES = {
    400: "invalid input (the detail names each problem)",
    401: "missing, invalid or revoked bearer token",
    403: "the token's role does not allow this action",
    404: "what the input names does not exist",
    409: "a conflict with the current state",
    413: "the body is over the limit",
    503: "the database is unavailable",
}
ACTION_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why} for status, why in _ERROR_STATUSES.items()
}
DESTRUCTIVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ACTION_ERROR_RESPONSES,
    403: {"model": ErrorBody, "description": "role too low, or the confirmation refused"},
    428: {"description": "not confirmed yet: the body carries the confirmation_id (nothing was done)"},
}


def _tag(spec: ActionSpec) -> str:
    return spec.func.__module__.rsplit(".", 1)[-1]


def _allowed(spec: ActionSpec) -> Callable[[Principal], Principal]:
    """The route's dependency: the caller's token, whose role must allow ``spec`` (before any body)."""

    def allowed(principal: PrincipalDep) -> Principal:
        check_role(spec, principal.role)
        return principal

    return allowed


def _confirm(spec: ActionSpec, request: Request, data: Any, actor: str, principal: Principal) -> Any:
    """A destructive call's arguments once its confirmation header is redeemed, else the 428 answer."""
    database = request.app.state.database
    arguments = confirmations.bound_arguments(spec, data, principal.role)
    confirmation_id = request.headers.get(CONFIRMATION_HEADER)
    if confirmation_id:
        confirmations.redeem(database, confirmation_id, spec.name, arguments, actor=actor)
        return arguments
    would_affect = preview_action(spec.name, arguments, **_caller(request, principal))
    issued = confirmations.issue(database, spec.name, arguments, actor=actor, would_affect=would_affect)
    required = ConfirmationRequired(spec.name)
    required.hint = (
        f"Nothing was done. Repeat the same call with the header {CONFIRMATION_HEADER}: "
        f"{issued.confirmation_id} (once, within 5 minutes)."
    )
    body: dict[str, Any] = {"error": type(required).__name__, "detail": required.diagnostics()}
    body.update(
        confirmation_id=issued.confirmation_id,
        expires_at=issued.expires_at.isoformat(),
        action=spec.name,
        arguments=arguments,
        would=f"{spec.summary} ({spec.name} with these arguments; it cannot be undone)",
        would_affect=would_affect,
    )
    return JSONResponse(status_code=required.http_status, content=body)


def _caller(request: Request, principal: Principal) -> dict[str, Any]:
    """What ``invoke()`` and its read-only questions take of the app and the caller."""
    state = request.app.state
    return {
        "database": state.database,
        "settings": state.settings,
        "actor": principal.actor,
        "role": principal.role,
        "ports": state.ports,
    }


def _action_endpoint(spec: ActionSpec) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def endpoint(request: Request, principal: Principal) -> Any:
        data = parse_json_object(await request.body(), what=spec.name)
        actor = principal.actor
        caller = _caller(request, principal)
        needed = spec.destructive or (
            spec.may_destroy
            and await run_in_threadpool(lambda: confirmation_needed(spec.name, data, **caller))
        )
        if needed:
            confirmed = await run_in_threadpool(_confirm, spec, request, data, actor, principal)
            if isinstance(confirmed, JSONResponse):
                return confirmed
            data = confirmed
        # confirmed: redeemed above
        return await run_in_threadpool(lambda: invoke(spec.name, data, confirmed=needed, **caller))

    params = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter(
            "principal",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Principal,
            default=Depends(_allowed(spec)),
        ),
    ]
    endpoint.__signature__ = inspect.Signature(params, return_annotation=spec.output_model)  # type: ignore[attr-defined]
    endpoint.__name__ = spec.name
    return endpoint


def _input_schemas(specs: list[ActionSpec]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each action's input schema reference, and the schemas they refer to (for the components)."""
    models = {spec.input_model for spec in specs}
    refs, top = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    by_action = {spec.name: refs[(spec.input_model, "validation")] for spec in specs}
    return by_action, top.get("$defs", {})


def add_action_routes(app: FastAPI) -> None:
    specs = list(load_all().values())
    refs, schemas = _input_schemas(specs)
    for spec in specs:
        extra: dict[str, Any] = {"x-diskci-role": spec.role.value, "x-diskci-destructive": spec.destructive}
        # The body is read by the endpoint, after the token; its schema is documented here.
        extra["requestBody"] = {
            "required": False,
            "description": spec.input_model.__doc__ or spec.summary,
            "content": {"application/json": {"schema": refs[spec.name]}},
        }
        description = f"{spec.description}\n\nRole: **{spec.role.value}** or higher."
        responses = ACTION_ERROR_RESPONSES
        if spec.destructive_note:
            extra["x-diskci-destructive-when"] = spec.destructive_note
            description += f"\n\nDestructive {spec.destructive_note}."
        if spec.may_destroy:
            description += f"\n\n{DESTRUCTIVE_NOTE}"
            extra["parameters"] = [CONFIRMATION_PARAMETER]
            responses = DESTRUCTIVE_RESPONSES
        app.add_api_route(
            f"{API_PREFIX}/{spec.name}",
            _action_endpoint(spec),
            methods=["POST"],
            response_model=spec.output_model,
            summary=spec.summary,
            description=description,
            operation_id=spec.name,
            tags=[_tag(spec)],
            openapi_extra=extra,
            responses=responses,
        )
    _document_schemas(app, schemas)


def _no_validation_422(doc: dict[str, Any]) -> None:
    """Bad parameters answer 400 in the one error shape (``_validation_error``), never FastAPI's 422:
    the document says so, on every route FastAPI documented a 422 for."""
    bad_request = {
        "description": "a parameter or the body is invalid (the detail names it)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            if responses.pop("422", None) is not None:
                responses.setdefault("400", bad_request)
    schemas = doc.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def _document_schemas(app: FastAPI, schemas: dict[str, Any]) -> None:
    """Add the action inputs' schemas to the OpenAPI components (FastAPI sees no body parameter)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            known = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in schemas.items():
                known.setdefault(name, schema)
            _no_validation_422(doc)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: PlatformSettings | None = None,
    *,
    database: Database | None = None,
    enqueue: EnqueuePublication | None = None,
    migrate: bool = True,
) -> FastAPI:
    """Build the platform's ASGI app; the schema is upgraded to the newest revision first.

    ``enqueue`` queues a webhook delivery for processing; by default, on ``TaskQueue(settings)``.
    """
    settings = settings or PlatformSettings()
    private_dir(settings.state_dir)  # 0700, before anything (database, queue, blobs) lands in it
    settings.resolve_secret_key()  # fail at start, not at the first webhook, when the key is missing
    if database is None:
        database = configure(settings.database_url)
    else:
        set_default(database)  # in-process queue consumers use the same database
    if migrate:
        database.upgrade()
    app = FastAPI(
        title="diskci platform",
        version=__version__,
        description="Control plane of diskci: node platforms, webhooks, publications, netboot, retention.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc are served from installed assets by mount_web below
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.database = database
    from diskci.platform.tasks import TaskQueue

    queue = TaskQueue(settings, database=database)
    app.state.ports = Ports(
        enqueue=enqueue or queue.enqueue_publication, enqueue_worker=queue.enqueue_ci_worker_task
    )
    app.add_exception_handler(DiskciError, _diskci_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    limits = RouteLimits(
        default=settings.api_max_body_bytes,
        routes={
            WEBHOOK_PATH: settings.webhook_max_body_bytes,
            REPORT_PATH: MAX_REPORT_BYTES,
            **RUNNER_LIMITS,
            **HEARTBEAT_LIMITS,
        },
    )
    app.add_middleware(BodyLimitMiddleware, limits=limits)

    @app.get("/healthz", tags=["health"], summary="liveness and database reachability")
    def healthz() -> dict[str, str]:
        try:
            with database.read_session() as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"the database is unavailable: {exc}") from exc
        return {"status": "ok", "version": __version__, "database": database.backend}

    from diskci.platform.http.webhooks import router as webhook_router

    app.include_router(webhook_router)
    app.include_router(runner_protocol_router)  # Gitea's runner protocol at /api/actions
    app.include_router(worker_heartbeat_router)  # the runners' heartbeats (host stats) beside it
    from diskci.platform.http.ci_push import router as ci_push_router

    app.include_router(ci_push_router)  # push webhooks of image-build repositories: /api/v1/ci/push/...
    app.include_router(importlib.import_module("diskci.platform.http.gitea_hooks").router)  # Gitea webhooks
    from diskci.platform.http.oidc import router as oidc_router

    app.include_router(oidc_router)  # the CI jobs' OIDC provider: /.well-known/..., /api/actions/id-token
    add_action_routes(app)
    from diskci.platform.web import mount_web

    mount_web(app, docs_url=f"{API_PREFIX}/docs", redoc_url=f"{API_PREFIX}/redoc")  # dashboard at /
    try:
        netboot = importlib.import_module("diskci.platform.http.netboot")
    except ModuleNotFoundError as exc:
        if exc.name != "diskci.platform.http.netboot":
            raise
    else:
        app.include_router(netboot.router)
    from diskci.platform.mcp.transport import mount_mcp

    mount_mcp(app, database=database, settings=settings, ports=app.state.ports)  # MCP at /mcp
    return app
