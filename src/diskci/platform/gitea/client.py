"""``GiteaClient``: Gitea's Actions REST API (1.22–1.25 and later) over httpx, with diskci's errors.

Every call sends ``Authorization: token <token>`` to ``<url>/api/v1``, with a connect and a read
timeout. What Gitea answers becomes a value (``models``) or a diskci error:

- unreachable, timed out, or 5xx (and 429): an idempotent call (GET, DELETE, and the POSTs that
  are safe to repeat: a registration token, a cancel) is tried again with exponential back-off
  (``RetryPolicy``), then ``GiteaUnavailable`` (503). A call that must not run twice (dispatch) is
  retried only when the request provably never left (connect errors); otherwise it raises
  ``GiteaOutcomeUnknown`` at once: it may have taken effect.
- 4xx: ``GiteaRefused`` carrying Gitea's status and ``{"message", "url"}`` body: 401/403
  ``GiteaTokenRefused``, 404 ``GiteaNotFound`` (``GiteaRunnerNotFound`` for a runner), 400/422
  ``GiteaInvalidRequest``.
- an answer that is not what the API documents: ``GiteaBadAnswer`` (502).
- an endpoint this Gitea version lacks: ``GiteaUnsupported`` (501), before anything is sent.
(The error classes and the reading of answers live in ``answers``; this module re-exports them.)

The version (``GET /api/v1/version``) decides the registration-token call (POST from 1.24, GET
before), and whether runners (1.24), dispatch (1.24), job logs (1.24) and runs/jobs (1.25) exist.
Cancel is not assumed from the version: ``cancel_supported()`` reads the server's own API document
(``/swagger.v1.json``); where that is not served, the first cancel's answer decides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from diskci.errors import UsageError
from diskci.platform.gitea.answers import (
    GiteaBadAnswer,
    GiteaInvalidRequest,
    GiteaNotFound,
    GiteaOutcomeUnknown,
    GiteaRefused,
    GiteaRunnerNotFound,
    GiteaTokenRefused,
    GiteaUnavailable,
    GiteaUnsupported,
    gitea_message,
    next_page,
    no_cancel,
    parse_json,
    refusal,
    to_model,
    total_count,
)
from diskci.platform.gitea.models import (
    DispatchTicket,
    GiteaVersion,
    Runner,
    RunnerScope,
    WorkflowJob,
    WorkflowRun,
)

__all__ = [
    "CANCEL_PATH",
    "GiteaBadAnswer",
    "GiteaClient",
    "GiteaInvalidRequest",
    "GiteaNotFound",
    "GiteaOutcomeUnknown",
    "GiteaRefused",
    "GiteaRunnerNotFound",
    "GiteaTokenRefused",
    "GiteaUnavailable",
    "GiteaUnsupported",
    "RetryPolicy",
]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
SWAGGER_PATH = "/swagger.v1.json"
CANCEL_PATH = "/repos/{owner}/{repo}/actions/runs/{run}/cancel"  # as Gitea's API document names it
PAGE_SIZE = 50  # Gitea's default MAX_RESPONSE_ITEMS: a larger limit is cut to it
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, a call that may succeed later is tried (bounded)."""

    attempts: int = 4
    first_delay: float = 0.25
    max_delay: float = 4.0

    def delays(self) -> list[float]:
        return [min(self.first_delay * 2**i, self.max_delay) for i in range(max(self.attempts, 1) - 1)]


class GiteaClient:
    """Calls against one Gitea instance at ``url`` (its root URL, as in ``ROOT_URL``)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 15.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        page_size: int = PAGE_SIZE,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        root = url.strip().rstrip("/").removesuffix(API_PREFIX)
        if not root.startswith(("http://", "https://")):
            raise UsageError(f"Gitea URL {url!r} is not an http(s) URL")
        if not token.strip():
            raise UsageError("a Gitea API token is needed (Authorization: token ...)")
        if not 1 <= page_size <= PAGE_SIZE:
            raise UsageError(f"page_size must be 1..{PAGE_SIZE}, not {page_size}")
        self.url = root
        self.retry = retry or RetryPolicy()
        self.page_size = page_size
        self._sleep = sleep
        self._version: GiteaVersion | None = None
        self._cancel: bool | None = None
        self._http = httpx.Client(
            base_url=root,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers={"Authorization": f"token {token.strip()}", "Accept": "application/json"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GiteaClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        idempotent: bool = True,
        api: bool = True,
    ) -> tuple[httpx.Response, bool]:
        """The first answer below 500 (and not 429), and whether an earlier try may have reached Gitea."""
        call = f"{method} {path}"
        url = (API_PREFIX if api else "") + path
        delays = self.retry.delays()
        maybe_applied = False
        for attempt in range(len(delays) + 1):
            try:
                response = self._http.request(method, url, params=params, json=body)
            except _NOT_SENT as exc:
                failure = GiteaUnavailable(
                    f"{call}: cannot reach Gitea at {self.url}: {exc or type(exc).__name__}"
                )
                failure.__cause__ = exc
            except httpx.TransportError as exc:
                what = "timed out" if isinstance(exc, httpx.TimeoutException) else f"failed: {exc}"
                if not idempotent:
                    raise GiteaOutcomeUnknown(
                        f"{call} {what} after it was sent: Gitea may have done it",
                        hint="Look for its effect before trying again.",
                    ) from exc
                maybe_applied = True
                failure = GiteaUnavailable(f"{call} {what} ({self.url})")
                failure.__cause__ = exc
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return response, maybe_applied
                message = gitea_message(response)
                if not idempotent:
                    raise GiteaOutcomeUnknown(
                        f"{call}: Gitea answered {response.status_code}: {message}; it may have done it",
                        hint="Look for its effect before trying again.",
                    )
                maybe_applied = True
                failure = GiteaUnavailable(f"{call}: Gitea answered {response.status_code}: {message}")
            if attempt == len(delays):
                raise failure
            log.warning("%s (try %d); again in %.2f s", failure.message, attempt + 1, delays[attempt])
            self._sleep(delays[attempt])
        raise AssertionError("unreachable")

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        idempotent: bool = True,
        ok: tuple[int, ...] = (200,),
        not_found: type[GiteaNotFound] = GiteaNotFound,
    ) -> httpx.Response:
        response, _ = self._send(method, path, params=params, body=body, idempotent=idempotent)
        if response.status_code not in ok:
            raise refusal(f"{method} {path}", response, not_found)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._call(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise GiteaBadAnswer(f"{method} {path}: the answer is not JSON") from exc

    def _paginate(self, path: str, key: str, params: Mapping[str, str | int], limit: int | None) -> list[Any]:
        """Every item of a paged list: pages of ``page_size``, the next page named by the ``Link``
        header's ``rel="next"`` (only its page number: Gitea builds the link from ROOT_URL, which may
        not be the address diskci reaches it at), else while ``X-Total-Count`` says more remain."""
        items: list[Any] = []
        page, seen = 1, set()
        while page not in seen and (limit is None or len(items) < limit):
            seen.add(page)
            response = self._call("GET", path, params={**params, "page": page, "limit": self.page_size})
            data = parse_json(response, f"GET {path}")
            batch = data.get(key) if isinstance(data, dict) else None
            if not isinstance(batch, list):
                raise GiteaBadAnswer(f"GET {path}: the answer has no {key!r} list")
            items.extend(batch)
            following = next_page(response)
            total = total_count(response, data)
            if following is None and batch and total is not None and len(items) < total:
                following = page + 1
            if following is None or not batch:
                break
            page = following
        return items if limit is None else items[:limit]

    # --- version and capabilities --------------------------------------------------------------------

    def version(self) -> GiteaVersion:
        """The server's version (asked once)."""
        if self._version is None:
            data = self._json("GET", "/version")
            raw = data.get("version") if isinstance(data, dict) else None
            try:
                self._version = GiteaVersion.parse(str(raw))
            except ValueError as exc:
                raise GiteaBadAnswer(f"GET /version: {exc}") from exc
        return self._version

    def _require(self, feature: str, major: int, minor: int) -> None:
        version = self.version()
        if not version.at_least(major, minor):
            raise GiteaUnsupported(
                feature, f"Gitea {version} has no {feature} API (it came in {major}.{minor})",
                hint=f"Upgrade Gitea to {major}.{minor} or later.",
            )  # fmt: skip

    def cancel_supported(self) -> bool | None:
        """Whether this Gitea has ``POST .../actions/runs/{run}/cancel``, from its own API document;
        None while unknown (no API document served, and no cancel tried yet)."""
        if self._cancel is None:
            try:
                response, _ = self._send("GET", SWAGGER_PATH, api=False)
                paths = response.json().get("paths") if response.status_code == 200 else None
            except (ValueError, AttributeError, GiteaUnavailable):
                paths = None
            if isinstance(paths, dict):
                self._cancel = "post" in (paths.get(CANCEL_PATH) or {})
        return self._cancel

    # --- runners -------------------------------------------------------------------------------------

    def registration_token(self, scope: RunnerScope) -> str:
        """A runner registration token for ``scope`` (Gitea's current one; reusable until reset)."""
        new_api = self.version().at_least(1, 24)
        method, path = ("POST", scope.token_path_post()) if new_api else ("GET", scope.token_path_get())
        # the POST hands out the scope's current token (one is made when none is active): safe to repeat
        data = self._json(method, path, idempotent=True)
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise GiteaBadAnswer(f"{method} {path}: the answer carries no token")
        return token

    def list_runners(self, scope: RunnerScope) -> list[Runner]:
        self._require("runners", 1, 24)
        return [
            to_model(Runner, r, "runner") for r in self._paginate(scope.runners_path(), "runners", {}, None)
        ]

    def get_runner(self, scope: RunnerScope, runner_id: int) -> Runner:
        self._require("runners", 1, 24)
        path = f"{scope.runners_path()}/{runner_id}"
        return to_model(Runner, self._json("GET", path, not_found=GiteaRunnerNotFound), "runner")

    def delete_runner(self, scope: RunnerScope, runner_id: int) -> None:
        """Deregister a runner (204). ``GiteaRunnerNotFound`` if Gitea does not know it, unless an
        earlier try of this same call may have deleted it."""
        self._require("runners", 1, 24)
        path = f"{scope.runners_path()}/{runner_id}"
        response, maybe_applied = self._send("DELETE", path)
        if response.status_code == 404 and maybe_applied:
            return
        if response.status_code not in (200, 204):
            raise refusal(f"DELETE {path}", response, GiteaRunnerNotFound)

    # --- dispatch ------------------------------------------------------------------------------------

    def dispatch(
        self,
        owner: str,
        repo: str,
        workflow: str,
        ref: str,
        *,
        inputs: Mapping[str, str] | None = None,
        head_sha: str | None = None,
    ) -> DispatchTicket:
        """Run ``workflow`` (its file name) on ``ref``. Gitea answers 204 with no run id: the ticket
        (the newest dispatch run before this one, the time) is what ``find_dispatched_run`` matches."""
        self._require("workflow dispatch", 1, 24)
        after = None
        if self.version().at_least(1, 25):
            newest = self.list_runs(owner, repo, event="workflow_dispatch", max_runs=1)
            after = newest[0].id if newest else 0
        ticket = DispatchTicket(
            owner=owner, repo=repo, workflow=workflow, ref=ref, head_sha=head_sha,
            inputs=dict(inputs or {}), after_run_id=after, dispatched_at=time.time(),
        )  # fmt: skip
        path = f"/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches"
        try:
            self._call("POST", path, body={"ref": ref, "inputs": ticket.inputs}, idempotent=False,
                       ok=(200, 201, 204))  # fmt: skip
        except GiteaOutcomeUnknown as exc:
            exc.ticket = ticket
            raise
        return ticket

    def find_dispatched_run(
        self, ticket: DispatchTicket, *, exclude: set[int] | None = None
    ) -> WorkflowRun | None:
        """The oldest run newer than the ticket's of its workflow and ref (and head sha, when known),
        not in ``exclude`` (runs already matched to other dispatches); None while Gitea has none."""
        self._require("runs", 1, 25)
        runs = self.list_runs(ticket.owner, ticket.repo, event="workflow_dispatch", head_sha=ticket.head_sha,
                              max_runs=self.page_size)  # fmt: skip
        after = ticket.after_run_id or 0
        found = [r for r in runs if r.id > after and ticket.matches(r) and r.id not in (exclude or set())]
        return min(found, key=lambda r: r.id) if found else None

    def wait_for_dispatched_run(
        self, ticket: DispatchTicket, *, timeout: float = 30.0, interval: float = 1.0,
        exclude: set[int] | None = None,
    ) -> WorkflowRun | None:  # fmt: skip
        """``find_dispatched_run`` until it finds the run or ``timeout`` seconds pass (then None)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.find_dispatched_run(ticket, exclude=exclude)
            if run is not None or time.monotonic() >= deadline:
                return run
            self._sleep(interval)

    # --- runs, jobs, logs ----------------------------------------------------------------------------

    def list_runs(
        self, owner: str, repo: str, *, event: str | None = None, branch: str | None = None,
        head_sha: str | None = None, status: str | None = None, actor: str | None = None,
        max_runs: int | None = None,
    ) -> list[WorkflowRun]:  # fmt: skip
        """The repository's runs, newest first, filtered as Gitea filters them; every page unless
        ``max_runs``."""
        self._require("runs", 1, 25)
        filters = {"event": event, "branch": branch, "head_sha": head_sha, "status": status, "actor": actor}
        params = {k: v for k, v in filters.items() if v}
        rows = self._paginate(f"/repos/{owner}/{repo}/actions/runs", "workflow_runs", params, max_runs)
        return [to_model(WorkflowRun, row, "workflow run") for row in rows]

    def get_run(self, owner: str, repo: str, run_id: int) -> WorkflowRun:
        self._require("runs", 1, 25)
        return to_model(WorkflowRun, self._json("GET", f"/repos/{owner}/{repo}/actions/runs/{run_id}"), "run")

    def list_jobs(self, owner: str, repo: str, run_id: int) -> list[WorkflowJob]:
        self._require("runs", 1, 25)
        rows = self._paginate(f"/repos/{owner}/{repo}/actions/runs/{run_id}/jobs", "jobs", {}, None)
        return [to_model(WorkflowJob, row, "workflow job") for row in rows]

    def get_job(self, owner: str, repo: str, job_id: int) -> WorkflowJob:
        self._require("runs", 1, 25)
        return to_model(WorkflowJob, self._json("GET", f"/repos/{owner}/{repo}/actions/jobs/{job_id}"), "job")

    def job_logs(self, owner: str, repo: str, job_id: int) -> str:
        """A job's whole log as text. ``GiteaNotFound`` before the job started, or once expired."""
        self._require("job logs", 1, 24)
        return self._call("GET", f"/repos/{owner}/{repo}/actions/jobs/{job_id}/logs").text

    def cancel_run(self, owner: str, repo: str, run_id: int) -> bool:
        """Ask Gitea to cancel a run: True when asked, False when the run had already completed.
        ``GiteaUnsupported`` (feature ``cancel``) where this Gitea has no cancel endpoint."""
        if self.cancel_supported() is False:
            raise no_cancel(self.version())
        run = self.get_run(owner, repo, run_id)  # GiteaNotFound for an unknown run
        if run.done:
            return False
        path = f"/repos/{owner}/{repo}/actions/runs/{run_id}/cancel"
        response, _ = self._send("POST", path)  # cancelling twice does nothing more: safe to repeat
        if response.status_code in (404, 405) and self._cancel is None:
            self._cancel = False  # the run exists (just read): it is the route that does not
            raise no_cancel(self.version())
        if response.status_code == 409:
            return False
        if response.status_code not in (200, 202, 204):
            raise refusal(f"POST {path}", response, GiteaNotFound)
        self._cancel = True
        return True
