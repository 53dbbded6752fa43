"""CI runs of the embedded backend, read as Gitea's API reads them: a run with its jobs and steps, a
job's log by row offset. Statuses and conclusions are Gitea's words, so both backends read the same.

``bootstrap_disk_image_ci`` starts a run of the workflow at a ref of the platform's image-build
repository (a ``workflow_dispatch`` with input ``arches``); the repository is read (fetched) before the
action's write transaction begins, so a slow remote never holds the database. A queued job no live
runner can take says which labels it waits for (``waiting_for_labels``).
``system_cancel_disk_image_ci_run`` cancels what is not finished (runners learn it at their next call).
``system_list_disk_image_ci_runs`` lists runs newest first, a page at a time (``before_id``).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from diskci.errors import Conflict, InvalidRequest, NotFound
from diskci.platform.actions.catalog import ActionContext, ActionModel, OneOrMany, action
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import PlatformNotFound, get_platform
from diskci.platform.ci import scheduler, triggers
from diskci.platform.ci.runners import label_names
from diskci.platform.db.models import (
    CiJob,
    CiLogRow,
    CiRun,
    CiRunner,
    CiRunnerStatus,
    CiStatus,
    NodePlatform,
    Role,
    utcnow,
)
from diskci.spec import Architecture

MAX_LOG_PAGE = 5000
RUNNER_LIVE = timedelta(seconds=90)  # a runner that called within this is live (they poll every few s)


class CiRunNotFound(NotFound):
    pass


class CiJobNotFound(NotFound):
    pass


class UndefinedArchitecture(InvalidRequest):
    """Architectures asked of a platform that does not define them."""


class RunAlreadyCompleted(Conflict):
    """A CI run that is completed cannot be cancelled."""


class GetRunInput(ActionModel):
    run_id: int = Field(ge=1)


class StepOut(ActionModel):
    name: str
    status: str
    conclusion: str | None


class JobOut(ActionModel):
    name: str
    status: str
    conclusion: str | None
    failure_reason: str | None = Field(description="why it failed when the platform knows (worker_lost)")
    labels: list[str]
    runner: str | None = Field(description="the name of the CI worker that ran it")
    waiting_for_labels: list[str] = Field(
        default_factory=list,
        description="a queued job that no live CI worker can take: the labels it waits for a worker with",
    )
    started_at: datetime | None
    completed_at: datetime | None
    steps: list[StepOut]


class RunOut(ActionModel):
    run_id: int
    platform: str
    ref: str
    sha: str
    event: str
    status: str = Field(description="queued, waiting, in_progress or completed")
    conclusion: str | None = Field(description="success, failure, cancelled or skipped, once completed")
    failure_reason: str | None = Field(
        default=None, description="why the run failed beyond its jobs' conclusions (not_reproducible)"
    )
    failure_detail: str | None = Field(
        default=None, description="what failed, e.g. each artifact whose two builds differ, with both digests"
    )
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    jobs: list[JobOut]
    publication_id: int | None = Field(description="the publication the run produced, once its webhook came")


def _run(ctx: ActionContext, run_id: int) -> CiRun:
    run = ctx.session.get(CiRun, run_id)
    if run is None:
        raise CiRunNotFound(f"no CI run {run_id}")
    return run


def _live_label_sets(session: Session) -> list[set[str]]:
    """The label names of each live runner (not revoked, not offline, heard from lately)."""
    since = utcnow() - RUNNER_LIVE
    rows = session.scalars(
        select(CiRunner.labels).where(
            CiRunner.revoked_at.is_(None),
            CiRunner.status != CiRunnerStatus.OFFLINE.value,
            CiRunner.status != CiRunnerStatus.REVOKED.value,
            CiRunner.last_seen >= since,
        )
    ).all()
    return [label_names(labels) for labels in rows]


def waiting_for_labels(job: CiJob, live: list[set[str]]) -> list[str]:
    """What a queued job waits for: [] when a live runner has all its labels; else the labels no live
    runner has, or all of them when each is somewhere but no one runner has them all."""
    if job.status != CiStatus.QUEUED.value:
        return []
    needed = set(job.labels)
    if any(needed <= names for names in live):
        return []
    anywhere = set().union(*live) if live else set()
    missing = sorted(needed - anywhere)
    return missing or sorted(needed)


@action("get_gitea_workflow_run", GetRunInput, RunOut, Role.VIEWER, read_only=True)
def get_gitea_workflow_run(ctx: ActionContext, data: GetRunInput) -> RunOut:
    """Show a CI run: its status and conclusion, each job with its worker and steps, the publication.

    A queued job that no live CI worker can take lists the labels it waits for (waiting_for_labels).
    A run whose reproducibility check failed has failure_reason not_reproducible and a failure_detail
    naming each artifact whose two builds differ, with both digests.

    Example: {"run_id": 12}
    """
    run = _run(ctx, data.run_id)
    live = _live_label_sets(ctx.session) if any(j.status == CiStatus.QUEUED.value for j in run.jobs) else []
    jobs = [
        JobOut(
            name=job.name,
            status=job.status,
            conclusion=job.conclusion,
            failure_reason=job.failure_reason,
            labels=list(job.labels),
            runner=job.runner.name if job.runner is not None else None,
            waiting_for_labels=waiting_for_labels(job, live),
            started_at=job.started_at,
            completed_at=job.completed_at,
            steps=[
                StepOut(
                    name=str(s.get("name", "")),
                    status=str(s.get("status", "")),
                    conclusion=s.get("conclusion"),
                )
                for s in job.steps
            ],
        )
        for job in run.jobs
    ]
    return RunOut(
        run_id=run.id,
        platform=run.platform.name,
        ref=run.ref,
        sha=run.sha,
        event=run.event,
        status=run.status,
        conclusion=run.conclusion,
        failure_reason=run.failure_reason,
        failure_detail=run.failure_detail,
        created_at=run.created_at,
        started_at=run.started_at,
        completed_at=run.completed_at,
        jobs=jobs,
        publication_id=run.publication_id,
    )


class GetLogsInput(ActionModel):
    run_id: int = Field(ge=1)
    job_name: str = Field(min_length=1, max_length=255, description='as the run lists it: "build amd64"')
    offset: int = Field(
        default=0, ge=0, description="the first row to return (the last answer's next_offset)"
    )
    limit: int = Field(default=1000, ge=1, le=MAX_LOG_PAGE)


class LogsOut(ActionModel):
    logs: list[str] = Field(description="the rows from offset on, oldest first")
    next_offset: int
    complete: bool = Field(description="true once the worker closed the log and every row was returned")


@action("get_gitea_job_logs", GetLogsInput, LogsOut, Role.VIEWER, read_only=True)
def get_gitea_job_logs(ctx: ActionContext, data: GetLogsInput) -> LogsOut:
    """Read a CI job's log from a row offset (follow it by passing next_offset back).

    Example: {"run_id": 12, "job_name": "build amd64", "offset": 0}
    """
    run = _run(ctx, data.run_id)
    job = ctx.session.scalar(select(CiJob).where(CiJob.run_id == run.id, CiJob.name == data.job_name))
    if job is None:
        names = ", ".join(j.name for j in run.jobs)
        raise CiJobNotFound(f"CI run {run.id} has no job {data.job_name!r} (its jobs: {names})")
    rows = ctx.session.scalars(
        select(CiLogRow.content)
        .where(CiLogRow.job_id == job.id, CiLogRow.index >= data.offset)
        .order_by(CiLogRow.index)
        .limit(data.limit + 1)
    ).all()
    page = list(rows[: data.limit])
    more = len(rows) > data.limit
    return LogsOut(logs=page, next_offset=data.offset + len(page), complete=job.log_complete and not more)


# --- listing runs ---------------------------------------------------------------------------------------

RunStatusName = Literal["queued", "waiting", "in_progress", "completed"]


class ListRunsInput(ActionModel):
    node_platform: str | None = Field(default=None, description="Only the runs of this node platform.")
    status: OneOrMany[RunStatusName] | None = Field(default=None, description="Only runs in these statuses.")
    limit: int = Field(default=50, ge=1, le=500)
    before_id: int | None = Field(
        default=None, ge=1, description="Only runs older than this run_id (the last answer's next_before_id)."
    )


class RunSummaryOut(ActionModel):
    run_id: int
    platform: str
    ref: str
    sha: str
    event: str
    status: str
    conclusion: str | None
    failure_reason: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    duration_seconds: float | None = Field(
        description="completed_at - started_at; for a run in progress, the time since it started"
    )
    jobs: int = Field(description="how many jobs the run has")
    publication_id: int | None


class ListRunsOutput(ActionModel):
    runs: list[RunSummaryOut]
    next_before_id: int | None = Field(description="pass as before_id for the next page; null on the last")


def _duration(run: CiRun, now: datetime) -> float | None:
    if run.started_at is None:
        return None
    return ((run.completed_at or now) - run.started_at).total_seconds()


@action("system_list_disk_image_ci_runs", ListRunsInput, ListRunsOutput, Role.VIEWER, read_only=True)
def system_list_disk_image_ci_runs(ctx: ActionContext, data: ListRunsInput) -> ListRunsOutput:
    """List CI runs, newest first, optionally of one node platform and in some statuses, a page at a time.

    Example: {"node_platform": "debian-12-amd64", "status": ["in_progress"], "limit": 20}
    """
    conditions: list[Any] = []
    if data.node_platform is not None:
        conditions.append(CiRun.platform_id == get_platform(ctx.session, data.node_platform).id)
    if data.status:
        conditions.append(CiRun.status.in_(data.status))
    if data.before_id is not None:
        conditions.append(CiRun.id < data.before_id)
    rows = list(
        ctx.session.scalars(
            select(CiRun).where(*conditions).order_by(CiRun.id.desc()).limit(data.limit + 1)
        ).unique()
    )
    page = rows[: data.limit]
    counts: dict[int, int] = {}
    if page:
        counted = ctx.session.execute(
            select(CiJob.run_id, func.count())
            .where(CiJob.run_id.in_([r.id for r in page]))
            .group_by(CiJob.run_id)
        ).all()
        counts = {int(run_id): int(n) for run_id, n in counted}
    runs = [
        RunSummaryOut(
            run_id=run.id,
            platform=run.platform.name,
            ref=run.ref,
            sha=run.sha,
            event=run.event,
            status=run.status,
            conclusion=run.conclusion,
            failure_reason=run.failure_reason,
            created_at=run.created_at,
            started_at=run.started_at,
            completed_at=run.completed_at,
            duration_seconds=_duration(run, ctx.now),
            jobs=counts.get(run.id, 0),
            publication_id=run.publication_id,
        )
        for run in page
    ]
    return ListRunsOutput(runs=runs, next_before_id=page[-1].id if len(rows) > data.limit else None)


# --- starting and cancelling runs ----------------------------------------------------------------------


class BootstrapInput(ActionModel):
    node_platform_id: int | None = Field(default=None, ge=1, description="The platform, by id ...")
    node_platform: str | None = Field(default=None, min_length=1, max_length=128, description="... or name.")
    ref: str = Field(
        min_length=1,
        max_length=255,
        description="A tag (v0.3.0, refs/tags/v0.3.0), a branch or a commit sha.",
    )
    arches: list[Architecture] | None = Field(
        default=None,
        min_length=1,
        description="Architectures to build (default: every one the platform has).",
    )
    reproducibility_check: bool = Field(
        default=False, description="Build every architecture twice (the second job named '... (rebuild)')."
    )

    @model_validator(mode="after")
    def _one_platform(self) -> BootstrapInput:
        if (self.node_platform_id is None) == (self.node_platform is None):
            raise ValueError("give node_platform_id or node_platform (its name), one of them")
        return self


class BootstrapOutput(ActionModel):
    run_id: int
    status: str
    platform: str
    ref: str = Field(description="the ref as resolved: refs/tags/v0.3.0, refs/heads/main, or the sha")
    sha: str
    event: str
    arches: list[str]
    reproducibility_check: bool
    jobs: list[str] = Field(description="the run's jobs, in order")


def _platform_of(session: Session, data: BootstrapInput) -> NodePlatform:
    if data.node_platform is not None:
        return get_platform(session, data.node_platform)
    platform = session.get(NodePlatform, data.node_platform_id)
    if platform is None:
        raise PlatformNotFound(f"no node platform with id {data.node_platform_id}")
    return platform


def _arches(platform: NodePlatform, asked: list[Architecture] | None) -> list[str]:
    defined = list(platform.architectures)
    if asked is None:
        return defined
    names = list(dict.fromkeys(a.value for a in asked))
    undefined = [a for a in names if a not in defined]
    if undefined:
        raise UndefinedArchitecture(
            f"node platform {platform.name!r} does not define {', '.join(undefined)}"
            f" (it defines {', '.join(defined) or 'none'})"
        )
    return names


@action("bootstrap_disk_image_ci", BootstrapInput, BootstrapOutput, Role.OPERATOR)
def bootstrap_disk_image_ci(ctx: ActionContext, data: BootstrapInput) -> BootstrapOutput:
    """Start a CI run of the platform's build workflow at a ref of its image-build repository.

    The ref is resolved in the repository (an unknown ref is refused and no run is made); the workflow
    is read at that commit and split into jobs (one build per architecture, then publish).

    Example: {"node_platform": "debian-12-amd64", "ref": "v0.3.0", "arches": ["amd64", "arm64"]}
    """
    # 1. read what the git work needs, then do it outside the write transaction (it may fetch)
    reader = ctx.database.read_session() if ctx.database is not None else None
    if reader is not None:
        with reader as session:
            platform = _platform_of(session, data)
            arches = _arches(platform, data.arches)
            source = triggers.git_source(ctx.settings, platform)
    else:
        platform = _platform_of(ctx.session, data)
        arches = _arches(platform, data.arches)
        source = triggers.git_source(ctx.settings, platform)
    resolved = source.resolve(data.ref)
    workflow_text = triggers.read_workflow(source, resolved)
    # 2. the run, in the action's unit of work
    platform = _platform_of(ctx.session, data)
    arches = _arches(platform, data.arches)  # the platform may have changed meanwhile
    started = triggers.start_run(
        ctx.session,
        platform,
        resolved,
        workflow_text,
        event="workflow_dispatch",
        inputs={"arches": json.dumps(arches, separators=(",", ":"))},
        reproducibility_check=data.reproducibility_check,
    )
    run = started.run
    record_event(
        ctx.session,
        "ci_run_queued",
        platform=platform,
        subject=f"run {run.id}",
        payload={
            "actor": ctx.actor,
            "run_id": run.id,
            "ref": run.ref,
            "sha": run.sha,
            "event": run.event,
            "arches": arches,
            "reproducibility_check": run.reproducibility_check,
        },
    )
    return BootstrapOutput(
        run_id=run.id,
        status=run.status,
        platform=platform.name,
        ref=run.ref,
        sha=run.sha,
        event=run.event,
        arches=arches,
        reproducibility_check=run.reproducibility_check,
        jobs=[j.name for j in run.jobs],
    )


class CancelRunOutput(ActionModel):
    run_id: int
    status: str
    conclusion: str | None
    cancelled_jobs: list[str] = Field(description="the jobs that were not finished and are now cancelled")


def _check_cancellable(run: CiRun) -> None:
    if run.status == CiStatus.COMPLETED.value:
        raise RunAlreadyCompleted(
            f"CI run {run.id} is already completed ({run.conclusion}): nothing to cancel"
        )


def preview_cancel_disk_image_ci_run(ctx: ActionContext, data: GetRunInput) -> dict[str, object]:
    """What cancelling the run would affect: the run and its unfinished jobs (with their workers). A
    completed run is refused here, before any confirmation is asked (RunAlreadyCompleted)."""
    run = _run(ctx, data.run_id)
    _check_cancellable(run)
    return {
        "run": {
            "run_id": run.id,
            "platform": run.platform.name,
            "ref": run.ref,
            "status": run.status,
            "conclusion": run.conclusion,
        },
        "jobs_cancelled": [
            {
                "job_name": job.name,
                "status": job.status,
                "runner": job.runner.name if job.runner is not None else None,
            }
            for job in run.jobs
            if job.status != CiStatus.COMPLETED.value
        ],
    }


@action(
    "system_cancel_disk_image_ci_run",
    GetRunInput,
    CancelRunOutput,
    Role.OPERATOR,
    destructive=True,
    preview=preview_cancel_disk_image_ci_run,
)
def system_cancel_disk_image_ci_run(ctx: ActionContext, data: GetRunInput) -> CancelRunOutput:
    """Cancel a CI run: every job not finished ends cancelled; a worker running one stops it.

    Example: {"run_id": 12}
    """
    run = _run(ctx, data.run_id)
    _check_cancellable(run)
    cancelled = scheduler.cancel_run(ctx.session, run, now=ctx.now)
    record_event(
        ctx.session,
        "ci_run_cancelled",
        platform_id=run.platform_id,
        subject=f"run {run.id}",
        payload={"actor": ctx.actor, "run_id": run.id, "jobs": [j.name for j in cancelled]},
    )
    return CancelRunOutput(
        run_id=run.id,
        status=run.status,
        conclusion=run.conclusion,
        cancelled_jobs=[j.name for j in cancelled],
    )
