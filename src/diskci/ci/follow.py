"""Following a CI run until it completes: ``follow(fetch_run, fetch_logs, on_change, interval=...)``
polls the run, reports every change of a job or a step and every new log row to ``on_change`` (as
plain dicts: ``{"type": "job" | "step" | "log" | "run", ...}``), and returns the completed run once
every started job's log is complete (or a short grace has passed). ``diskci ci watch`` renders the
changes (``--json``: one change a line, which ``diskci demo`` reads to record the run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["LOG_GRACE", "Change", "FetchLogs", "FetchRun", "follow"]

Change = dict[str, Any]
FetchRun = Callable[[], dict[str, Any]]
FetchLogs = Callable[[str, int], dict[str, Any]]

LOG_GRACE = 5.0  # seconds to wait, after the run completed, for the last log rows of its jobs


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
