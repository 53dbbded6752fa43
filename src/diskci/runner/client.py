"""The runner's client of Gitea's runner protocol (runner.v1 over Connect, JSON codec), as act_runner
speaks it, plus diskci's worker heartbeat.

Each call is ``POST <platform>/api/actions/<service>/<Method>`` with a JSON body and, once registered,
the ``x-runner-uuid``/``x-runner-token`` headers. A Connect error answer (``{"code", "message"}``)
becomes a diskci error: ``unauthenticated`` is ``RunnerRefused`` (never retried: the credentials are
revoked, or the registration token is spent), anything else ``RunnerCallFailed``. Connection errors,
5xx answers and ``unavailable`` are retried with exponential back-off (``RetryPolicy``) before they
become a ``RunnerCallFailed`` too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from diskci.errors import DiskciError, Unauthorized

__all__ = [
    "HEARTBEAT_METHOD",
    "RetryPolicy",
    "RunnerCallFailed",
    "RunnerClient",
    "RunnerRefused",
    "actions_base",
]

log = logging.getLogger(__name__)

ACTIONS_PREFIX = "/api/actions"
RUNNER_SERVICE = "runner.v1.RunnerService"
PING_SERVICE = "ping.v1.PingService"
HEARTBEAT_METHOD = "diskci.v1.WorkerService/Heartbeat"


class RunnerCallFailed(DiskciError):
    """A runner protocol call the platform answered with an error, or that never reached it."""

    def __init__(self, method: str, code: str, message: str, *, hint: str | None = None) -> None:
        self.method = method
        self.code = code
        super().__init__(f"{method}: {code}: {message}", hint=hint)


class RunnerRefused(Unauthorized):
    """The platform refused the runner's credentials (revoked, unknown) or its registration token."""

    exit_code = 3  # a supervisor must not restart a runner whose credentials are gone


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, a call that may succeed later is tried again."""

    attempts: int = 6
    first_delay: float = 0.5
    max_delay: float = 8.0

    def delays(self) -> list[float]:
        return [min(self.first_delay * 2**i, self.max_delay) for i in range(self.attempts - 1)]


def actions_base(url: str) -> str:
    """The platform's base URL from what an operator gives (``http://host:port``, with or without
    a trailing ``/api/actions``)."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise RunnerCallFailed("Register", "invalid_argument", f"{url!r} is not an http(s) URL")
    return base.removesuffix(ACTIONS_PREFIX)


class RunnerClient:
    """runner.v1 calls against one platform; ``uuid`` and ``token`` once registered."""

    def __init__(
        self,
        url: str,
        *,
        uuid: str = "",
        token: str = "",
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = actions_base(url)
        self.uuid = uuid
        self.token = token
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url + ACTIONS_PREFIX, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RunnerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Connect-Protocol-Version": "1"}
        if self.uuid:
            headers.update({"x-runner-uuid": self.uuid, "x-runner-token": self.token})
        return headers

    def call(self, path: str, body: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        """POST ``body`` to ``<service>/<Method>`` and return the answer's JSON object."""
        method = path.rsplit("/", 1)[-1]
        delays = self.retry.delays() if retry else []
        for attempt in range(len(delays) + 1):
            try:
                response = self._http.post(path, json=body, headers=self._headers())
            except httpx.TransportError as exc:
                failure = RunnerCallFailed(
                    method, "unavailable", f"cannot reach {self.base_url}: {exc}",
                    hint="Is the platform running, and is --url right?",
                )  # fmt: skip
            else:
                if response.status_code == 200:
                    return self._answer(method, response)
                code, message = self._error(response)
                if code == "unauthenticated" or response.status_code == 401:
                    raise RunnerRefused(f"{method}: the platform refused this runner: {message}")
                failure = RunnerCallFailed(method, code, message)
                if response.status_code < 500 and code != "unavailable":
                    raise failure
            if attempt == len(delays):
                raise failure
            log.warning("%s failed (%s); trying again in %.1f s", method, failure.message, delays[attempt])
            self._sleep(delays[attempt])
        raise AssertionError("unreachable")

    @staticmethod
    def _answer(method: str, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as exc:
            raise RunnerCallFailed(method, "internal", "the answer is not JSON") from exc
        if not isinstance(data, dict):
            raise RunnerCallFailed(method, "internal", "the answer is not a JSON object")
        return data

    @staticmethod
    def _error(response: httpx.Response) -> tuple[str, str]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("code"), str):
            return data["code"], str(data.get("message", ""))
        return f"http_{response.status_code}", response.text[:200]

    # --- the calls -------------------------------------------------------------------------------------

    def ping(self, data: str = "diskci") -> str:
        return str(self.call(f"{PING_SERVICE}/Ping", {"data": data}).get("data", ""))

    def register(self, *, token: str, name: str, labels: list[str], version: str) -> dict[str, Any]:
        """Spend a registration token; the runner message (``id``, ``uuid``, ``token``, ``labels``)."""
        body = {"token": token, "name": name, "version": version, "labels": labels}
        # never retried: a registration that reached the platform spent the token
        runner = self.call(f"{RUNNER_SERVICE}/Register", body, retry=False).get("runner")
        if not isinstance(runner, dict) or not runner.get("uuid") or not runner.get("token"):
            raise RunnerCallFailed("Register", "internal", "the answer carries no runner uuid and token")
        return runner

    def declare(self, *, version: str, labels: list[str]) -> dict[str, Any]:
        answer = self.call(f"{RUNNER_SERVICE}/Declare", {"version": version, "labels": labels})
        runner = answer.get("runner")
        return runner if isinstance(runner, dict) else {}

    def fetch_task(self, tasks_version: int) -> tuple[int, dict[str, Any] | None]:
        """The platform's tasks version and a task for this runner, or None."""
        answer = self.call(f"{RUNNER_SERVICE}/FetchTask", {"tasksVersion": str(tasks_version)})
        try:
            version = int(answer.get("tasksVersion") or 0)
        except (TypeError, ValueError):
            version = 0
        task = answer.get("task")
        return version, task if isinstance(task, dict) and task.get("id") else None

    def update_task(self, state: dict[str, Any], outputs: dict[str, str] | None = None) -> str:
        """Report the task's state; returns the job's result as the platform has it (``RESULT_*``)."""
        answer = self.call(f"{RUNNER_SERVICE}/UpdateTask", {"state": state, "outputs": outputs or {}})
        return str((answer.get("state") or {}).get("result") or "RESULT_UNSPECIFIED")

    def update_log(self, task_id: str, index: int, rows: list[dict[str, str]], *, no_more: bool) -> int:
        """Send rows from ``index``; returns the acknowledged index (rows before it are stored)."""
        body = {"taskId": task_id, "index": str(index), "rows": rows, "noMore": no_more}
        answer = self.call(f"{RUNNER_SERVICE}/UpdateLog", body)
        try:
            return int(answer.get("ackIndex") or 0)
        except (TypeError, ValueError) as exc:
            raise RunnerCallFailed("UpdateLog", "internal", "ackIndex is not a number") from exc

    def heartbeat(self, stats: dict[str, Any]) -> None:
        """diskci's heartbeat: this host's disk, memory and load (``hoststats.host_stats``)."""
        self.call(HEARTBEAT_METHOD, stats)
