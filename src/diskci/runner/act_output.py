"""act's ``--json`` output of one job folded into what the runner protocol reports: log rows, steps,
the job's result. Pure: lines in, state out (``JobLog``); the reporter sends it, ``act_job`` feeds it.

act prints one JSON object per line: ``msg`` (the text; a step's own output has ``raw_output`` and ends
in a newline), ``time``, ``jobID``, and for a step ``stage`` (Pre, Main, Post), ``stepID`` (a list whose
first item is the step's ``id``, or its index when it has none) and, on the line ending it,
``stepResult``; the job's last line carries ``jobResult``. A step's output (``echo "name=value" >>
"$GITHUB_OUTPUT"``, or the old ``::set-output``) is a line with ``"command": "set-output"``, its
``name`` and its value in ``arg``: ``step_outputs`` keeps them by step key, for the job's ``outputs:``.
act's own "Set up job" and "Complete job" rows (``stepid``, lower case) belong to the job log but to no
step. Lines of other jobs (the stubs that stand for the jobs this one needs) are dropped, and so is
act's warning that it found no Docker (host mode needs none). Each ``msg`` becomes one row per line,
with secrets masked.

Each of the payload's steps gets the rows of its Main stage as its range (``log_index``,
``log_length``: row indexes), its start, its stop and its result. ``finish`` settles what act left
open: a job act never ran (an unmapped ``runs-on`` label makes act skip it and exit 0) is a failure
saying so; steps that never started are skipped, steps that never ended failed (or were cancelled).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["RESULTS", "JobLog", "Row", "Step", "rfc3339"]

RESULTS = {
    "success": "RESULT_SUCCESS",
    "failure": "RESULT_FAILURE",
    "cancelled": "RESULT_CANCELLED",
    "skipped": "RESULT_SKIPPED",
}
SUCCESS, FAILURE, CANCELLED, SKIPPED = RESULTS.values()
MASK = "***"
_NOISE = ("Couldn't get a valid docker connection",)


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Row:
    time: datetime
    content: str

    def message(self) -> dict[str, str]:
        return {"time": rfc3339(self.time), "content": self.content}


@dataclass
class Step:
    """One of the payload's steps as the job went so far."""

    result: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    log_index: int = 0
    log_length: int = 0

    def message(self, index: int) -> dict[str, Any]:
        """The step as runner.v1's StepState (protojson)."""
        data: dict[str, Any] = {
            "id": str(index),
            "result": self.result or "RESULT_UNSPECIFIED",
            "logIndex": str(self.log_index),
            "logLength": str(self.log_length),
        }
        if self.started_at is not None:
            data["startedAt"] = rfc3339(self.started_at)
        if self.stopped_at is not None:
            data["stoppedAt"] = rfc3339(self.stopped_at)
        return data


class JobLog:
    """The rows, steps and result of job ``job_id`` (the payload's one job), from act's lines.

    ``step_keys`` are the payload's steps as act names them (each step's ``id``, else its index);
    ``masks`` are values no row may show (the job's token, its secrets). ``changes`` grows whenever a
    step starts or ends, so a reporter knows to send the state at once.
    """

    def __init__(
        self,
        job_id: str,
        step_keys: Sequence[str],
        *,
        masks: Iterable[str] = (),
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.job_id = job_id
        self.rows: list[Row] = []
        self.steps = [Step() for _ in step_keys]
        self.result: str | None = None  # act's jobResult, once it said it
        self.step_outputs: dict[str, dict[str, str]] = {}  # step key (its id, else index) → outputs
        self.changes = 0
        self._index_of = {key: i for i, key in enumerate(step_keys)}
        self._seen: dict[str, int] = {}
        self._now = now
        pieces = {m for value in masks if value for m in [value, *value.splitlines()] if len(m.strip()) >= 3}
        self._masks = sorted(pieces, key=len, reverse=True)

    # --- rows ------------------------------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        for secret in self._masks:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def _add(self, text: str, when: datetime) -> None:
        if text.endswith("\n"):
            text = text[:-1]
        for line in text.split("\n"):
            self.rows.append(Row(when, self._mask(line.removesuffix("\r"))))

    def line(self, text: str) -> None:
        """A row of a tool the runner ran itself (git), as it printed it."""
        self._add(text, self._now())

    def note(self, text: str) -> None:
        """A row of diskci's own (cloning, act's command, what went wrong)."""
        self.line(f"[diskci] {text}")

    # --- act's lines -----------------------------------------------------------------------------------

    def _time(self, value: Any) -> datetime:
        """act's time of a line; act writes whole seconds, so when the line arrives within that second
        (it is read as act writes it) the arrival time says it to the millisecond instead."""
        now = self._now()
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return now
            parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            if parsed.microsecond == 0 and timedelta(0) <= now - parsed < timedelta(seconds=1):
                return now
            return parsed
        return now

    def _step(self, step_id: Any) -> int | None:
        """The payload index of act's step id (by name, else in the order act reaches new ones)."""
        if not isinstance(step_id, list) or not step_id:
            return None
        key = str(step_id[0])
        if key in self._seen:
            return self._seen[key]
        index = self._index_of.get(key)
        if index is None or index in self._seen.values():
            index = next((i for i in range(len(self.steps)) if i not in self._seen.values()), None)
        if index is not None:
            self._seen[key] = index
        return index

    def feed(self, line: str) -> None:
        """One line of act's output (a JSON object, or plain text act printed)."""
        line = line.rstrip("\n")
        if not line.strip():
            return
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            self._add(line, self._now())
            return
        job = entry.get("jobID")
        msg = str(entry.get("msg", ""))
        if job is None:
            if not msg.startswith(_NOISE):
                self._add(msg, self._time(entry.get("time")))
            return
        if job != self.job_id:
            return  # a stub standing for a job this one needs
        when = self._time(entry.get("time"))
        self._output(entry)
        index = self._step(entry.get("stepID")) if entry.get("stage") == "Main" else None
        step = self.steps[index] if index is not None else None
        if step is not None and step.started_at is None:
            step.started_at = when
            step.log_index = len(self.rows)
            self.changes += 1
        self._add(msg, when)
        if step is not None:
            step.log_length = len(self.rows) - step.log_index
            result = entry.get("stepResult")
            if isinstance(result, str) and step.result is None:
                step.result = RESULTS.get(result, FAILURE)
                step.stopped_at = when
                self.changes += 1
        job_result = entry.get("jobResult")
        if isinstance(job_result, str):
            self.result = RESULTS.get(job_result, FAILURE)

    def _output(self, entry: dict[str, Any]) -> None:
        step_id, name = entry.get("stepID"), entry.get("name")
        if entry.get("command") != "set-output" or not isinstance(name, str) or not name:
            return
        if not isinstance(step_id, list) or not step_id:
            return
        self.step_outputs.setdefault(str(step_id[0]), {})[name] = str(entry.get("arg", ""))

    # --- the end ---------------------------------------------------------------------------------------

    def finish(self, returncode: int | None, *, cancelled: bool = False) -> str:
        """The job's result once act exited with ``returncode`` (None: it never started); settles
        every step still open."""
        now = self._now()
        if cancelled:
            result = CANCELLED
            self.note("the job was cancelled")
        elif self.result is None:
            result = FAILURE
            if returncode is not None:
                self.note(
                    f"act exited with status {returncode} without running the job: is every runs-on "
                    "label of the job mapped to this runner?"
                )
        elif self.result == SUCCESS and returncode not in (0, None):
            result = FAILURE
            self.note(f"act said the job succeeded but exited with status {returncode}")
        else:
            result = self.result
        for step in self.steps:
            if step.result is not None:
                continue
            if step.started_at is None:
                step.result = CANCELLED if cancelled else SKIPPED
            else:
                step.result = CANCELLED if cancelled else FAILURE
                step.stopped_at = now
            self.changes += 1
        self.result = result
        return result

    def step_messages(self) -> list[dict[str, Any]]:
        return [step.message(i) for i, step in enumerate(self.steps)]
