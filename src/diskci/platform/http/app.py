"""The FastAPI application factory: action routes, webhook receiver, netboot, health.

Every registered action is served as ``POST /api/v1/<action name>`` with its pydantic input as the JSON
body and its output as the response, behind a bearer token whose role must allow the action. Errors
become ``{"error": "<ErrorClass>", "detail": "..."}`` with the error's HTTP status, in one handler.

The app's ports (the task queue) are built once from what ``create_app`` was given and handed to
``invoke()`` and to the webhook receiver. A destructive action's route is its own confirmation: the
bearer-authenticated POST to ``/api/v1/<action>`` names the action explicitly, so the adapter invokes it
with ``confirmed=True`` (the CLI asks for ``--yes`` instead).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from diskci import __version__
from diskci.errors import DiskciError, InvalidRequest, Unauthorized
from diskci.platform.actions.catalog import ActionSpec, DatabaseUnavailable, invoke, load_all
from diskci.platform.db.session import Database, configure, set_default
from diskci.platform.http.auth import Principal, current_principal
from diskci.platform.ports import EnqueuePublication, Ports
from diskci.platform.settings import PlatformSettings

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DESTRUCTIVE_NOTE = (
    "**Destructive.** Calling this route is the confirmation: the action runs at once, so send it only"
    " when it is meant (the CLI asks for `--yes`)."
)


def error_response(exc: DiskciError) -> JSONResponse:
    """The one mapping from a diskci error to an HTTP answer."""
    status = getattr(exc, "http_status", 500)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse(
        status_code=status,
        content={"error": type(exc).__name__, "detail": exc.diagnostics()},
        headers=headers,
    )


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


def _tag(spec: ActionSpec) -> str:
    return spec.func.__module__.rsplit(".", 1)[-1]


def _action_endpoint(spec: ActionSpec) -> Callable[..., BaseModel]:
    def endpoint(request: Request, body: BaseModel | None, principal: Principal) -> BaseModel:
        return invoke(
            spec.name,
            body,
            database=request.app.state.database,
            settings=request.app.state.settings,
            actor=f"token:{principal.name}",
            role=principal.role,
            confirmed=True,  # the route names the action: the call is its confirmation
            ports=request.app.state.ports,
        )

    params = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter(
            "body",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=spec.input_model | None,
            default=Body(None, description=spec.input_model.__doc__ or spec.summary),
        ),
        inspect.Parameter(
            "principal",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Principal,
            default=Depends(current_principal),
        ),
    ]
    endpoint.__signature__ = inspect.Signature(params, return_annotation=spec.output_model)  # type: ignore[attr-defined]
    endpoint.__name__ = spec.name
    return endpoint


def add_action_routes(app: FastAPI) -> None:
    for spec in load_all().values():
        extra: dict[str, Any] = {"x-diskci-role": spec.role.value, "x-diskci-destructive": spec.destructive}
        description = f"{spec.description}\n\nRole: **{spec.role.value}** or higher."
        if spec.destructive:
            description += f"\n\n{DESTRUCTIVE_NOTE}"
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
        )


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
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.database = database
    if enqueue is None:
        from diskci.platform.tasks import TaskQueue

        enqueue = TaskQueue(settings, database=database).enqueue_publication
    app.state.ports = Ports(enqueue=enqueue)
    app.add_exception_handler(DiskciError, _diskci_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

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
    add_action_routes(app)
    try:
        netboot = importlib.import_module("diskci.platform.http.netboot")
    except ModuleNotFoundError as exc:
        if exc.name != "diskci.platform.http.netboot":
            raise
    else:
        app.include_router(netboot.router)
    return app
