"""The runner daemon (``diskci runner run``): one job at a time, fetched from the platform and run with act.

At start it declares its version and labels, then asks for a task every ``fetch_interval`` seconds
while idle, and sends a heartbeat (this host's disk, memory and load) at start and every
``heartbeat_interval`` seconds. ``request_stop()`` (SIGTERM, SIGINT) stops the fetching; the job in
hand may finish within ``drain_timeout`` seconds, after which it is cancelled; a second request cancels
it at once. When the platform refuses the runner's credentials (revoked) the job in hand is stopped
and ``run()`` answers exit code 3, which tells a supervisor not to start it again; else 0. It logs one
line per task fetched and one per result.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from diskci import __version__
from diskci.runner.act_job import TaskOutcome, run_task
from diskci.runner.client import RunnerCallFailed, RunnerClient, RunnerRefused
from diskci.runner.hoststats import host_stats
from diskci.runner.state import RunnerState, work_dir

__all__ = ["EXIT_REFUSED", "Agent"]

log = logging.getLogger(__name__)

EXIT_REFUSED = 3


class Agent:
    def __init__(
        self,
        state: RunnerState,
        state_dir: Path,
        *,
        drain_timeout: float = 600.0,
        fetch_interval: float = 1.0,
        heartbeat_interval: float = 10.0,
        client: RunnerClient | None = None,
        act: str | None = None,
    ) -> None:
        self.state = state
        self.work_dir = work_dir(state_dir)
        self.drain_timeout = drain_timeout
        self.fetch_interval = fetch_interval
        self.heartbeat_interval = heartbeat_interval
        self.client = client or RunnerClient(state.url, uuid=state.uuid, token=state.token)
        self.act = act
        self.stopping = threading.Event()  # no more fetching
        self.job_cancel = threading.Event()  # the job in hand must stop now
        self.refused = threading.Event()
        self._drain_timer: threading.Timer | None = None

    # --- stopping --------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop fetching; the current job has ``drain_timeout`` seconds left (a second call: none)."""
        if self.stopping.is_set():
            log.info("stop requested again: cancelling the current job")
            self.job_cancel.set()
            return
        log.info("stopping: no more tasks; the current job may run %g s more", self.drain_timeout)
        self.stopping.set()
        self._drain_timer = threading.Timer(self.drain_timeout, self._drain_expired)
        self._drain_timer.daemon = True
        self._drain_timer.start()

    def _drain_expired(self) -> None:
        log.info("drain timeout reached: cancelling the current job")
        self.job_cancel.set()

    def _refused(self, exc: RunnerRefused) -> None:
        log.error("%s", exc.message)
        self.refused.set()
        self.job_cancel.set()
        self.stopping.set()

    # --- the loop --------------------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        while not self.stopping.is_set():
            try:
                self.client.heartbeat(host_stats(self.work_dir))
            except RunnerRefused as exc:
                self._refused(exc)
                return
            except RunnerCallFailed as exc:
                log.warning("heartbeat failed: %s", exc.message)
            self.stopping.wait(self.heartbeat_interval)

    def _declare(self) -> bool:
        while not self.stopping.is_set():
            try:
                self.client.declare(version=__version__, labels=self.state.labels)
            except RunnerCallFailed as exc:
                log.warning("declare failed: %s", exc.message)
                self.stopping.wait(self.fetch_interval * 5)
                continue
            log.info(
                "runner %s (%s) at %s: labels %s",
                self.state.name, self.state.uuid, self.state.url, ",".join(self.state.labels) or "-",
            )  # fmt: skip
            return True
        return False

    def _run(self, task: dict[str, object]) -> TaskOutcome:
        context = task.get("context") if isinstance(task.get("context"), dict) else {}
        assert isinstance(context, dict)
        log.info(
            "fetched task %s: job %s of run %s (%s at %s)",
            task.get("id"), context.get("job"), context.get("run_id"), context.get("ref"),
            str(context.get("sha") or "")[:12],
        )  # fmt: skip
        outcome = run_task(
            self.client, task, work_dir=self.work_dir, platform_url=self.state.url,
            cancel=self.job_cancel, act=self.act,
        )  # fmt: skip
        log.info(
            "task %s (%s): %s", outcome.task_id, outcome.name, outcome.result.removeprefix("RESULT_").lower()
        )
        if outcome.refused:
            self._refused(RunnerRefused("the platform refused this runner's credentials during the job"))
        return outcome

    def run(self) -> int:
        """Serve until stopped; the exit code (0, or ``EXIT_REFUSED``)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        heartbeat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        try:
            if self._declare():
                heartbeat.start()
            tasks_version = 0
            while not self.stopping.is_set():
                try:
                    tasks_version, task = self.client.fetch_task(tasks_version)
                except RunnerCallFailed as exc:
                    log.warning("fetching a task failed: %s", exc.message)
                    self.stopping.wait(self.fetch_interval)
                    continue
                if task is None:
                    self.stopping.wait(self.fetch_interval)
                    continue
                self._run(task)
        except RunnerRefused as exc:
            self._refused(exc)
        finally:
            self.stopping.set()
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            if heartbeat.is_alive():
                heartbeat.join(timeout=5)
            self.client.close()
        if self.refused.is_set():
            log.error("the platform refused this runner's credentials: exiting %d", EXIT_REFUSED)
            return EXIT_REFUSED
        log.info("stopped")
        return 0
