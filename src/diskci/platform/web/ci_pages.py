"""The dashboard's CI pages: the runs (per platform, newest first), one run (its jobs and steps, the log
following as it grows, progress per build stage, cancel), and the CI workers (status, labels, current
job, host statistics, terminate).

A run page follows its run through ``GET /runs/{run_id}/live`` (JSON: the run as
``get_gitea_workflow_run`` gives it, and the new log rows of one job from an offset with the build
stages they report), which ``static/run.js`` polls. Cancelling a run and terminating a worker are
destructive: each is a form whose first post shows ``confirm.html`` and whose confirmed post runs the
action with ``confirmed=True``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from diskci.errors import DiskciError, InvalidRequest, NotFound
from diskci.platform.actions.ci_workers import CiWorkerNotFound
from diskci.platform.web import session as web_session
from diskci.platform.web.build_progress import stage_events
from diskci.platform.web.pages import (
    act,
    confirm_page,
    error_page,
    may,
    page,
    read_form,
    status_of,
    to_signin,
)

router = APIRouter(include_in_schema=False)

RUN_STATUSES = ("queued", "waiting", "in_progress", "completed")
RUNS_PAGE = 50
LOG_PAGE = 500


def _query_int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if not value.isdigit() or len(value) > 10:
        raise InvalidRequest(f"{name}: {value!r} is not a positive whole number")
    return int(value)


@router.get("/runs", response_class=HTMLResponse)
async def runs(request: Request) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    platform = request.query_params.get("platform") or None
    status = request.query_params.get("status") or None
    try:
        if status is not None and status not in RUN_STATUSES:
            raise InvalidRequest(f"status: {status!r} is not one of {', '.join(RUN_STATUSES)}")
        before = _query_int(request, "before")
        query: dict[str, Any] = {"limit": RUNS_PAGE}
        if platform is not None:
            query["node_platform"] = platform
        if status is not None:
            query["status"] = [status]
        if before is not None:
            query["before_id"] = before
        listed = await act(request, web, "system_list_disk_image_ci_runs", query)
        platforms = await act(request, web, "system_list_node_platforms", {})
    except DiskciError as exc:
        return error_page(request, web, exc)
    return page(
        request,
        "runs.html",
        web,
        runs=listed.runs,
        next_before=listed.next_before_id,
        platform=platform,
        run_status=status,
        statuses=RUN_STATUSES,
        platforms=[p.name for p in platforms.platforms],
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run(request: Request, run_id: int) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    try:
        got = await act(request, web, "get_gitea_workflow_run", {"run_id": run_id})
    except DiskciError as exc:
        return error_page(request, web, exc)
    names = [job.name for job in got.jobs]
    chosen = request.query_params.get("job")
    if chosen not in names:
        running = [j.name for j in got.jobs if j.status == "in_progress"]
        chosen = running[0] if running else (names[0] if names else None)
    return page(
        request,
        "run.html",
        web,
        run=got,
        job=chosen,
        may_cancel=may(web, "system_cancel_disk_image_ci_run") and got.status != "completed",
    )


@router.get("/runs/{run_id}/live")
async def run_live(request: Request, run_id: int) -> Response:
    """JSON for the run page's poller: the run, and one job's log rows from ``offset`` with their stages."""
    web = web_session.current_session(request)
    if web is None:
        return JSONResponse({"error": "NotSignedIn", "detail": "not signed in"}, status_code=401)
    try:
        got = await act(request, web, "get_gitea_workflow_run", {"run_id": run_id})
        body: dict[str, Any] = {"run": got.model_dump(mode="json")}
        job = request.query_params.get("job")
        if job:
            offset = _query_int(request, "offset") or 0
            logs = await act(
                request,
                web,
                "get_gitea_job_logs",
                {"run_id": run_id, "job_name": job, "offset": offset, "limit": LOG_PAGE},
            )
            body["log"] = {
                "rows": logs.logs,
                "next_offset": logs.next_offset,
                "complete": logs.complete,
                "stages": [event.to_json() for event in stage_events(logs.logs)],
            }
    except DiskciError as exc:
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status_of(exc))
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.post("/runs/{run_id}/cancel", response_class=HTMLResponse)
async def cancel_run(request: Request, run_id: int) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    action = "system_cancel_disk_image_ci_run"
    try:
        form = await read_form(request)
        web_session.check_csrf(web.csrf, form)
        got = await act(request, web, "get_gitea_workflow_run", {"run_id": run_id})
        data = {"run_id": run_id}
        if form.get("confirm") != "yes":
            unfinished = [j.name for j in got.jobs if j.status != "completed"]
            return confirm_page(
                request,
                web,
                title=f"cancel run {run_id} ({got.platform} {got.ref})",
                would=(
                    "Cancel this run: its unfinished jobs end cancelled"
                    + (f" ({', '.join(unfinished)})" if unfinished else "")
                    + "; a CI worker running one stops it."
                ),
                action=action,
                data=data,
                post_url=f"/runs/{run_id}/cancel",
                back_url=f"/runs/{run_id}",
            )
        await act(request, web, action, data, confirmed=True)
    except DiskciError as exc:
        return error_page(request, web, exc)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


# --- CI workers ----------------------------------------------------------------------------------------


async def _host_stats(request: Request, web: web_session.WebSession, instance_id: int) -> Any:
    """The worker's host statistics, or the reason there are none (a string)."""
    try:
        stats = await act(request, web, "system_get_instance_stats", {"instance_id": instance_id})
    except NotFound as exc:
        return str(exc)
    return stats.worker


@router.get("/workers", response_class=HTMLResponse)
async def workers(request: Request) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    include_terminated = request.query_params.get("terminated") == "1"
    try:
        listed = await act(request, web, "system_list_ci_workers", {"include_terminated": include_terminated})
        stats = {}
        for worker in listed.workers:
            if worker.status not in ("terminated", "failed"):
                stats[worker.id] = await _host_stats(request, web, worker.id)
    except DiskciError as exc:
        return error_page(request, web, exc)
    return page(
        request,
        "workers.html",
        web,
        workers=listed.workers,
        stats=stats,
        include_terminated=include_terminated,
        may_terminate=may(web, "system_terminate_ci_worker"),
    )


@router.post("/workers/{instance_id}/terminate", response_class=HTMLResponse)
async def terminate_worker(request: Request, instance_id: int) -> Response:
    web = web_session.current_session(request)
    if web is None:
        return to_signin()
    action = "system_terminate_ci_worker"
    try:
        form = await read_form(request)
        web_session.check_csrf(web.csrf, form)
        listed = await act(request, web, "system_list_ci_workers", {"include_terminated": True})
        worker = next((w for w in listed.workers if w.id == instance_id), None)
        if worker is None:
            raise CiWorkerNotFound(f"no CI worker with id {instance_id}")
        data = {"id": instance_id}
        if form.get("confirm") != "yes":
            job = worker.current_job
            return confirm_page(
                request,
                web,
                title=f"terminate CI worker {worker.hostname}",
                would=(
                    f"Terminate {worker.hostname}: its runner's token stops working now"
                    + (f", its job {job.job_name} of run {job.run_id} is cancelled" if job else "")
                    + ", then its provider destroys the machine."
                ),
                action=action,
                data=data,
                post_url=f"/workers/{instance_id}/terminate",
                back_url="/workers",
            )
        await act(request, web, action, data, confirmed=True)
    except DiskciError as exc:
        return error_page(request, web, exc)
    return RedirectResponse("/workers", status_code=303)
