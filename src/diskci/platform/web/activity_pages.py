"""The dashboard's read-only activity pages: the nodes (each one's last boot report and the publication
it booted) and the recent events, filtered by type, reason and platform (older pages by ``until``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from diskci.errors import DiskciError, InvalidRequest
from diskci.platform.services.worker_lifecycle import CI_WORKER_MODULE
from diskci.platform.web import session as web_session
from diskci.platform.web.pages import act, error_page, page, to_signin

router = APIRouter(include_in_schema=False)

EVENTS_PAGE = 100
NODES_PAGE = 1000


@router.get("/nodes", response_class=HTMLResponse)
async def nodes(request: Request) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    platform = request.query_params.get("platform") or None
    try:
        query: dict[str, Any] = {"limit": NODES_PAGE}
        if platform is not None:
            query["platform"] = platform
        listed = await act(request, web, "system_list_node_instances", query)
    except DiskciError as exc:
        return error_page(request, web, exc)
    machines = [n for n in listed.instances if CI_WORKER_MODULE not in n.modules]
    return page(request, "nodes.html", web, nodes=machines, platform=platform)


def _values(request: Request, name: str) -> list[str]:
    """A filter's values: repeated fields or one comma-separated field, blanks dropped."""
    out: list[str] = []
    for value in request.query_params.getlist(name):
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


@router.get("/events", response_class=HTMLResponse)
async def events(request: Request) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    types = _values(request, "type")
    reasons = _values(request, "reason")
    platform = request.query_params.get("platform") or None
    until = request.query_params.get("until") or None
    try:
        query: dict[str, Any] = {"limit": EVENTS_PAGE}
        if types:
            query["type"] = types
        if reasons:
            query["reason"] = reasons
        if platform is not None:
            query["platform"] = platform
        if until is not None:
            try:
                datetime.fromisoformat(until)
            except ValueError:
                raise InvalidRequest(f"until: {until!r} is not an ISO time") from None
            query["until"] = until
        listed = await act(request, web, "system_list_recent_events", query)
        platforms = await act(request, web, "system_list_node_platforms", {})
    except DiskciError as exc:
        return error_page(request, web, exc)
    shown = listed.events
    older = shown[-1].created_at.isoformat() if len(shown) == EVENTS_PAGE else None
    return page(
        request,
        "events.html",
        web,
        events=shown,
        types=", ".join(types),
        reasons=", ".join(reasons),
        platform=platform,
        platforms=[p.name for p in platforms.platforms],
        older=older,
    )
