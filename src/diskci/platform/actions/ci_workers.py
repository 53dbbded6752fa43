"""CI workers as NodeInstances (runbook phases 1 and 7): provision one on a compute provider, list
them with what their runners' heartbeats say, read a worker's host statistics, terminate one.

A CI worker is a NodeInstance with the ``gitea-runner`` module whose ``build_targets`` are its
runner's labels. The actions change the database at once and queue the provider's slow work as a
Task (``services.worker_lifecycle``; queued once the action's transaction has committed, and
recovered like every task when its message is lost). Roles: provisioning mints a runner
registration token, and a runner receives its jobs' secrets, so it needs ``admin``; terminating only
takes capability away (``operator``); reading is ``viewer``.

Terminating a worker already ``terminated`` is not an error: the answer is its state (idempotent),
with the task that terminated it.

A worker of a Gitea-backed node platform (``ci_backend`` gitea) runs Gitea's act_runner instead of
diskci's runner (``services.gitea_workers``): it registers with the platform's Gitea, with the token
Gitea gives for the platform's repository; the list reads its status from Gitea's runner list (one
call per platform); terminating it deregisters the runner in Gitea and cancels the jobs Gitea says it
runs, in the termination task. The ``local`` provider cannot run act_runner here: it is refused.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from diskci.errors import Conflict, InvalidRequest, NotFound
from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import get_platform
from diskci.platform.ci import runners
from diskci.platform.db.models import CiJob, CiRunner, CiStatus, NodeInstance, Role, Task, TaskStatus
from diskci.platform.gitea.platform_client import is_gitea_backed, repository_of
from diskci.platform.providers import catalog
from diskci.platform.providers.base import RunnerAgent
from diskci.platform.services import gitea_workers
from diskci.platform.services.worker_lifecycle import (
    CI_WORKER_MODULE,
    PROVISION_TASK_KIND,
    TERMINATE_TASK_KIND,
    TOKEN_PURPOSE,
    InstanceStatus,
    open_tasks,
    revoke_and_cancel,
    runners_of,
)
from diskci.spec import Architecture

log = logging.getLogger(__name__)

OFFLINE_AFTER = timedelta(seconds=60)  # a runner not heard from this long is offline
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


class CiWorkerNotFound(NotFound):
    """No CI worker NodeInstance with that id."""


class HostnameInUse(Conflict):
    """Another CI worker that is not terminated has this hostname."""


class UnknownBuildTarget(InvalidRequest):
    """A build target that is not an architecture diskci builds (or not one of the named platform's)."""


class StatsNotAvailable(NotFound):
    """The worker's runner has not sent a heartbeat with its host's statistics yet."""


class CiWorkerInstanceOut(ActionModel):
    id: int
    hostname: str
    platform: str | None
    provider: str
    provider_id: str | None
    provider_region: str | None
    instance_type: str | None
    modules: list[str]
    build_targets: list[str]
    status: str
    status_reason: str | None
    created_at: datetime
    terminated_at: datetime | None

    @classmethod
    def of(cls, node: NodeInstance) -> CiWorkerInstanceOut:
        return cls(
            id=node.id,
            hostname=node.hostname,
            platform=node.platform.name if node.platform is not None else None,
            provider=node.provider,
            provider_id=node.provider_id,
            provider_region=node.provider_region,
            instance_type=node.instance_type,
            modules=list(node.modules),
            build_targets=list(node.build_targets),
            status=node.status,
            status_reason=node.status_reason,
            created_at=node.created_at,
            terminated_at=node.terminated_at,
        )


def _enqueue_after_commit(ctx: ActionContext, task_id: str) -> None:
    """Queue the Task row ``task_id`` once the action's transaction has committed (so the task finds
    its rows), through the adapter's queue port; if the queue is down or the adapter has none,
    recovery queues it when its lease has run out."""
    ports = ctx.ports

    def enqueue(_session: Session) -> None:
        try:
            ports.enqueue_worker_task(task_id)
        except Exception:
            log.warning("CI worker task %s: not queued now; recovery will queue it", task_id, exc_info=True)

    event.listen(ctx.session, "after_commit", enqueue, once=True)


def _new_task(ctx: ActionContext, kind: str, payload: dict[str, Any]) -> str:
    from diskci.platform.tasks import lease_until

    task_id = uuid.uuid4().hex
    ctx.session.add(
        Task(
            task_id=task_id,
            kind=kind,
            payload=payload,
            status=TaskStatus.QUEUED.value,
            created_at=ctx.now,
            lease_expires_at=lease_until(ctx.settings.task_lease_seconds, ctx.now),
        )
    )
    ctx.session.flush()
    _enqueue_after_commit(ctx, task_id)
    return task_id


# provision


class ProvisionCiWorkerInput(ActionModel):
    hostname: str = Field(
        min_length=1, max_length=253, description="The worker's host name (its runner's name)."
    )
    provider: str = Field(default="local", description="The compute provider: local or ec2.")
    provider_region_id: str = Field(min_length=1, max_length=64, description="A region of the provider.")
    provider_instance_type_id: str = Field(
        min_length=1, max_length=64, description="An instance type of the provider in that region."
    )
    build_targets: list[str] = Field(
        min_length=1, max_length=8, description="The architectures it builds: its runner's labels."
    )
    node_platform: str | None = Field(
        default=None,
        description="The node platform it builds for (its build targets must be the platform's).",
    )


class ProvisionCiWorkerOutput(ActionModel):
    instance: CiWorkerInstanceOut
    runner_token: str = Field(
        description="The one-time registration token of its runner; shown only now (a Gitea-backed "
        "platform's worker: the registration token Gitea gives for the platform's repository)."
    )
    registration_url: str = Field(
        description="Where its runner registers (the platform's URL; a Gitea-backed platform's Gitea)."
    )
    task_id: str = Field(description="The provisioning task (system_get_task).")


def _build_targets(ctx: ActionContext, data: ProvisionCiWorkerInput) -> list[str]:
    known = [a.value for a in Architecture]
    allowed = known
    if data.node_platform is not None:
        allowed = list(get_platform(ctx.session, data.node_platform).architectures)
    targets = list(dict.fromkeys(data.build_targets))
    for target in targets:
        if target not in allowed:
            where = f"platform {data.node_platform!r}" if data.node_platform is not None else "diskci"
            raise UnknownBuildTarget(
                f"build_targets: {target!r} is not an architecture {where} builds "
                f"(choices: {', '.join(allowed)})"
            )
    return runners.check_labels(targets)


@action("system_provision_ci_worker", ProvisionCiWorkerInput, ProvisionCiWorkerOutput, Role.ADMIN)
def system_provision_ci_worker(ctx: ActionContext, data: ProvisionCiWorkerInput) -> ProvisionCiWorkerOutput:
    """Provision a CI worker: a NodeInstance, made by a compute provider, whose runner builds its targets.

    The provider makes the machine in a queued task (follow it by task_id); its runner registers with
    the one-time token, shown only in this answer, and then shows online in system_list_ci_workers.
    For a node_platform whose CI backend is gitea the worker runs act_runner, registering with the
    platform's Gitea with Gitea's token (provider ec2; a Gitea outage makes nothing).

    Example: {"hostname": "ci-1", "provider": "local", "provider_region_id": "local",
    "provider_instance_type_id": "local.small", "build_targets": ["amd64", "arm64"]}
    """
    hostname = data.hostname.strip().lower()
    if not _HOSTNAME.match(hostname):
        raise InvalidRequest(f"hostname {data.hostname!r}: not a host name (letters, digits, '-' and '.')")
    provider_catalog = catalog(data.provider)
    provider_catalog.instance_type(data.provider_region_id, data.provider_instance_type_id)
    targets = _build_targets(ctx, data)
    platform = get_platform(ctx.session, data.node_platform) if data.node_platform is not None else None
    gitea_backed = platform is not None and is_gitea_backed(platform)
    if gitea_backed and data.provider == "local":
        raise InvalidRequest(
            f"provider 'local' cannot run act_runner, the agent of node platform {data.node_platform!r} "
            "(its CI backend is gitea): provision its CI workers with provider ec2"
        )
    for other in _workers(ctx.session):
        if other.hostname == hostname and other.status != InstanceStatus.TERMINATED.value:
            raise HostnameInUse(f"hostname {hostname!r}: CI worker {other.id} ({other.status}) has it")
    gitea_registration = None
    if gitea_backed:
        assert platform is not None
        gitea_registration = gitea_workers.registration_for(platform, ctx.box)  # before anything is made
    instance = NodeInstance(
        hostname=hostname,
        platform=platform,
        mac_addresses=[],
        provider=data.provider,
        provider_region=data.provider_region_id,
        instance_type=data.provider_instance_type_id,
        modules=[CI_WORKER_MODULE],
        build_targets=targets,
        status=InstanceStatus.PROVISIONING.value,
        created_at=ctx.now,
    )
    ctx.session.add(instance)
    ctx.session.flush()
    if gitea_registration is not None:
        token, registration_url = gitea_registration.token, gitea_registration.url
        agent = RunnerAgent.ACT_RUNNER
    else:
        token = runners.new_registration_token(
            ctx.session, labels=targets, instance_id=instance.id, now=ctx.now
        )
        registration_url, agent = ctx.settings.ci_base_url, RunnerAgent.DISKCI
    task_id = _new_task(
        ctx,
        PROVISION_TASK_KIND,
        {
            "instance_id": instance.id,
            "registration_url": registration_url,
            "registration_token_encrypted": ctx.box.encrypt(token, purpose=TOKEN_PURPOSE),
            "agent": agent.value,
        },
    )
    record_event(
        ctx.session,
        "ci_worker_provisioning",
        platform=platform,
        subject=hostname,
        payload={
            "actor": ctx.actor,
            "instance_id": instance.id,
            "provider": data.provider,
            "region": data.provider_region_id,
            "instance_type": data.provider_instance_type_id,
            "build_targets": targets,
            "task_id": task_id,
            "agent": agent.value,
        },
    )
    return ProvisionCiWorkerOutput(
        instance=CiWorkerInstanceOut.of(instance),
        runner_token=token,
        registration_url=registration_url,
        task_id=task_id,
    )


# list


class CurrentJob(ActionModel):
    run_id: int
    job_name: str


class CiWorkerOut(ActionModel):
    id: int
    hostname: str
    status: str = Field(description="provisioning, online, offline, busy, terminating, terminated or failed.")
    status_reason: str | None
    labels: list[str]
    current_job: CurrentJob | None
    last_seen: datetime | None
    provider: str
    provider_id: str | None
    provider_region: str | None
    instance_type: str | None
    gitea_runner_id: int | None = Field(
        default=None, description="A Gitea-backed platform's worker: its runner's id in Gitea, once known."
    )


class ListCiWorkersInput(ActionModel):
    include_terminated: bool = Field(default=False, description="Also list the terminated workers.")


class ListCiWorkersOutput(ActionModel):
    workers: list[CiWorkerOut]


def _workers(session: Session) -> list[NodeInstance]:
    rows = session.scalars(select(NodeInstance).order_by(NodeInstance.id)).unique()
    return [n for n in rows if CI_WORKER_MODULE in (n.modules or [])]


def _live_runner(session: Session, instance_id: int) -> CiRunner | None:
    """The worker's runner: the newest one registered for it."""
    found = runners_of(session, instance_id)
    return found[-1] if found else None


def _worker_status(node: NodeInstance, runner: CiRunner | None, job: CiJob | None, now: datetime) -> str:
    if node.status != InstanceStatus.RUNNING.value:
        return node.status  # provisioning, terminating, terminated, failed
    if runner is None:
        return InstanceStatus.PROVISIONING.value  # the machine runs; its runner has not registered yet
    if runner.revoked_at is not None or runner.last_seen is None or now - runner.last_seen > OFFLINE_AFTER:
        return "offline"
    return "busy" if job is not None else "online"


@action("system_list_ci_workers", ListCiWorkersInput, ListCiWorkersOutput, Role.VIEWER, read_only=True)
def system_list_ci_workers(ctx: ActionContext, data: ListCiWorkersInput) -> ListCiWorkersOutput:
    """List the CI workers: status from the instance and its runner's heartbeats, labels, current job.

    A worker whose runner was not heard from for a minute is offline; one with a job in progress, busy.
    A Gitea-backed platform's worker shows what Gitea's runner list says (one call per platform): it is
    provisioning until its act_runner registered; while Gitea is down, the last status Gitea gave,
    with the reason.

    Example: {} or {"include_terminated": true}
    """
    out = []
    listed = [
        node
        for node in _workers(ctx.session)
        if node.status != InstanceStatus.TERMINATED.value or data.include_terminated
    ]
    seen: dict[int, gitea_workers.RunnersSeen] = {}
    for node in listed:
        platform = gitea_workers.gitea_platform(node)
        if platform is not None and node.status == InstanceStatus.RUNNING.value and platform.id not in seen:
            seen[platform.id] = gitea_workers.runners_seen(platform, ctx.box)
    for node in listed:
        if node.platform_id in seen and node.status == InstanceStatus.RUNNING.value:
            out.append(_gitea_worker(ctx, node, seen[node.platform_id]))
            continue
        runner = _live_runner(ctx.session, node.id)
        job = None
        if runner is not None:
            job = ctx.session.scalar(
                select(CiJob)
                .where(CiJob.runner_id == runner.id, CiJob.status == CiStatus.IN_PROGRESS.value)
                .order_by(CiJob.id)
                .limit(1)
            )
        out.append(
            CiWorkerOut(
                id=node.id,
                hostname=node.hostname,
                status=_worker_status(node, runner, job, ctx.now),
                status_reason=node.status_reason,
                labels=list(runner.labels if runner is not None else node.build_targets),
                current_job=CurrentJob(run_id=job.run_id, job_name=job.name) if job is not None else None,
                last_seen=runner.last_seen if runner is not None else None,
                provider=node.provider,
                provider_id=node.provider_id,
                provider_region=node.provider_region,
                instance_type=node.instance_type,
                gitea_runner_id=node.gitea_runner_id,
            )
        )
    return ListCiWorkersOutput(workers=out)


def _gitea_worker(ctx: ActionContext, node: NodeInstance, seen: gitea_workers.RunnersSeen) -> CiWorkerOut:
    """A running Gitea-backed worker as Gitea's runner list shows it; what Gitea said of its runner is
    remembered on the instance (its own unit of work: this action's session only reads)."""
    view = gitea_workers.worker_view(node, seen)
    last_seen = view.last_seen
    if seen.runners is not None and ctx.database is not None:
        runner = gitea_workers.find_runner(seen.runners, name=node.hostname, runner_id=node.gitea_runner_id)
        if runner is not None:
            last_seen = gitea_workers.remember(ctx.database, node.id, runner, ctx.now)
    return CiWorkerOut(
        id=node.id,
        hostname=node.hostname,
        status=view.status,
        status_reason=view.reason,
        labels=view.labels or list(node.build_targets),
        current_job=None,
        last_seen=last_seen,
        provider=node.provider,
        provider_id=node.provider_id,
        provider_region=node.provider_region,
        instance_type=node.instance_type,
        gitea_runner_id=view.runner_id,
    )


def _worker(session: Session, instance_id: int) -> NodeInstance:
    node = session.get(NodeInstance, instance_id)
    if node is None or CI_WORKER_MODULE not in (node.modules or []):
        raise CiWorkerNotFound(f"no CI worker with id {instance_id}")
    return node


# stats (system_get_instance_stats with an instance_id: see actions.instances)


class WorkerHostStats(ActionModel):
    """A worker's host as its runner's last heartbeat gave it (bytes)."""

    instance_id: int
    hostname: str
    disk: dict[str, Any] = Field(description="The work directory's file system: path, total, free.")
    memory: dict[str, Any] = Field(description="total, available.")
    load: list[float] = Field(description="Load averages over 1, 5 and 15 minutes.")
    stats_at: datetime


def worker_host_stats(session: Session, instance_id: int) -> WorkerHostStats:
    """The host statistics of CI worker ``instance_id`` (``StatsNotAvailable`` before any heartbeat)."""
    node = _worker(session, instance_id)
    runner = _live_runner(session, node.id)
    if runner is None or runner.stats is None or runner.stats_at is None:
        raise StatsNotAvailable(
            f"CI worker {instance_id} ({node.hostname}) has sent no statistics yet"
            + ("" if runner is not None else ": its runner has not registered")
        )
    stats = runner.stats
    return WorkerHostStats(
        instance_id=node.id,
        hostname=node.hostname,
        disk=dict(stats.get("disk") or {}),
        memory=dict(stats.get("memory") or {}),
        load=[float(x) for x in stats.get("load") or []],
        stats_at=runner.stats_at,
    )


# terminate


class TerminateCiWorkerInput(ActionModel):
    id: int = Field(description="The CI worker's NodeInstance id.")


class TerminateCiWorkerOutput(ActionModel):
    task_id: str | None = Field(description="The termination task (system_get_task).")
    status: str = Field(description="terminating; terminated when it was already.")
    cancelled_jobs: list[CurrentJob] = Field(description="The jobs in progress this call cancelled.")


def preview_terminate_ci_worker(ctx: ActionContext, data: TerminateCiWorkerInput) -> dict[str, Any]:
    """What terminating the worker would affect: the worker, its runners' credentials, the jobs it has
    in progress (cancelled) and the machine the provider would destroy (nothing for a terminated one)."""
    node = _worker(ctx.session, data.id)
    terminated = node.status == InstanceStatus.TERMINATED.value
    runners_now = runners_of(ctx.session, node.id)
    jobs = []
    if runners_now and not terminated:
        jobs = list(
            ctx.session.scalars(
                select(CiJob)
                .where(
                    CiJob.runner_id.in_([r.id for r in runners_now]),
                    CiJob.status == CiStatus.IN_PROGRESS.value,
                )
                .order_by(CiJob.id)
            )
        )
    return {
        "worker": {"id": node.id, "hostname": node.hostname, "status": node.status},
        "runners_revoked": [] if terminated else [r.name for r in runners_now if r.revoked_at is None],
        "jobs_cancelled": [CurrentJob(run_id=j.run_id, job_name=j.name).model_dump() for j in jobs],
        "machine_destroyed": None
        if terminated
        else {
            "provider": node.provider,
            "provider_id": node.provider_id,
            "provider_region": node.provider_region,
            "instance_type": node.instance_type,
        },
        "gitea_runner_deregistered": _gitea_runner_preview(node) if not terminated else None,
        "already_terminated": terminated,
    }


def _gitea_runner_preview(node: NodeInstance) -> dict[str, Any] | None:
    """A Gitea-backed platform's worker: the runner deregistered in Gitea (its jobs there cancelled)."""
    platform = gitea_workers.gitea_platform(node)
    if platform is None:
        return None
    return {
        "gitea_url": platform.gitea_url,
        "repository": "/".join(repository_of(platform)),
        "runner_id": node.gitea_runner_id,
        "runner_name": node.hostname,
        "jobs": "its jobs in progress, as Gitea lists them, are cancelled",
    }


@action(
    "system_terminate_ci_worker",
    TerminateCiWorkerInput,
    TerminateCiWorkerOutput,
    Role.OPERATOR,
    destructive=True,
    preview=preview_terminate_ci_worker,
)
def system_terminate_ci_worker(ctx: ActionContext, data: TerminateCiWorkerInput) -> TerminateCiWorkerOutput:
    """Terminate a CI worker: its runner's token stops working now, its jobs in progress are cancelled
    (each with a ci_worker_job_cancelled event), then a task has the provider destroy the machine.
    A Gitea-backed platform's worker: the task first deregisters its runner in Gitea and cancels the
    jobs Gitea says it runs (each with the same event), then destroys the machine.

    Terminating it again retries a termination that failed; a terminated worker answers its state.

    Example: {"id": 3}
    """
    node = _worker(ctx.session, data.id)
    if node.status == InstanceStatus.TERMINATED.value:
        done = _tasks_of(ctx.session, TERMINATE_TASK_KIND, node.id)
        return TerminateCiWorkerOutput(
            task_id=done[-1].task_id if done else None, status=node.status, cancelled_jobs=[]
        )
    cancelled = revoke_and_cancel(ctx.session, node, now=ctx.now, actor=ctx.actor)
    for task in open_tasks(ctx.session, PROVISION_TASK_KIND, node.id):
        if task.status == TaskStatus.QUEUED.value:  # not started: it never will
            task.status = TaskStatus.FAILED.value
            task.error = "cancelled: the CI worker is being terminated"
            task.finished_at = ctx.now
            task.lease_expires_at = None
    node.status = InstanceStatus.TERMINATING.value
    running = open_tasks(ctx.session, TERMINATE_TASK_KIND, node.id)
    task_id = (
        running[0].task_id
        if running
        else _new_task(ctx, TERMINATE_TASK_KIND, {"instance_id": node.id, "actor": ctx.actor})
    )
    jobs = [CurrentJob(run_id=j.run_id, job_name=j.name) for j in cancelled]
    record_event(
        ctx.session,
        "ci_worker_terminating",
        platform_id=node.platform_id,
        subject=node.hostname,
        payload={
            "actor": ctx.actor,
            "instance_id": node.id,
            "task_id": task_id,
            "cancelled_jobs": [j.model_dump() for j in jobs],
        },
    )
    return TerminateCiWorkerOutput(task_id=task_id, status=node.status, cancelled_jobs=jobs)


def _tasks_of(session: Session, kind: str, instance_id: int) -> list[Task]:
    rows = session.scalars(select(Task).where(Task.kind == kind).order_by(Task.id))
    return [t for t in rows if (t.payload or {}).get("instance_id") == instance_id]
