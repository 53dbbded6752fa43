"""What every dashboard page module shares: the templates (with their filters), running an action as the
signed-in token, reading a form, and rendering a page, an error page or a confirmation page.

Every datum comes from the action catalog's ``invoke()`` as the session's token name and role, so the
rules are the API's; ``may`` says whether the role allows an action (what decides which forms a page
shows). A destructive action runs only from a form that was confirmed on ``confirm.html`` (the catalog
then gets ``confirmed=True``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from diskci.errors import DiskciError, InvalidRequest
from diskci.platform.actions.catalog import get_action, invoke
from diskci.platform.web.session import WebSession

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

MAX_FORM_FIELD = 4096
MAX_FORM_FIELDS = 32


class InvalidForm(InvalidRequest):
    pass


def duration(seconds: float | None) -> str:
    """``3725.2`` → ``1 h 2 min``; ``75`` → ``1 min 15 s``; None → ``—``."""
    if seconds is None:
        return "—"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{seconds:.1f} s" if seconds < 10 else f"{secs} s"


def size(value: int | float | None) -> str:
    """Bytes in binary units: ``1536`` → ``1.5 KiB``."""
    if value is None:
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def when(value: datetime | None) -> str:
    """A time as ``2026-11-30 12:00:05`` (UTC), or ``—``."""
    if value is None:
        return "—"
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters.update(duration=duration, size=size, when=when)


def may(web: WebSession, action: str) -> bool:
    """Whether the signed-in role is allowed ``action``."""
    return web.principal.role.allows(get_action(action).role)


async def act(
    request: Request, web: WebSession, action: str, data: dict[str, Any], *, confirmed: bool = False
) -> Any:
    """Run ``action`` through the catalog as the session's token (in a worker thread)."""
    out: BaseModel = await run_in_threadpool(
        lambda: invoke(
            action,
            data,
            database=request.app.state.database,
            settings=request.app.state.settings,
            actor=web.actor,
            role=web.principal.role,
            confirmed=confirmed,
            ports=request.app.state.ports,
        )
    )
    return out


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (bounded by the app's body limit), one value a field."""
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        fields = parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError as exc:
        raise InvalidForm(f"the form has more than {MAX_FORM_FIELDS} fields") from exc
    return {key: values[-1][:MAX_FORM_FIELD] for key, values in fields.items()}


def page(request: Request, name: str, web: WebSession | None, status: int = 200, **context: Any) -> Response:
    context.update(web=web, csrf=web.csrf if web else "")
    return templates.TemplateResponse(request, name, context, status_code=status)


def status_of(exc: DiskciError) -> int:
    status: int = getattr(exc, "http_status", 400)
    return status


def error_page(request: Request, web: WebSession | None, exc: DiskciError) -> Response:
    return page(request, "error.html", web, status=status_of(exc), error=type(exc).__name__, detail=str(exc))


def to_signin() -> Response:
    return RedirectResponse("/signin", status_code=303)


def confirm_page(
    request: Request,
    web: WebSession,
    *,
    title: str,
    would: str,
    action: str,
    data: dict[str, Any],
    post_url: str,
    back_url: str,
    fields: dict[str, str] | None = None,
) -> Response:
    """The second step of a change: what it would do, and a form that posts it again with confirm=yes."""
    return page(
        request,
        "confirm.html",
        web,
        title=title,
        would=would,
        action=action,
        data=data,
        post_url=post_url,
        back_url=back_url,
        fields=fields or {},
    )
