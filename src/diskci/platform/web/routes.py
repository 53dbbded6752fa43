"""The dashboard's pages: sign-in and sign-out, node platforms, a platform's publications, one
publication (its artifacts, SBOM packages and provenance), and the set-default and mark-critical forms
(each confirmed on a second page).

Every datum comes from the action catalog's ``invoke()`` as the signed-in token's name and role (see
``pages``). Errors are pages with the error's status and text; a page without a session sends the
browser to the sign-in page.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from diskci.errors import DiskciError, InvalidRequest
from diskci.platform.web import session as web_session
from diskci.platform.web.pages import (
    act,
    confirm_page,
    error_page,
    may,
    page,
    read_form,
    status_of,
    templates,
    to_signin,
)

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


def _signin_page(request: Request, status: int = 200, problem: str = "") -> Response:
    csrf = web_session.signin_csrf(request)
    response = templates.TemplateResponse(
        request, "signin.html", {"web": None, "csrf": csrf, "problem": problem}, status_code=status
    )
    web_session.keep_signin_csrf(request, response, csrf)
    return response


@router.get("/signin", response_class=HTMLResponse)
async def signin_form(request: Request) -> Response:
    if web_session.current_session(request) is not None:
        return RedirectResponse("/", status_code=303)
    return _signin_page(request)


@router.post("/signin")
async def signin(request: Request) -> Response:
    try:
        form = await read_form(request)
        web_session.check_csrf(web_session.expected_signin_csrf(request), form)
    except DiskciError as exc:
        return _signin_page(request, status=status_of(exc), problem=str(exc))
    response = RedirectResponse("/", status_code=303)
    try:
        await run_in_threadpool(web_session.sign_in, request, response, form.get("token", "").strip())
    except DiskciError as exc:
        return _signin_page(request, status=status_of(exc), problem=str(exc))
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    try:
        web_session.check_csrf(web.csrf, await read_form(request))
    except DiskciError as exc:
        return error_page(request, web, exc)
    response = to_signin()
    web_session.sign_out(response)
    return response


@router.get("/", response_class=HTMLResponse)
async def platforms(request: Request) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    try:
        listed = await act(request, web, "system_list_node_platforms", {})
        webhooks: dict[str, Any] | None = None
        if may(web, "system_list_disk_image_webhooks"):
            hooks = await act(request, web, "system_list_disk_image_webhooks", {})
            webhooks = {hook.platform: hook for hook in hooks.webhooks}
    except DiskciError as exc:
        return error_page(request, web, exc)
    return page(request, "platforms.html", web, platforms=listed.platforms, webhooks=webhooks)


@router.get("/platforms/{name}", response_class=HTMLResponse)
async def publications(request: Request, name: str) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    try:
        platform = await act(request, web, "system_get_node_platform", {"name": name})
        query = {"platform": name, "limit": 200}
        listed = await act(request, web, "system_list_disk_image_publications", query)
    except DiskciError as exc:
        return error_page(request, web, exc)
    return page(request, "publications.html", web, platform=platform, publications=listed.publications)


@router.get("/publications/{publication_id}", response_class=HTMLResponse)
async def publication(request: Request, publication_id: int) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    try:
        pub = await act(request, web, "system_get_disk_image_publication", {"id": publication_id})
        sbom = await act(request, web, "system_get_disk_image_publication_sbom", {"id": publication_id})
        provenance = await act(
            request, web, "system_get_disk_image_publication_provenance", {"id": publication_id}
        )
    except DiskciError as exc:
        return error_page(request, web, exc)
    return page(
        request,
        "publication.html",
        web,
        pub=pub,
        sbom=sbom,
        provenance=provenance,
        may_set_default=may(web, "system_set_default_disk_image_publication"),
        may_mark_critical=may(web, "system_mark_disk_image_publication_critical"),
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
        return to_signin()
    try:
        if change not in CHANGES:
            raise InvalidRequest(f"unknown change {change!r}: one of {', '.join(CHANGES)}")
        form = await read_form(request)
        web_session.check_csrf(web.csrf, form)
        action, would = CHANGES[change]
        pub = await act(request, web, "system_get_disk_image_publication", {"id": publication_id})
        data: dict[str, Any] = {"publication_id": publication_id}
        if change == "default":
            data["platform"] = pub.platform
        else:
            data["critical"] = form.get("critical", "true") == "true"
        if form.get("confirm") != "yes":
            fields = {"critical": "true" if data["critical"] else "false"} if "critical" in data else {}
            return confirm_page(
                request,
                web,
                title=f"{pub.platform} {pub.version}",
                would=would,
                action=action,
                data=data,
                post_url=f"/publications/{publication_id}/{change}",
                back_url=f"/publications/{publication_id}",
                fields=fields,
            )
        await act(request, web, action, data)
    except DiskciError as exc:
        return error_page(request, web, exc)
    return RedirectResponse(f"/publications/{publication_id}", status_code=303)
