"""``diskci ci watch``: follow a CI run until it completes, through the actions ``get_gitea_workflow_run``
and ``get_gitea_job_logs`` (invoked in-process against the platform's database, as ``diskci platform``
calls actions).

``follow(fetch_run, fetch_logs, on_change, interval=...)`` polls the run, reports every change of a job
or a step and every new log row to ``on_change`` (as plain dicts: ``{"type": "job" | "step" | "log" |
"run", ...}``), and returns the completed run once every started job's log is complete (or a short
grace has passed). The renderers turn those changes into rich output on a terminal (a live table of
jobs and steps above the streaming log), plain lines when not a terminal, or JSON lines (``--json``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

Change = dict[str, Any]
FetchRun = Callable[[], dict[str, Any]]
FetchLogs = Callable[[str, int], dict[str, Any]]

LOG_GRACE = 5.0  # seconds to wait, after the run completed, for the last log rows of its jobs
_ICONS = {"success": "✔", "failure": "✘", "cancelled": "⊘", "skipped": "↷"}


def _job_state(job: dict[str, Any]) -> tuple[Any, ...]:
    return (job["status"], job["conclusion"], job.get("runner"), tuple(job.get("waiting_for_labels") or ()))


def follow(
    fetch_run: FetchRun,
    fetch_logs: FetchLogs,
    on_change: Callable[[Change], None],
    *,
    interval: float = 1.0,
    timeout: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any] | None:
    """Follow the run until it completes; returns it (None when ``timeout`` seconds passed first)."""
    jobs_seen: dict[str, tuple[Any, ...]] = {}
    steps_seen: dict[tuple[str, int], tuple[Any, ...]] = {}
    offsets: dict[str, int] = {}
    complete: dict[str, bool] = {}
    start = clock()
    completed_at: float | None = None
    while True:
        run = fetch_run()
        for job in run["jobs"]:
            name = job["name"]
            if jobs_seen.get(name) != _job_state(job):
                jobs_seen[name] = _job_state(job)
                on_change({"type": "job", "job": name, **{k: job.get(k) for k in _JOB_FIELDS}})
            for i, step in enumerate(job["steps"]):
                state = (step["status"], step["conclusion"])
                if steps_seen.get((name, i)) != state:
                    steps_seen[(name, i)] = state
                    on_change({"type": "step", "job": name, "step": step["name"], "status": state[0],
                               "conclusion": state[1]})  # fmt: skip
            if job["status"] in ("queued", "waiting") or complete.get(name):
                continue
            while True:  # every row there is now, page by page
                page = fetch_logs(name, offsets.get(name, 0))
                for offset, line in enumerate(page["logs"], start=offsets.get(name, 0)):
                    on_change({"type": "log", "job": name, "offset": offset, "line": line})
                offsets[name] = page["next_offset"]
                complete[name] = bool(page["complete"])
                if not page["logs"] or page["complete"]:
                    break
        if run["status"] == "completed":
            completed_at = completed_at if completed_at is not None else clock()
            started = [j["name"] for j in run["jobs"] if j.get("started_at")]
            if all(complete.get(n) for n in started) or clock() - completed_at >= LOG_GRACE:
                on_change({"type": "run", "run": run})
                return run
        if timeout and clock() - start >= timeout:
            return None
        sleep(interval)


_JOB_FIELDS = ("status", "conclusion", "runner", "waiting_for_labels")


class JsonLines:
    """One JSON object per change, on stdout (for scripts)."""

    def __call__(self, change: Change) -> None:
        sys.stdout.write(json.dumps(change, default=str, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def _describe_job(change: Change) -> str:
    text = f"{change['job']}: {change['status']}"
    if change.get("conclusion"):
        text += f" ({change['conclusion']})"
    if change.get("runner"):
        text += f" on {change['runner']}"
    if change.get("waiting_for_labels"):
        text += f"; waiting for a worker with label(s) {', '.join(change['waiting_for_labels'])}"
    return text


def _failure(run: Change) -> str:
    """The run's own failure (a reproducibility check that failed), as more lines; else nothing."""
    if not run.get("failure_reason"):
        return ""
    return f": {run['failure_reason']}\n{run.get('failure_detail') or ''}".rstrip()


class PlainLines:
    """Plain lines (not a terminal): job and step changes, and each log row prefixed by its job."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, change: Change) -> None:
        kind = change["type"]
        if kind == "job":
            line = f"job {_describe_job(change)}"
        elif kind == "step":
            if change["status"] == "queued":
                return  # every step starts queued: say when it starts and ends
            done = f" ({change['conclusion']})" if change["conclusion"] else ""
            line = f"step {change['job']} / {change['step']}: {change['status']}{done}"
        elif kind == "log":
            line = f"[{change['job']}] {change['line']}"
        else:
            run = change["run"]
            line = f"run {run['run_id']}: {run['status']} ({run['conclusion']})" + _failure(run)
        self.console.print(Text(line), soft_wrap=True)


class LiveTable:
    """On a terminal: a live table of jobs and their steps, the log streaming above it."""

    def __init__(self, console: Console, run_id: int) -> None:
        self.console = console
        self.run_id = run_id
        self.jobs: dict[str, Change] = {}
        self.steps: dict[str, dict[str, Change]] = {}
        self.live = Live(self._table(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveTable:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def _table(self) -> Table:
        table = Table(title=f"CI run {self.run_id}", show_header=True, expand=False)
        table.add_column("job / step")
        table.add_column("status")
        for name, job in self.jobs.items():
            table.add_row(Text(name, style="bold"), Text(_describe_job(job).split(": ", 1)[1]))
            for step_name, step in self.steps.get(name, {}).items():
                mark = _ICONS.get(step["conclusion"] or "", "…" if step["status"] == "in_progress" else "·")
                table.add_row(Text(f"  {mark} {step_name}"), Text(step["conclusion"] or step["status"]))
        return table

    def __call__(self, change: Change) -> None:
        kind = change["type"]
        if kind == "job":
            self.jobs[change["job"]] = change
        elif kind == "step":
            self.steps.setdefault(change["job"], {})[change["step"]] = change
        elif kind == "log":
            self.live.console.print(Text(f"{change['job']} │ ", style="dim") + Text(change["line"]))
        else:
            run = change["run"]
            style = "green" if run["conclusion"] == "success" else "red"
            self.live.console.print(
                Text(f"run {run['run_id']}: {run['conclusion']}" + _failure(run), style=style)
            )
        self.live.update(self._table())
