"""The dashboard's pages: sign-in and sign-out, node platforms, a platform's publications, one
publication, and the set-default and mark-critical forms (each confirmed on a second page).

Every datum comes from the action catalog's ``invoke()`` as the signed-in token's name and role, so the
rules are the API's; a page shows a form only when the role allows its action. Errors are pages with the
error's status and text; a page without a session sends the browser to the sign-in page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from diskci.errors import DiskciError, InvalidRequest
from diskci.platform.actions.catalog import get_action, invoke
from diskci.platform.web import session as web_session
from diskci.platform.web.session import WebSession

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

MAX_FORM_FIELD = 4096
MAX_FORM_FIELDS = 32


class InvalidForm(InvalidRequest):
    pass


def _may(web: WebSession, action: str) -> bool:
    """Whether the signed-in role is allowed ``action`` (what decides which forms a page shows)."""
    return web.principal.role.allows(get_action(action).role)


async def _act(request: Request, web: WebSession, action: str, data: dict[str, Any]) -> Any:
    out: BaseModel = await run_in_threadpool(
        invoke,
        action,
        data,
        database=request.app.state.database,
        settings=request.app.state.settings,
        actor=web.actor,
        role=web.principal.role,
        ports=request.app.state.ports,
    )
    return out


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (bounded by the app's body limit), one value a field."""
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        fields = parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError as exc:
        raise InvalidForm(f"the form has more than {MAX_FORM_FIELDS} fields") from exc
    return {key: values[-1][:MAX_FORM_FIELD] for key, values in fields.items()}


def _page(request: Request, name: str, web: WebSession | None, status: int = 200, **context: Any) -> Response:
    context.update(web=web, csrf=web.csrf if web else "")
    return templates.TemplateResponse(request, name, context, status_code=status)


def _status(exc: DiskciError) -> int:
    status: int = getattr(exc, "http_status", 400)
    return status


def _error(request: Request, web: WebSession | None, exc: DiskciError) -> Response:
    status = _status(exc)
    return _page(request, "error.html", web, status=status, error=type(exc).__name__, detail=str(exc))


def _signin_page(request: Request, status: int = 200, problem: str = "") -> Response:
    csrf = web_session.signin_csrf(request)
    response = templates.TemplateResponse(
        request, "signin.html", {"web": None, "csrf": csrf, "problem": problem}, status_code=status
    )
    web_session.keep_signin_csrf(request, response, csrf)
    return response


def _to_signin() -> Response:
    return RedirectResponse("/signin", status_code=303)


@router.get("/signin", response_class=HTMLResponse)
async def signin_form(request: Request) -> Response:
    if web_session.current_session(request) is not None:
        return RedirectResponse("/", status_code=303)
    return _signin_page(request)


@router.post("/signin")
async def signin(request: Request) -> Response:
    try:
        form = await _form(request)
        web_session.check_csrf(web_session.expected_signin_csrf(request), form)
    except DiskciError as exc:
        return _signin_page(request, status=_status(exc), problem=str(exc))
    response = RedirectResponse("/", status_code=303)
    try:
        await run_in_threadpool(web_session.sign_in, request, response, form.get("token", "").strip())
    except DiskciError as exc:
        return _signin_page(request, status=_status(exc), problem=str(exc))
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return _to_signin()
    try:
        web_session.check_csrf(web.csrf, await _form(request))
    except DiskciError as exc:
        return _error(request, web, exc)
    response = _to_signin()
    web_session.sign_out(response)
    return response


@router.get("/", response_class=HTMLResponse)
async def platforms(request: Request) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return _to_signin()
    try:
        listed = await _act(request, web, "system_list_node_platforms", {})
        webhooks: dict[str, Any] | None = None
        if _may(web, "system_list_disk_image_webhooks"):
            hooks = await _act(request, web, "system_list_disk_image_webhooks", {})
            webhooks = {hook.platform: hook for hook in hooks.webhooks}
    except DiskciError as exc:
        return _error(request, web, exc)
    return _page(request, "platforms.html", web, platforms=listed.platforms, webhooks=webhooks)


@router.get("/platforms/{name}", response_class=HTMLResponse)
async def publications(request: Request, name: str) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return _to_signin()
    try:
        platform = await _act(request, web, "system_get_node_platform", {"name": name})
        query = {"platform": name, "limit": 200}
        listed = await _act(request, web, "system_list_disk_image_publications", query)
    except DiskciError as exc:
        return _error(request, web, exc)
    return _page(request, "publications.html", web, platform=platform, publications=listed.publications)


@router.get("/publications/{publication_id}", response_class=HTMLResponse)
async def publication(request: Request, publication_id: int) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return _to_signin()
    try:
        pub = await _act(request, web, "system_get_disk_image_publication", {"id": publication_id})
    except DiskciError as exc:
        return _error(request, web, exc)
    return _page(
        request,
        "publication.html",
        web,
        pub=pub,
        may_set_default=_may(web, "system_set_default_disk_image_publication"),
        may_mark_critical=_may(web, "system_mark_disk_image_publication_critical"),
    )


CHANGES = {
    "default": (
        "system_set_default_disk_image_publication",
        "Make this the platform's default publication: nodes booting the platform get it from now on.",
    ),
    "critical": (
        "system_mark_disk_image_publication_critical",
        "Change whether this publication is critical (critical ones are kept longer by retention).",
    ),
}


@router.post("/publications/{publication_id}/{change}", response_class=HTMLResponse)
async def change_publication(request: Request, publication_id: int, change: str) -> Response:
    """The first post shows what would change and asks to confirm; the confirmed post acts."""
    web = web_session.current_session(request)
    if web is None:
        return _to_signin()
    try:
        if change not in CHANGES:
            raise InvalidRequest(f"unknown change {change!r}: one of {', '.join(CHANGES)}")
        form = await _form(request)
        web_session.check_csrf(web.csrf, form)
        action, would = CHANGES[change]
        pub = await _act(request, web, "system_get_disk_image_publication", {"id": publication_id})
        data: dict[str, Any] = {"publication_id": publication_id}
        if change == "default":
            data["platform"] = pub.platform
        else:
            data["critical"] = form.get("critical", "true") == "true"
        if form.get("confirm") != "yes":
            return _page(
                request, "confirm.html", web, pub=pub, change=change, action=action, would=would, data=data
            )
        await _act(request, web, action, data)
    except DiskciError as exc:
        return _error(request, web, exc)
    return RedirectResponse(f"/publications/{publication_id}", status_code=303)
