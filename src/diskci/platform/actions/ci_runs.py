"""CI runs of the embedded backend, read as Gitea's API reads them: a run with its jobs and steps, a
job's log by row offset. Statuses and conclusions are Gitea's words, so both backends read the same.

Starting a run (``bootstrap_disk_image_ci``) waits for a NodePlatform's image-build repository setting.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field
from sqlalchemy import select

from diskci.errors import NotFound
from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.db.models import CiJob, CiLogRow, CiRun, Role

MAX_LOG_PAGE = 5000


class CiRunNotFound(NotFound):
    pass


class CiJobNotFound(NotFound):
    pass


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


@action("get_gitea_workflow_run", GetRunInput, RunOut, Role.VIEWER, read_only=True)
def get_gitea_workflow_run(ctx: ActionContext, data: GetRunInput) -> RunOut:
    """Show a CI run: its status and conclusion, each job with its worker and steps, the publication.

    Example: {"run_id": 12}
    """
    run = _run(ctx, data.run_id)
    jobs = [
        JobOut(
            name=job.name,
            status=job.status,
            conclusion=job.conclusion,
            failure_reason=job.failure_reason,
            labels=list(job.labels),
            runner=job.runner.name if job.runner is not None else None,
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
