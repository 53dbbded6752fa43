"""A test double of Gitea's Actions REST API (FastAPI), for ``GiteaClient``'s tests and bench/gitea.py.

``FakeGitea(version=..., cancel=...)`` follows Gitea's documented API (routers/api/v1 and its swagger,
1.22–1.25) in what diskci calls, and nothing more:

- ``GET /api/v1/version``; ``/swagger.v1.json`` listing exactly the routes this fake serves for its
  version (``serve_swagger=False`` answers 404 there, as ``ENABLE_SWAGGER=false`` does);
- ``Authorization: token T`` (or ``Bearer T``) on every other call: 401 ``{"message", "url"}`` otherwise;
- registration tokens per scope (repository, organization, instance): ``GET`` before 1.24 (the
  instance's at ``/admin/runners/registration-token``), ``POST`` from 1.24 (``/admin/actions/...``),
  the same reusable token each time;
- runners from 1.24: list ``{"runners", "total_count"}`` (page/limit, no Link header, as Gitea), get,
  delete (204; 404 ``Runner not found``), with the status a test sets (online/offline, busy);
- workflow dispatch from 1.24: 204 and no run id; 422 without a ref or for an unknown ref, 404 for an
  unknown workflow; it makes a ``workflow_dispatch`` run at the ref's commit, as Gitea does;
- runs and jobs from 1.25 (runs newest first, filters event/branch/status/actor/head_sha; jobs in id
  order), job logs from 1.24 as ``text/plain`` (404 before a job has a log);
- pagination as Gitea's: ``page`` (1-based), ``limit`` (default 30, at most 50), a ``Link`` header
  (next/last/first/prev, absolute on ``app_url`` like Gitea's ROOT_URL) and ``X-Total-Count``;
- errors as Gitea's ``{"message": ..., "url": ...}``, an unknown route included;
- cancel (``POST .../actions/runs/{run}/cancel``: 200, 404, 409 for a completed run) only when
  ``cancel=True``: Gitea through 1.26 has none, its 1.28 development line adds it.

Fault knobs: ``fail_next(n, status=500)`` answers the next n calls with that status and Gitea's error
body; ``set_delay(seconds, count=None)`` holds every answer (or the next ``count``) that long before
handling it (a client's timeout; the call still takes effect, as on a slow Gitea); both can be
limited to paths containing a string. ``requests`` records each call (method, path) for asserting retries.
Tests add repositories, runs, jobs, logs and runners directly (``add_*``, ``set_*``, ``set_steps``);
``delivery(event, id)`` is the body Gitea's webhook would post for a run (``workflow_run``) or a job
(``workflow_job``), in the REST API's shapes; this fake sends no webhooks itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from loopback import free_port
from starlette.exceptions import HTTPException as StarletteHTTPException

from polling import wait_until

SWAGGER_URL = "https://gitea.example.invalid/api/swagger"
EPOCH = "1970-01-01T00:00:00Z"
DEFAULT_LIMIT, MAX_LIMIT = 30, 50


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gitea_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message, "url": SWAGGER_URL}, status_code=status)


@dataclass
class FakeRepo:
    owner: str
    name: str
    refs: dict[str, str]  # full ref → commit
    workflows: dict[str, list[str]]  # file name → job names


@dataclass
class FakeRunner:
    id: int
    name: str
    scope: tuple[str, ...]  # ("repo", owner, repo) | ("org", org) | ("instance",)
    status: str = "online"
    busy: bool = False
    labels: list[str] = field(default_factory=lambda: ["ubuntu-latest"])

    def json(self) -> dict[str, Any]:
        labels = [{"id": i + 1, "name": n, "type": "custom"} for i, n in enumerate(self.labels)]
        return {"id": self.id, "name": self.name, "status": self.status, "busy": self.busy,
                "ephemeral": False, "labels": labels}  # fmt: skip


class FakeGitea:
    """The double's state and its FastAPI app (``app``); see the module's list of behaviours."""

    def __init__(
        self,
        *,
        version: str = "1.25.0",
        cancel: bool = False,
        serve_swagger: bool = True,
        token: str = "fake-gitea-token",
        app_url: str = "https://gitea.example.invalid/",
    ) -> None:
        self.version = version
        self.cancel = cancel
        self.serve_swagger = serve_swagger
        self.token = token
        self.app_url = app_url
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.orgs: set[str] = set()
        self.runners: dict[int, FakeRunner] = {}
        self.runs: dict[int, dict[str, Any]] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.logs: dict[int, str] = {}
        self.registration_tokens: dict[tuple[str, ...], str] = {}
        self.requests: list[tuple[str, str]] = []
        self._faults: list[tuple[int, str]] = []  # (status, path part), one per call to fail
        self._delay: tuple[float, str, int | None] = (0.0, "", None)
        self._ids = itertools.count(1)
        major, minor = (int(p) for p in version.split(".")[:2])
        self._at_least = lambda a, b: (major, minor) >= (a, b)
        self.app = self._build_app()

    # --- what tests set up ---------------------------------------------------------------------------

    def add_repo(self, owner: str, name: str, *, refs: dict[str, str] | None = None,
                 workflows: dict[str, list[str]] | None = None) -> FakeRepo:  # fmt: skip
        repo = FakeRepo(owner, name, refs or {"refs/heads/main": _sha(f"{owner}/{name}@main")},
                        workflows or {"build.yaml": ["build"]})  # fmt: skip
        self.repos[(owner, name)] = repo
        return repo

    def add_org(self, name: str) -> None:
        self.orgs.add(name)

    def add_runner(self, name: str, *scope: str, status: str = "online", busy: bool = False,
                   labels: list[str] | None = None) -> int:  # fmt: skip
        runner = FakeRunner(next(self._ids), name, tuple(scope) or ("instance",), status, busy,
                            labels or ["ubuntu-latest"])  # fmt: skip
        self.runners[runner.id] = runner
        return runner.id

    def set_runner_status(self, runner_id: int, status: str, *, busy: bool = False) -> None:
        self.runners[runner_id].status = status
        self.runners[runner_id].busy = busy

    def add_run(self, owner: str, repo: str, *, workflow: str = "build.yaml", ref: str = "refs/heads/main",
                event: str = "push", head_sha: str | None = None, actor: str = "ops") -> int:  # fmt: skip
        with self.lock:
            return self._new_run(self.repos[(owner, repo)], workflow, ref, event, head_sha, actor)

    def _new_run(self, repo: FakeRepo, workflow: str, ref: str, event: str, head_sha: str | None,
                 actor: str) -> int:  # fmt: skip
        run_id = next(self._ids)
        number = 1 + sum(1 for r in self.runs.values() if r["_repo"] == (repo.owner, repo.name))
        sha = head_sha or repo.refs.get(ref) or _sha(ref)
        branch = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
        api = f"{self.app_url}api/v1/repos/{repo.owner}/{repo.name}/actions/runs/{run_id}"
        html = f"{self.app_url}{repo.owner}/{repo.name}"
        self.runs[run_id] = {
            "id": run_id, "url": api, "html_url": f"{html}/actions/runs/{number}",
            "display_title": f"{workflow} on {branch}", "path": f"{workflow}@{ref}", "event": event,
            "run_attempt": 1, "run_number": number, "repository_id": 1, "head_sha": sha,
            "head_branch": branch,
            "status": "queued", "conclusion": "", "started_at": EPOCH, "completed_at": EPOCH,
            "actor": {"login": actor}, "trigger_actor": {"login": actor},
            "repository": {"full_name": f"{repo.owner}/{repo.name}"}, "_repo": (repo.owner, repo.name),
        }  # fmt: skip
        for job_name in repo.workflows.get(workflow, ["build"]):
            job_id = next(self._ids)
            self.jobs[job_id] = {
                "id": job_id, "url": f"{api}/jobs/{job_id}", "html_url": "", "run_id": run_id, "run_url": api,
                "name": job_name, "labels": ["ubuntu-latest"], "run_attempt": 1, "head_sha": sha,
                "head_branch": branch, "status": "queued", "conclusion": "", "runner_id": 0,
                "runner_name": "", "steps": [], "created_at": _now(), "started_at": EPOCH,
                "completed_at": EPOCH,
            }  # fmt: skip
        return run_id

    def job_ids(self, run_id: int) -> list[int]:
        return sorted(j for j, job in self.jobs.items() if job["run_id"] == run_id)

    def set_job(self, job_id: int, *, status: str, conclusion: str = "", log: str | None = None,
                runner_id: int = 0) -> None:  # fmt: skip
        with self.lock:
            job = self.jobs[job_id]
            job.update(status=status, conclusion=conclusion if status == "completed" else "")
            if status != "queued" and job["started_at"] == EPOCH:
                job["started_at"] = _now()
            if status == "completed":
                job["completed_at"] = _now()
            if runner_id:
                job.update(runner_id=runner_id, runner_name=self.runners[runner_id].name)
            if log is not None:
                self.logs[job_id] = log
            self._roll_up(job["run_id"])

    def _roll_up(self, run_id: int) -> None:
        """The run's status from its jobs', as Gitea derives it."""
        run, jobs = self.runs[run_id], [self.jobs[j] for j in self.job_ids(run_id)]
        if all(j["status"] == "completed" for j in jobs):
            conclusions = {j["conclusion"] for j in jobs}
            run["status"], run["completed_at"] = "completed", _now()
            run["conclusion"] = next((c for c in ("failure", "cancelled") if c in conclusions), "success")
        elif any(j["status"] != "queued" for j in jobs):
            run["status"] = "in_progress"
            if run["started_at"] == EPOCH:
                run["started_at"] = _now()

    def set_steps(self, job_id: int, steps: list[tuple[str, str, str]]) -> None:
        """A job's steps as (name, status, conclusion), numbered from 1."""
        with self.lock:
            self.jobs[job_id]["steps"] = [
                {"name": name, "number": i + 1, "status": status, "conclusion": conclusion,
                 "started_at": _now(), "completed_at": _now() if status == "completed" else EPOCH}
                for i, (name, status, conclusion) in enumerate(steps)
            ]  # fmt: skip

    def delivery(self, event: str, object_id: int, *, action: str = "") -> dict[str, Any]:
        """The body of Gitea's ``workflow_run`` (object_id: a run) or ``workflow_job`` (a job) webhook."""
        with self.lock:
            if event == "workflow_run":
                run = self.runs[object_id]
                body = {k: v for k, v in run.items() if not k.startswith("_")}
                owner, repo = run["_repo"]
                key, action = (
                    "workflow_run",
                    action or ("completed" if run["status"] == "completed" else "requested"),
                )
            else:
                job = dict(self.jobs[object_id])
                owner, repo = self.runs[job["run_id"]]["_repo"]
                key, body, action = "workflow_job", job, action or job["status"]
        return {"action": action, key: body, "repository": {"full_name": f"{owner}/{repo}"},
                "sender": {"login": "ops"}}  # fmt: skip

    def fail_next(self, count: int, *, status: int = 500, path_contains: str = "") -> None:
        with self.lock:
            self._faults.extend([(status, path_contains)] * count)

    def set_delay(self, seconds: float, *, path_contains: str = "", count: int | None = None) -> None:
        """Hold answers ``seconds`` long: every one, or the next ``count`` (of paths containing a string)."""
        self._delay = (seconds, path_contains, count)

    def calls(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.requests if m == method and path_part in p)

    # --- the HTTP API ---------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.exception_handler(StarletteHTTPException)
        async def _gitea_shaped(_request: Request, exc: StarletteHTTPException) -> Response:
            return gitea_error(exc.status_code, "not found" if exc.status_code == 404 else str(exc.detail))

        @app.exception_handler(RequestValidationError)
        async def _unparsable(_request: Request, _exc: RequestValidationError) -> Response:
            return gitea_error(404, "not found")  # Gitea reads a non-numeric id as 0: nothing has it

        @app.middleware("http")
        async def _faults_and_auth(request: Request, call_next: Any) -> Response:
            path = request.url.path
            self.requests.append((request.method, path))
            delay, delay_part, left = self._delay
            if delay and delay_part in path and left != 0:
                self._delay = (delay, delay_part, None if left is None else left - 1)
                await request.body()  # read before the client gives up: the call still takes effect
                await asyncio.sleep(delay)
            with self.lock:
                fault = next((f for f in self._faults if f[1] in path), None)
                if fault is not None:
                    self._faults.remove(fault)
            if fault is not None:
                return gitea_error(fault[0], "fake Gitea: injected failure")
            if path.startswith("/api/v1/") and path != "/api/v1/version":
                scheme, _, presented = request.headers.get("authorization", "").partition(" ")
                if not presented:
                    return gitea_error(401, "token is required")
                if scheme.lower() not in ("token", "bearer") or presented != self.token:
                    return gitea_error(401, "user does not exist [uid: 0, name: ]")
            response: Response = await call_next(request)
            return response

        app.add_api_route("/api/v1/version", lambda: {"version": self.version}, methods=["GET"])
        app.add_api_route("/swagger.v1.json", self._swagger, methods=["GET"])
        self._token_routes(app)
        if self._at_least(1, 24):
            self._runner_routes(app)
            app.add_api_route("/api/v1/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches",
                              self._dispatch, methods=["POST"])  # fmt: skip
            app.add_api_route("/api/v1/repos/{owner}/{repo}/actions/jobs/{job_id}/logs", self._job_logs,
                              methods=["GET"])  # fmt: skip
        if self._at_least(1, 25):
            base = "/api/v1/repos/{owner}/{repo}/actions"
            app.add_api_route(f"{base}/runs", self._list_runs, methods=["GET"])
            app.add_api_route(f"{base}/runs/{{run}}", self._get_run, methods=["GET"])
            app.add_api_route(f"{base}/runs/{{run}}/jobs", self._list_jobs, methods=["GET"])
            app.add_api_route(f"{base}/jobs/{{job_id}}", self._get_job, methods=["GET"])
        if self.cancel:
            app.add_api_route("/api/v1/repos/{owner}/{repo}/actions/runs/{run}/cancel", self._cancel,
                              methods=["POST"])  # fmt: skip
        return app

    def _swagger(self) -> Response:
        if not self.serve_swagger:
            return gitea_error(404, "not found")
        paths: dict[str, dict[str, Any]] = {}
        for route in self.app.routes:
            path = getattr(route, "path", "")
            if path.startswith("/api/v1/"):
                for method in getattr(route, "methods", ()):
                    paths.setdefault(path.removeprefix("/api/v1"), {})[method.lower()] = {}
        return JSONResponse({"swagger": "2.0", "basePath": "/api/v1", "paths": paths,
                             "info": {"version": self.version}})  # fmt: skip

    def _repo(self, owner: str, repo: str) -> FakeRepo | None:
        return self.repos.get((owner, repo))

    def _token(self, scope: tuple[str, ...]) -> Response:
        if scope[0] == "repo" and (scope[1], scope[2]) not in self.repos:
            return gitea_error(404, "not found")
        if scope[0] == "org" and scope[1] not in self.orgs:
            return gitea_error(404, "not found")
        token = self.registration_tokens.setdefault(scope, secrets.token_hex(20))
        return JSONResponse({"token": token})

    def _token_routes(self, app: FastAPI) -> None:
        repo_path = "/api/v1/repos/{owner}/{repo}/actions/runners/registration-token"
        org_path = "/api/v1/orgs/{org}/actions/runners/registration-token"

        def repo_token(owner: str, repo: str) -> Response:
            return self._token(("repo", owner, repo))

        def org_token(org: str) -> Response:
            return self._token(("org", org))

        def instance_token() -> Response:
            return self._token(("instance",))

        app.add_api_route(repo_path, repo_token, methods=["GET"])  # deprecated from 1.24, still served
        app.add_api_route(org_path, org_token, methods=["GET"])
        app.add_api_route("/api/v1/admin/runners/registration-token", instance_token, methods=["GET"])
        if self._at_least(1, 24):
            app.add_api_route(repo_path, repo_token, methods=["POST"])
            app.add_api_route(org_path, org_token, methods=["POST"])
            app.add_api_route("/api/v1/admin/actions/runners/registration-token", instance_token,
                              methods=["POST"])  # fmt: skip

    def _runner_routes(self, app: FastAPI) -> None:
        def listing(request: Request, scope: tuple[str, ...]) -> Response:
            page, limit = _paging(request)
            found = [r for r in sorted(self.runners.values(), key=lambda r: r.id) if r.scope == scope]
            rows = found[(page - 1) * limit : page * limit]
            return JSONResponse({"runners": [r.json() for r in rows], "total_count": len(found)})

        def one(scope: tuple[str, ...], runner_id: int, delete: bool) -> Response:
            runner = self.runners.get(runner_id)
            if runner is None or runner.scope != scope:
                return gitea_error(404, "Runner not found")
            if delete:
                del self.runners[runner_id]
                return Response(status_code=204)
            return JSONResponse(runner.json())

        def repo_list(request: Request, owner: str, repo: str) -> Response:
            return (
                listing(request, ("repo", owner, repo))
                if self._repo(owner, repo)
                else gitea_error(404, "not found")
            )

        def repo_one(request: Request, owner: str, repo: str, runner_id: int) -> Response:
            if not self._repo(owner, repo):
                return gitea_error(404, "not found")
            return one(("repo", owner, repo), runner_id, request.method == "DELETE")

        def org_list(request: Request, org: str) -> Response:
            return listing(request, ("org", org))

        def org_one(request: Request, org: str, runner_id: int) -> Response:
            return one(("org", org), runner_id, request.method == "DELETE")

        def instance_list(request: Request) -> Response:
            return listing(request, ("instance",))

        def instance_one(request: Request, runner_id: int) -> Response:
            return one(("instance",), runner_id, request.method == "DELETE")

        for prefix, lister, getter in (
            ("/api/v1/repos/{owner}/{repo}/actions/runners", repo_list, repo_one),
            ("/api/v1/orgs/{org}/actions/runners", org_list, org_one),
            ("/api/v1/admin/actions/runners", instance_list, instance_one),
        ):
            app.add_api_route(prefix, lister, methods=["GET"])
            app.add_api_route(prefix + "/{runner_id}", getter, methods=["GET", "DELETE"])

    async def _dispatch(self, request: Request, owner: str, repo: str, workflow: str) -> Response:
        found = self._repo(owner, repo)
        if found is None:
            return gitea_error(404, "not found")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return gitea_error(422, "[]: invalid JSON body")
        ref = body.get("ref") or ""
        if not ref:
            return gitea_error(422, "ref is required parameter")
        if workflow not in found.workflows:
            return gitea_error(404, f"workflow {workflow!r} not found")
        full = ref if ref.startswith("refs/") else next(
            (r for r in (f"refs/heads/{ref}", f"refs/tags/{ref}") if r in found.refs), ref
        )  # fmt: skip
        if full not in found.refs:
            return gitea_error(422, f"ref {ref!r} does not exist")
        with self.lock:
            self._new_run(found, workflow, full, "workflow_dispatch", None, "diskci")
        return Response(status_code=204)

    def _list_runs(self, request: Request, owner: str, repo: str) -> Response:
        if not self._repo(owner, repo):
            return gitea_error(404, "not found")
        q = request.query_params
        runs = [r for r in sorted(self.runs.values(), key=lambda r: -r["id"]) if r["_repo"] == (owner, repo)]
        if q.get("event"):
            runs = [r for r in runs if r["event"] == q["event"]]
        if q.get("branch"):
            runs = [r for r in runs if r["path"].endswith(f"@refs/heads/{q['branch']}")]
        if q.get("head_sha"):
            runs = [r for r in runs if r["head_sha"] == q["head_sha"]]
        if q.get("actor"):
            runs = [r for r in runs if r["actor"]["login"] == q["actor"]]
        if q.get("status"):
            wanted = q["status"]
            if wanted in ("queued", "waiting", "in_progress", "completed"):
                runs = [r for r in runs if r["status"] == wanted]
            elif wanted in ("success", "failure", "cancelled", "skipped"):
                runs = [r for r in runs if r["conclusion"] == wanted]
            else:
                return gitea_error(400, f"Invalid status {wanted}")
        return self._page(request, "workflow_runs", runs)

    def _page(self, request: Request, key: str, rows: list[dict[str, Any]]) -> Response:
        page, limit = _paging(request)
        chosen = [{k: v for k, v in row.items() if not k.startswith("_")} for row in
                  rows[(page - 1) * limit : page * limit]]  # fmt: skip
        total, pages = len(rows), max(1, -(-len(rows) // limit))
        links = []

        def link(number: int, rel: str) -> str:
            query = {**dict(request.query_params), "page": str(number)}
            return f'<{self.app_url}{request.url.path.lstrip("/")}?{urlencode(query)}>; rel="{rel}"'

        if page < pages:
            links += [link(page + 1, "next"), link(pages, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        headers = {"X-Total-Count": str(total)}
        if links:
            headers["Link"] = ",".join(links)
        return JSONResponse({key: chosen, "total_count": total}, headers=headers)

    def _get_run(self, owner: str, repo: str, run: int) -> Response:
        found = self.runs.get(run)
        if found is None or found["_repo"] != (owner, repo):
            return gitea_error(404, "run not found")
        return JSONResponse({k: v for k, v in found.items() if not k.startswith("_")})

    def _list_jobs(self, request: Request, owner: str, repo: str, run: int) -> Response:
        found = self.runs.get(run)
        if found is None or found["_repo"] != (owner, repo):
            return gitea_error(404, "run not found")
        return self._page(request, "jobs", [self.jobs[j] for j in self.job_ids(run)])

    def _get_job(self, owner: str, repo: str, job_id: int) -> Response:
        job = self.jobs.get(job_id)
        if job is None or self.runs[job["run_id"]]["_repo"] != (owner, repo):
            return gitea_error(404, "not found")
        return JSONResponse(job)

    def _job_logs(self, owner: str, repo: str, job_id: int) -> Response:
        job = self.jobs.get(job_id)
        if job is None or self.runs[job["run_id"]]["_repo"] != (owner, repo):
            return gitea_error(404, "not found")
        if job_id not in self.logs:
            return gitea_error(404, "job logs not found")
        return PlainTextResponse(self.logs[job_id])

    def _cancel(self, owner: str, repo: str, run: int) -> Response:
        found = self.runs.get(run)
        if found is None or found["_repo"] != (owner, repo):
            return gitea_error(404, "Run not found")
        if found["status"] == "completed":
            return gitea_error(409, "run is already completed")
        with self.lock:
            for job_id in self.job_ids(run):
                if self.jobs[job_id]["status"] != "completed":
                    self.jobs[job_id].update(status="completed", conclusion="cancelled", completed_at=_now())
            self._roll_up(run)
        return Response(status_code=200)


def _paging(request: Request) -> tuple[int, int]:
    """Gitea's ``page`` (1-based) and ``limit`` (default 30, at most 50)."""

    def number(name: str, default: int) -> int:
        try:
            return int(request.query_params.get(name, default))
        except ValueError:
            return default

    page, limit = max(number("page", 1), 1), number("limit", DEFAULT_LIMIT)
    return page, DEFAULT_LIMIT if limit <= 0 else min(limit, MAX_LIMIT)


@contextlib.contextmanager
def served(fake: FakeGitea) -> Iterator[str]:
    """``fake`` on a free loopback port in a thread; yields its root URL."""
    port = free_port()
    config = uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, interval=0.05, what="the fake Gitea to serve")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
