"""``diskci ci watch``'s renderers: the changes ``diskci.ci.follow.follow`` reports (through the actions
``get_gitea_workflow_run`` and ``get_gitea_job_logs``) as rich output on a terminal (a live table of
jobs and steps above the streaming log), plain lines when not a terminal, or JSON lines (``--json``).
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from diskci.ci.follow import Change, follow

__all__ = ["JsonLines", "LiveTable", "PlainLines", "follow"]

_ICONS = {"success": "✔", "failure": "✘", "cancelled": "⊘", "skipped": "↷"}


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
