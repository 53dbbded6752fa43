"""Runs and jobs of the embedded CI backend: created from a workflow, handed out, advanced, logged.

``create_run`` splits the workflow (``platform.ci.jobs``) into stored jobs: those without ``needs`` are
``queued``, the others ``waiting``. ``claim_job`` hands the oldest queued job whose labels the runner
all has to that runner (atomically: one job, one runner), ``in_progress``, under a lease each of the
runner's calls renews; ``expire_leases`` fails a job whose lease ran out (reason ``worker_lost``).
``record_state`` records a runner's report (steps, outputs, result); a finished job releases the jobs
that need it (``queued`` when all it needs succeeded, else ``skipped``) and the run follows its jobs
(``in_progress`` from the first claim, ``completed`` with the worst conclusion when every job is).
With a reproducibility check, a build job whose two copies both succeeded is compared with its copy
(``platform.ci.reproducibility``): a run that fails it (``failure_reason``) skips the jobs still
waiting and ends ``failure``.
``append_log`` stores log rows by index (a row is never lost or doubled: a resent row is acknowledged,
not stored again), up to ``LOG_CAP_ROWS`` rows per job, after which one row notes the cap and further
rows are acknowledged and dropped. ``cancel_run`` cancels every unfinished job: the runner of an
``in_progress`` one learns it from its next report's answer.

Statuses and conclusions are Gitea's words (``CiStatus``, ``CiConclusion``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import yaml
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from diskci.platform.ci import reproducibility
from diskci.platform.ci.jobs import PlannedJob, split_workflow
from diskci.platform.ci.runners import label_names
from diskci.platform.db.models import (
    CiConclusion,
    CiJob,
    CiLogRow,
    CiRun,
    CiRunner,
    CiRunnerStatus,
    CiStatus,
    NodePlatform,
    utcnow,
)

__all__ = [
    "JOB_LEASE",
    "LOG_CAP_ROWS",
    "REBUILD_SUFFIX",
    "LogRow",
    "StepReport",
    "append_log",
    "cancel_run",
    "claim_job",
    "create_run",
    "expire_leases",
    "record_state",
]

JOB_LEASE = timedelta(seconds=60)
REBUILD_SUFFIX = " (rebuild)"  # the name of a build job's second copy in a reproducibility check
LOG_CAP_ROWS = 100_000
MAX_ROW_CHARS = 64 * 1024
_COMPLETED = CiStatus.COMPLETED.value


@dataclass(frozen=True)
class StepReport:
    """What a runner says of one step (by its index in the job's steps)."""

    index: int
    conclusion: str | None  # None: not finished
    started_at: datetime | None = None
    completed_at: datetime | None = None
    log_index: int = 0
    log_length: int = 0


@dataclass(frozen=True)
class LogRow:
    time: datetime | None
    content: str


def _step_names(payload: str) -> list[str]:
    data = yaml.safe_load(payload) or {}
    (job,) = (data.get("jobs") or {"": {}}).values()
    names = []
    for i, step in enumerate(job.get("steps") or []):
        step = step if isinstance(step, dict) else {}
        label = step.get("name") or step.get("uses") or (str(step.get("run", "")).splitlines() or [""])[0]
        names.append(str(label or f"step {i + 1}"))
    return names


def create_run(
    session: Session,
    platform: NodePlatform,
    workflow_text: str,
    *,
    ref: str,
    sha: str = "",
    event: str = "push",
    inputs: Mapping[str, Any] | None = None,
    trigger_key: str | None = None,
    reproducibility_check: bool = False,
    now: datetime | None = None,
) -> CiRun:
    """A queued run of ``workflow_text`` with its jobs (``InvalidWorkflow`` when it cannot be split).

    The platform's ``ci_variables`` are the workflow's ``vars``. With ``reproducibility_check`` each
    build job (a job that needs none) is planned twice: the second copy has ``replica`` 1 and its name
    suffixed ``" (rebuild)"`` and ``DISKCI_REPLICA: "1"`` in its job's env (the workflow builds it
    without the cache and does not push it); the jobs that need it wait for both.
    """
    now = now or utcnow()
    planned = split_workflow(workflow_text, inputs=inputs, vars=dict(platform.ci_variables or {}))
    copies: list[tuple[PlannedJob, int]] = []
    for job in planned:
        copies.append((job, 0))
        if reproducibility_check and not job.needs:
            copies.append((job, 1))
    run = CiRun(
        platform_id=platform.id,
        ref=ref,
        sha=sha,
        event=event,
        workflow=workflow_text,
        inputs=dict(inputs or {}),
        trigger_key=trigger_key,
        reproducibility_check=reproducibility_check,
        created_at=now,
    )
    session.add(run)
    session.flush()
    for position, (job, replica) in enumerate(copies):
        session.add(
            CiJob(
                run_id=run.id,
                position=position,
                job_id=job.job_id,
                name=job.name + REBUILD_SUFFIX if replica else job.name,
                replica=replica,
                matrix=job.matrix,
                labels=job.labels,
                needs=job.needs,
                payload=reproducibility.replica_payload(job.payload) if replica else job.payload,
                status=(CiStatus.WAITING if job.needs else CiStatus.QUEUED).value,
                steps=[
                    {"name": n, "status": CiStatus.QUEUED.value, "conclusion": None}
                    for n in _step_names(job.payload)
                ],
                created_at=now,
            )
        )
    session.flush()
    return run


def claim_job(session: Session, runner: CiRunner, *, now: datetime | None = None) -> CiJob | None:
    """The oldest queued job the runner has every label of, now ``in_progress`` on it; or None."""
    now = now or utcnow()
    names = label_names(runner.labels)
    candidates = session.scalars(
        select(CiJob)
        .where(CiJob.status == CiStatus.QUEUED.value, CiJob.gitea_job_id.is_(None))  # Gitea runs its own
        .order_by(CiJob.created_at, CiJob.id)
        .limit(200)
    ).all()
    for job in candidates:
        if not set(job.labels) <= names:
            continue
        taken = session.execute(
            update(CiJob)
            .where(CiJob.id == job.id, CiJob.status == CiStatus.QUEUED.value)
            .values(
                status=CiStatus.IN_PROGRESS.value,
                runner_id=runner.id,
                started_at=now,
                lease_expires_at=now + JOB_LEASE,
            )
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            continue  # another runner won it
        session.refresh(job)
        run = job.run
        if run.status in (CiStatus.QUEUED.value, CiStatus.WAITING.value):
            run.status = CiStatus.IN_PROGRESS.value
            run.started_at = run.started_at or now
        runner.status = CiRunnerStatus.BUSY.value
        session.flush()
        return job
    return None


def latest_version(session: Session) -> int:
    """A number that grows whenever a job is created (the runner protocol's ``tasks_version``)."""
    return int(session.scalar(select(func.max(CiJob.id))) or 0)


def _conclusion_of(conclusions: Sequence[str | None]) -> str:
    for worst in (CiConclusion.FAILURE, CiConclusion.CANCELLED):
        if worst.value in conclusions:
            return worst.value
    if conclusions and all(c == CiConclusion.SKIPPED.value for c in conclusions):
        return CiConclusion.SKIPPED.value
    return CiConclusion.SUCCESS.value


def _finish(job: CiJob, conclusion: str, now: datetime, reason: str | None = None) -> None:
    job.status = _COMPLETED
    job.conclusion = conclusion
    job.failure_reason = reason
    job.completed_at = job.completed_at or now
    job.lease_expires_at = None
    if conclusion != CiConclusion.SUCCESS.value:  # steps that did not finish did not run to the end
        left = CiConclusion.SKIPPED.value if conclusion == CiConclusion.SKIPPED.value else "cancelled"
        job.steps = [
            s if s.get("status") == _COMPLETED else {**s, "status": _COMPLETED, "conclusion": left}
            for s in job.steps
        ]


def _advance(session: Session, run: CiRun, now: datetime) -> None:
    """Release the waiting jobs whose needs are done; complete the run when every job is."""
    jobs = list(run.jobs)
    changed = True
    while changed:
        changed = False
        for job in jobs:
            if job.status != CiStatus.WAITING.value:
                continue
            needed = [j for j in jobs if j.job_id in job.needs]
            if any(j.status != _COMPLETED for j in needed):
                continue
            if run.failure_reason is None and all(j.conclusion == CiConclusion.SUCCESS.value for j in needed):
                job.status = CiStatus.QUEUED.value
            else:
                _finish(job, CiConclusion.SKIPPED.value, now)
            changed = True
    if all(j.status == _COMPLETED for j in jobs):
        run.status = _COMPLETED
        run.conclusion = (
            CiConclusion.FAILURE.value
            if run.failure_reason is not None
            else _conclusion_of([j.conclusion for j in jobs])
        )
        run.completed_at = run.completed_at or now
    session.flush()


def _release_runner(session: Session, runner_id: int | None) -> None:
    if runner_id is None:
        return
    busy = session.scalar(
        select(func.count())
        .select_from(CiJob)
        .where(CiJob.runner_id == runner_id, CiJob.status == CiStatus.IN_PROGRESS.value)
    )
    runner = session.get(CiRunner, runner_id)
    if runner is not None and not busy and runner.status == CiRunnerStatus.BUSY.value:
        runner.status = CiRunnerStatus.ONLINE.value


def record_state(
    session: Session,
    job: CiJob,
    *,
    conclusion: str | None,
    steps: Sequence[StepReport] = (),
    outputs: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Record the runner's report on its job; returns the output keys now stored.

    A job already completed (finished, or cancelled) keeps what it has: only its outputs may still come.
    """
    now = now or utcnow()
    stored = dict(job.outputs or {})
    for key, value in (outputs or {}).items():
        if len(key) <= 255 and len(value) <= 1024 * 1024:
            stored.setdefault(key, value)
    job.outputs = stored
    if job.status == _COMPLETED:
        session.flush()
        return list(stored)
    new_steps = [dict(s) for s in job.steps]
    for report in steps:
        if not 0 <= report.index < len(new_steps):
            continue
        step = new_steps[report.index]
        if report.conclusion is not None:
            step.update(status=_COMPLETED, conclusion=report.conclusion)
        elif report.started_at is not None:
            step["status"] = CiStatus.IN_PROGRESS.value
        step["started_at"] = report.started_at.isoformat() if report.started_at else None
        step["completed_at"] = report.completed_at.isoformat() if report.completed_at else None
        step["log_index"], step["log_length"] = report.log_index, report.log_length
    job.steps = new_steps
    job.lease_expires_at = now + JOB_LEASE
    if conclusion is not None:
        _finish(job, conclusion, now)
        session.flush()
        _release_runner(session, job.runner_id)
        reproducibility.check_pair(session, job, now)
        _advance(session, job.run, now)
    session.flush()
    return list(stored)


def append_log(
    session: Session,
    job: CiJob,
    *,
    index: int,
    rows: Sequence[LogRow],
    no_more: bool,
    now: datetime | None = None,
) -> int:
    """Store the rows from ``index`` the job does not have yet; returns the acknowledged index.

    Rows before the acknowledged index are resends (skipped); a batch starting past it is refused by
    acknowledging only what is stored, so the runner sends the gap again.
    """
    now = now or utcnow()
    ack = job.log_length
    if job.log_complete or index > ack:
        return ack
    fresh = list(rows[ack - index :]) if index + len(rows) > ack else []
    stored = session.scalar(select(func.count()).select_from(CiLogRow).where(CiLogRow.job_id == job.id)) or 0
    for row in fresh:
        if stored < LOG_CAP_ROWS:
            content = (
                row.content
                if len(row.content) <= MAX_ROW_CHARS
                else row.content[:MAX_ROW_CHARS] + " [row cut]"
            )
            session.add(CiLogRow(job_id=job.id, index=stored, time=row.time, content=content))
            stored += 1
        elif not job.log_truncated:
            note = (
                f"[diskci: the log is capped at {LOG_CAP_ROWS} rows; the rest of this job's log was dropped]"
            )
            session.add(CiLogRow(job_id=job.id, index=stored, time=now, content=note))
            stored += 1
            job.log_truncated = True
    job.log_length = ack + len(fresh)
    if no_more:
        job.log_complete = True
    if job.status == CiStatus.IN_PROGRESS.value:
        job.lease_expires_at = now + JOB_LEASE
    session.flush()
    return job.log_length


def cancel_run(session: Session, run: CiRun, *, now: datetime | None = None) -> list[CiJob]:
    """Cancel every unfinished job of the run (the run ends ``completed``/``cancelled``); returns them."""
    now = now or utcnow()
    cancelled = [j for j in run.jobs if j.status != _COMPLETED]
    for job in cancelled:
        _finish(job, CiConclusion.CANCELLED.value, now)
    session.flush()
    for runner_id in {j.runner_id for j in cancelled}:
        _release_runner(session, runner_id)
    _advance(session, run, now)
    return cancelled


def expire_leases(session: Session, *, now: datetime | None = None) -> list[CiJob]:
    """Fail, with reason ``worker_lost``, every in-progress job whose worker stopped calling (its lease
    ran out); a row in its log says so. Returns those jobs."""
    now = now or utcnow()
    lost = session.scalars(
        select(CiJob).where(CiJob.status == CiStatus.IN_PROGRESS.value, CiJob.lease_expires_at < now)
    ).all()
    for job in lost:
        note = f"[diskci: the worker stopped reporting; its lease ran out at {job.lease_expires_at}]"
        stored = (
            session.scalar(select(func.count()).select_from(CiLogRow).where(CiLogRow.job_id == job.id)) or 0
        )
        session.add(CiLogRow(job_id=job.id, index=stored, time=now, content=note))
        _finish(job, CiConclusion.FAILURE.value, now, reason="worker_lost")
        session.flush()
        _release_runner(session, job.runner_id)
        _advance(session, job.run, now)
    return list(lost)
