"""One task's reporter: owns its ``JobLog`` behind a lock and streams it to the platform, as
act_runner's reporter does.

A thread sends ``UpdateLog`` with every row not yet acknowledged at least every second while rows
come (rows are acknowledged by index: a row is never lost or sent twice), and ``UpdateTask`` with the
steps whenever a step starts or ends and at least every ``state_interval`` seconds: that call is the
heartbeat that keeps the job's lease, and its answer is how a cancel arrives. ``stop_requested`` is
set when the platform answers that the job is over (``RESULT_CANCELLED``, or any result it has
settled without us) or refuses the runner's credentials (``refused``). ``close(result, outputs)`` sends
the last rows with ``noMore`` and then the final state with the job's result and outputs.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from diskci.errors import DiskciError
from diskci.runner.act_output import JobLog, rfc3339
from diskci.runner.client import RunnerCallFailed, RunnerClient, RunnerRefused

__all__ = ["TaskReporter"]

log = logging.getLogger(__name__)

MAX_BATCH_ROWS = 5000
MAX_BATCH_CHARS = 4 * 1024 * 1024  # the platform takes 16 MiB per UpdateLog
CLOSE_ATTEMPTS = 5


class TaskReporter:
    def __init__(
        self,
        client: RunnerClient,
        task_id: str,
        job_log: JobLog,
        *,
        log_interval: float = 1.0,
        state_interval: float = 2.0,
        tick: float = 0.2,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.log = job_log
        self.log_interval = log_interval
        self.state_interval = state_interval
        self.tick = tick
        self.started_at = datetime.now(UTC)
        self.stop_requested = threading.Event()
        self.refused = False
        self.platform_result: str | None = None  # what the platform answered once it closed the job
        self._lock = threading.Lock()
        self._acked = 0
        self._sent_changes = -1
        self._last_log = 0.0
        self._last_state = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"report-{task_id}", daemon=True)

    # --- what the job says -----------------------------------------------------------------------------

    def feed(self, line: str) -> None:
        with self._lock:
            self.log.feed(line)

    def note(self, text: str) -> None:
        with self._lock:
            self.log.note(text)

    def line(self, text: str) -> None:
        with self._lock:
            self.log.line(text)

    def finish(self, returncode: int | None, *, cancelled: bool = False) -> str:
        """Settle the job's result and open steps (``JobLog.finish``), before ``close``."""
        with self._lock:
            return self.log.finish(returncode, cancelled=cancelled)

    def steps_so_far(self) -> tuple[dict[str, dict[str, str]], list[str | None]]:
        """The outputs each step set (by step key) and each step's result (``RESULT_*``), as of now."""
        with self._lock:
            outputs = {key: dict(values) for key, values in self.log.step_outputs.items()}
            return outputs, [step.result for step in self.log.steps]

    # --- sending ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self.tick):
            try:
                self._send(final=False)
            except RunnerRefused as exc:
                log.error("task %s: %s", self.task_id, exc.message)
                self.refused = True
                self.stop_requested.set()
            except DiskciError as exc:  # unreachable for now: the next tick tries again
                log.warning("task %s: reporting failed: %s", self.task_id, exc.message)

    def _batch(self) -> tuple[int, list[dict[str, str]], bool]:
        """Rows from the acknowledged index (bounded), and whether they are all the rows there are."""
        with self._lock:
            pending = self.log.rows[self._acked :]
            batch: list[dict[str, str]] = []
            size = 0
            for row in pending[:MAX_BATCH_ROWS]:
                size += len(row.content) + 40
                if batch and size > MAX_BATCH_CHARS:
                    break
                batch.append(row.message())
            return self._acked, batch, len(batch) == len(pending)

    def _send_log(self, *, no_more: bool) -> bool:
        """One UpdateLog; True when every row is acknowledged (and, with ``no_more``, the log closed)."""
        index, rows, last = self._batch()
        if not rows and not no_more:
            return True
        ack = self.client.update_log(self.task_id, index, rows, no_more=no_more and last)
        with self._lock:
            self._acked = max(self._acked, min(ack, len(self.log.rows)))
            return last and self._acked >= index + len(rows)

    def _state(self, result: str | None) -> dict[str, Any]:
        with self._lock:
            steps = self.log.step_messages()
            self._sent_changes = self.log.changes
        state: dict[str, Any] = {
            "id": self.task_id,
            "result": result or "RESULT_UNSPECIFIED",
            "startedAt": rfc3339(self.started_at),
            "steps": steps,
        }
        if result is not None:
            state["stoppedAt"] = rfc3339(datetime.now(UTC))
        return state

    def _send_state(self, result: str | None = None, outputs: dict[str, str] | None = None) -> None:
        answer = self.client.update_task(self._state(result), outputs)
        if result is None and answer != "RESULT_UNSPECIFIED" and not self.stop_requested.is_set():
            log.info("task %s: the platform closed the job (%s): stopping it", self.task_id, answer)
            self.platform_result = answer
            self.stop_requested.set()

    def _send(self, *, final: bool) -> None:
        now = time.monotonic()
        with self._lock:
            rows_pending = len(self.log.rows) > self._acked
            steps_changed = self.log.changes != self._sent_changes
        if rows_pending and now - self._last_log >= self.log_interval:
            self._last_log = now
            self._send_log(no_more=False)
        if steps_changed or now - self._last_state >= self.state_interval:
            self._last_state = now
            self._send_state()

    def close(self, result: str, outputs: dict[str, str] | None = None) -> None:
        """Stop streaming, send the last rows (``noMore``), then the job's final state and outputs."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.refused:
            return  # the platform takes nothing more from this runner
        try:
            for _ in range(CLOSE_ATTEMPTS * 100):
                if self._send_log(no_more=True):
                    break
            else:
                log.error("task %s: the last log rows were not acknowledged; they are lost", self.task_id)
            self._send_state(result, outputs)
        except RunnerRefused as exc:
            self.refused = True
            log.error("task %s: %s", self.task_id, exc.message)
        except RunnerCallFailed as exc:
            log.error("task %s: could not report the end of the job: %s", self.task_id, exc.message)
