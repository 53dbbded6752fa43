"""How a Gitea Actions run and its jobs become diskci's ``CiRun`` and ``CiJob`` rows (the gitea CI backend).

Gitea's words are the embedded backend's (``CiStatus``: queued, waiting, in_progress, completed;
``CiConclusion``: success, failure, cancelled, skipped); the few others some Gitea versions answer
(``running``, ``blocked``, a conclusion given as a status) are mapped, and an undocumented one is a
``GiteaBadAnswer``. ``apply_run`` writes a run and its jobs (times, steps, runner-free: Gitea's runners are
not diskci's ``CiRunner`` rows) and says whether anything changed; with ``write=False`` it only says
whether the rows need writing. A run cancel-requested on a Gitea without a cancel API that Gitea then
ends failed (its runners were deregistered) is shown ``cancelled``.

``DispatchState`` is where a dispatch stands until its Gitea run is found, kept in the run's
``trigger_key`` (``gitea_dispatch:{json}``); a run found by a webhook has ``gitea_run:<id>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from diskci.platform.actions.events import record_event
from diskci.platform.db.models import CiConclusion, CiJob, CiRun, CiStatus
from diskci.platform.gitea.answers import GiteaBadAnswer
from diskci.platform.gitea.models import DispatchTicket, WorkflowJob, WorkflowRun

__all__ = [
    "COMPLETED",
    "DISPATCH_KEY_PREFIX",
    "FOUND_KEY_PREFIX",
    "WORKFLOW_FILE",
    "DispatchState",
    "apply_job",
    "apply_run",
    "as_utc",
    "fail_run",
    "gitea_status",
    "record_sync_error",
    "run_inputs",
]

WORKFLOW_FILE = "build.yaml"  # .gitea/workflows/build.yaml, what ``diskci ci workflow`` writes
DISPATCH_KEY_PREFIX = "gitea_dispatch:"
FOUND_KEY_PREFIX = "gitea_run:"
SYNCED_REFRESH = timedelta(seconds=10)  # synced_at is renewed at most this often while nothing changes
COMPLETED = CiStatus.COMPLETED.value
_STATUSES = {s.value for s in CiStatus}
_CONCLUSIONS = {c.value for c in CiConclusion}


# --- a dispatch's state ---------------------------------------------------------------


@dataclass(frozen=True)
class DispatchState:
    """Where a dispatch stands until its Gitea run is found (kept in the run's ``trigger_key``)."""

    phase: Literal["pending", "sent", "unknown"]
    at: float  # when it was (last) sent, Unix time
    after: int | None = None  # the newest dispatch run before it (the ticket's)

    def key(self, run_id: int) -> str:
        data = {"run": run_id, "phase": self.phase, "at": round(self.at, 3), "after": self.after}
        return DISPATCH_KEY_PREFIX + json.dumps(data, separators=(",", ":"))

    @classmethod
    def of(cls, run: CiRun) -> DispatchState | None:
        key = run.trigger_key or ""
        if not key.startswith(DISPATCH_KEY_PREFIX):
            return None
        try:
            data = json.loads(key.removeprefix(DISPATCH_KEY_PREFIX))
            after = data.get("after")
            return cls(
                phase=data["phase"], at=float(data["at"]), after=int(after) if after is not None else None
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def ticket(self, owner: str, repo: str, ref: str, inputs: dict[str, str]) -> DispatchTicket:
        return DispatchTicket(
            owner=owner,
            repo=repo,
            workflow=WORKFLOW_FILE,
            ref=ref,
            inputs=dict(inputs),
            after_run_id=self.after,
            dispatched_at=self.at,
        )


def run_inputs(run: CiRun) -> dict[str, str]:
    return {str(k): str(v) for k, v in (run.inputs or {}).items()}


# --- Gitea's words as diskci's ----------------------------------------------------------------------------


def gitea_status(word: str) -> str:
    if word in _STATUSES:
        return word
    if word == "running":
        return CiStatus.IN_PROGRESS.value
    if word == "blocked":
        return CiStatus.WAITING.value
    if word in _CONCLUSIONS:  # some Gitea versions answer a finished job's conclusion as its status
        return COMPLETED
    raise GiteaBadAnswer(f"Gitea answered the status {word!r}, which its API does not document")


def _conclusion(status: str, word: str | None, answered_status: str) -> str | None:
    """The conclusion of a completed run, job or step (Gitea's; failure for one it does not document)."""
    if status != COMPLETED:
        return None
    if word in _CONCLUSIONS:
        return word
    if answered_status in _CONCLUSIONS:
        return answered_status
    return CiConclusion.FAILURE.value if word else None


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _steps(job: WorkflowJob) -> list[dict[str, Any]]:
    steps = []
    for step in job.steps:
        status = gitea_status(step.status)
        steps.append(
            {
                "name": step.name,
                "number": step.number,
                "status": status,
                "conclusion": _conclusion(status, step.conclusion, step.status),
                "started_at": _iso(step.started_at),
                "completed_at": _iso(step.completed_at),
            }
        )
    return steps


def apply_job(run: CiRun, job: WorkflowJob, position: int, now: datetime, *, write: bool = True) -> bool:
    """Write one Gitea job into its row (made when new); whether anything changed (with ``write``
    false: whether anything would, touching nothing)."""
    row = next((j for j in run.jobs if j.gitea_job_id == job.id), None)
    status = gitea_status(job.status)
    values: dict[str, Any] = {
        "status": status,
        "conclusion": _conclusion(status, job.conclusion, job.status),
        "labels": list(job.labels),
        "steps": _steps(job),
        "started_at": job.started_at,
        "completed_at": job.completed_at or (now if status == COMPLETED else None),
        "log_complete": status == COMPLETED,
    }
    if row is None and not write:
        return True
    if row is None:
        names = {j.name for j in run.jobs}
        name = job.name if job.name not in names else f"{job.name} #{job.id}"
        run.jobs.append(
            CiJob(
                gitea_job_id=job.id,
                position=position,
                job_id=job.name,
                name=name,
                created_at=job.created_at or now,
                **values,
            )
        )
        return True
    changed = False
    for attribute, value in values.items():
        if attribute == "completed_at" and row.completed_at is not None and value is not None:
            continue  # a time diskci supplied stays
        if not _same(getattr(row, attribute), value):
            if not write:
                return True
            setattr(row, attribute, value)
            changed = True
    return changed


def apply_run(
    session: Session | None,
    run: CiRun,
    remote: WorkflowRun,
    jobs: list[WorkflowJob] | None,
    now: datetime,
    *,
    write: bool = True,
) -> bool:
    """Mirror ``remote`` (and its jobs, when read) into ``run``; whether anything changed. With
    ``write`` false (and no session): whether the row needs writing, touching nothing."""
    changed = False
    if run.gitea_run_id != remote.id and (not write or session is None):
        return True
    if run.gitea_run_id != remote.id:
        assert session is not None
        clash = session.scalar(
            select(CiRun.id).where(
                CiRun.platform_id == run.platform_id, CiRun.gitea_run_id == remote.id, CiRun.id != run.id
            )
        )
        if clash is not None:
            raise GiteaBadAnswer(f"Gitea run {remote.id} is already CI run {clash}'s")
        run.gitea_run_id, changed = remote.id, True
    status = gitea_status(remote.status)
    conclusion = _conclusion(status, remote.conclusion, remote.status)
    if conclusion in (CiConclusion.FAILURE.value, CiConclusion.CANCELLED.value) and run.cancel_requested_at:
        conclusion = CiConclusion.CANCELLED.value  # its runners were deregistered because it was cancelled
    values: dict[str, Any] = {
        "status": status,
        "conclusion": conclusion,
        "sha": remote.head_sha or run.sha,
        "started_at": remote.started_at or run.started_at,
        "completed_at": remote.completed_at or run.completed_at or (now if status == COMPLETED else None),
    }
    if not run.ref:
        values["ref"] = remote.ref or remote.head_branch
    for attribute, value in values.items():
        if not _same(getattr(run, attribute), value):
            if not write:
                return True
            setattr(run, attribute, value)
            changed = True
    for position, job in enumerate(sorted(jobs or [], key=lambda j: j.id)):
        if apply_job(run, job, position, now, write=write):
            if not write:
                return True
            changed = True
    stale = run.synced_at is None or as_utc(run.synced_at) < now - SYNCED_REFRESH
    if not write:
        return run.sync_error is not None or stale
    if run.sync_error is not None:
        run.sync_error, changed = None, True
    if changed or stale:
        run.synced_at = now
    return changed


def as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _same(stored: Any, value: Any) -> bool:
    """Whether a column already holds ``value`` (SQLite gives times back without their zone: UTC)."""
    if isinstance(stored, datetime) and isinstance(value, datetime):
        return as_utc(stored) == as_utc(value)
    return bool(stored == value)


def record_sync_error(session: Session, run: CiRun, error: Exception) -> None:
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    if run.sync_error is None:
        record_event(
            session,
            "ci_run_sync_failed",
            platform_id=run.platform_id,
            subject=f"run {run.id}",
            reason=type(error).__name__,
            payload={"run_id": run.id, "error": message},
        )
    run.sync_error = message[:2000]


def fail_run(session: Session, run: CiRun, reason: str, detail: str, now: datetime) -> None:
    run.status, run.conclusion = COMPLETED, CiConclusion.FAILURE.value
    run.failure_reason, run.failure_detail = reason, detail
    run.completed_at = now
    run.sync_error = None
    record_event(
        session,
        "ci_run_dispatch_failed",
        platform_id=run.platform_id,
        subject=f"run {run.id}",
        reason=reason,
        payload={"run_id": run.id, "ref": run.ref, "detail": detail},
    )
