"""CI runs of the embedded backend, read as Gitea's API reads them: a run with its jobs and steps, a
job's log by row offset. Statuses and conclusions are Gitea's words, so both backends read the same.

``bootstrap_disk_image_ci`` starts a run of the workflow at a ref of the platform's image-build
repository (a ``workflow_dispatch`` with input ``arches``); the repository is read (fetched) before the
action's write transaction begins, so a slow remote never holds the database. A queued job no live
runner can take says which labels it waits for (``waiting_for_labels``).
``system_cancel_disk_image_ci_run`` cancels what is not finished (runners learn it at their next call).
``system_list_disk_image_ci_runs`` lists runs newest first, a page at a time (``before_id``).

A platform whose CI backend is ``gitea`` answers the same actions through ``ci.gitea_runs``: bootstrap
dispatches the workflow in Gitea, a run is synced from Gitea when it is read (a Gitea outage answers
the last known state with ``sync_error``), logs are Gitea's, cancel is Gitea's (or cancel-requested).
No write transaction is open while Gitea answers: the read actions read in their own read session
(which never blocks writers) and write what changed in a short session after Gitea's calls;
bootstrap and cancel read in short sessions before their own write transaction begins.
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
from diskci.platform.ci import gitea_runs, scheduler, triggers
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
from diskci.platform.gitea.platform_client import is_gitea_backed
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
    sync_error: str | None = Field(
        default=None,
        description="gitea backend: why Gitea could not be read just now (the run shows its last state)",
    )


def _gitea_run(ctx: ActionContext, run_id: int) -> bool:
    """Whether the run is a Gitea-backed platform's, read in its own session: a writing action's own
    session (``BEGIN IMMEDIATE`` on SQLite) must stay untouched until Gitea has answered."""
    if ctx.database is None:
        return False
    with ctx.database.read_session() as session:
        run = session.get(CiRun, run_id)
        return run is not None and is_gitea_backed(run.platform)


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
    if is_gitea_backed(run.platform) and ctx.database is not None:
        synced = gitea_runs.sync(ctx.database, ctx.box, run.id, reader=ctx.session)
        if synced.written:
            ctx.session.rollback()  # a new read: the rows as the sync left them
            run = _run(ctx, data.run_id)
        return _run_out(run, [], synced.runner_names)
    live = _live_label_sets(ctx.session) if any(j.status == CiStatus.QUEUED.value for j in run.jobs) else []
    return _run_out(run, live)


def _run_out(run: CiRun, live: list[set[str]], gitea_runners: dict[int, str] | None = None) -> RunOut:
    """The run as the actions show it; a Gitea-backed run's jobs name Gitea's runners (as last read)."""

    def runner(job: CiJob) -> str | None:
        if job.gitea_job_id is not None:
            return (gitea_runners or {}).get(job.gitea_job_id)
        return job.runner.name if job.runner is not None else None

    jobs = [
        JobOut(
            name=job.name,
            status=job.status,
            conclusion=job.conclusion,
            failure_reason=job.failure_reason,
            labels=list(job.labels),
            runner=runner(job),
            waiting_for_labels=waiting_for_labels(job, live) if job.gitea_job_id is None else [],
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
        sync_error=run.sync_error,
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
    if is_gitea_backed(run.platform) and ctx.database is not None:
        return _gitea_logs(ctx, run, data)
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


def _gitea_logs(ctx: ActionContext, run: CiRun, data: GetLogsInput) -> LogsOut:
    """A Gitea-backed job's log rows, read from Gitea (the run is synced first when the job is not
    known yet); a job without a log yet answers no rows."""
    assert ctx.database is not None
    job = next((j for j in run.jobs if j.name == data.job_name), None)
    if job is None and gitea_runs.sync(ctx.database, ctx.box, run.id, reader=ctx.session).written:
        ctx.session.rollback()
        run = _run(ctx, data.run_id)
        job = next((j for j in run.jobs if j.name == data.job_name), None)
    if job is None or job.gitea_job_id is None:
        names = ", ".join(j.name for j in run.jobs)
        raise CiJobNotFound(f"CI run {run.id} has no job {data.job_name!r} (its jobs: {names})")
    text = gitea_runs.job_log(ctx.box, run.platform, job.gitea_job_id)
    rows = text.splitlines() if text else []
    page = rows[data.offset : data.offset + data.limit]
    more = len(rows) > data.offset + data.limit
    complete = job.log_complete and text is not None and not more
    return LogsOut(logs=page, next_offset=data.offset + len(page), complete=complete)


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
            if is_gitea_backed(platform):
                return _gitea_bootstrap(ctx, data, platform.id, arches)
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


def _gitea_bootstrap(
    ctx: ActionContext, data: BootstrapInput, platform_id: int, arches: list[str]
) -> BootstrapOutput:
    """The run made first (its run_id), then Gitea's dispatch; a refusal fails the run and is raised."""
    assert ctx.database is not None
    if data.reproducibility_check:
        raise InvalidRequest(
            "reproducibility_check: the gitea CI backend runs the workflow as Gitea has it; "
            "a reproducibility check needs the embedded backend"
        )
    with ctx.database.session() as session:
        platform = session.get(NodePlatform, platform_id)
        if platform is None:
            raise PlatformNotFound(f"no node platform with id {platform_id}")
        run_id = gitea_runs.create_dispatched_run(session, platform, data.ref, arches, ctx.actor).id
    refused = gitea_runs.dispatch(ctx.database, ctx.box, run_id)
    if refused is not None:
        refused.hint = f"CI run {run_id} failed (failure_reason {gitea_runs.REFUSED})."
        raise refused
    run = _run(ctx, run_id)
    return BootstrapOutput(
        run_id=run.id,
        status=run.status,
        platform=run.platform.name,
        ref=run.ref,
        sha=run.sha,
        event=run.event,
        arches=arches,
        reproducibility_check=False,
        jobs=[j.name for j in run.jobs],
    )


class CancelRunOutput(ActionModel):
    run_id: int
    status: str
    conclusion: str | None
    cancelled_jobs: list[str] = Field(description="the jobs that were not finished and are now cancelled")
    cancel_requested: bool = Field(
        default=False,
        description="gitea backend without a cancel API: the run is marked cancel-requested and the runners"
        " running its jobs were deregistered; it ends when Gitea notices",
    )


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
    if _gitea_run(ctx, data.run_id):
        return _gitea_cancel(ctx, data.run_id)
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


def _gitea_cancel(ctx: ActionContext, run_id: int) -> CancelRunOutput:
    """Cancel through Gitea (its REST cancel, or cancel-requested with the runners deregistered)."""
    assert ctx.database is not None
    with ctx.database.read_session() as session:
        found = session.get(CiRun, run_id)
        if found is None:
            raise CiRunNotFound(f"no CI run {run_id}")
        _check_cancellable(found)
    outcome = gitea_runs.cancel(ctx.database, ctx.box, run_id, ctx.actor)
    run = _run(ctx, run_id)
    return CancelRunOutput(
        run_id=run.id,
        status=run.status,
        conclusion=run.conclusion,
        cancelled_jobs=outcome.cancelled_jobs,
        cancel_requested=outcome.cancel_requested,
    )
