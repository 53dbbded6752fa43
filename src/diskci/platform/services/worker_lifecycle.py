"""The life of a CI worker NodeInstance: provisioned by a compute provider, revoked, terminated.

The actions (``actions.ci_workers``) change the database at once and queue the slow part; the queued
tasks (``tasks.py``, kinds ``ci_worker_provision`` and ``ci_worker_terminate``) call ``run_step``,
and ``step_failed`` when an attempt fails. Every step is idempotent, so a retried or recovered task
finishes what a failed or abandoned one began:

1. provision: ask the provider (``providers.provider``) to make the machine of the instance, with the
   one-time registration token (kept encrypted in the task's payload, never in clear); the instance
   becomes ``running``. A final failure leaves it ``failed`` with the reason, and an event.
2. terminate (``revoke_and_cancel`` ran in the action already, and runs again here): wait for a
   provisioning task still running; for a Gitea-backed platform's worker (its agent is act_runner,
   ``gitea_workers``) deregister its runner in Gitea and cancel the jobs Gitea says it runs; have the
   provider destroy the machine (found by the instance id when no provider id was recorded), check it
   is gone; the instance ends ``terminated``, its event's reason saying what was gone already
   (``machine_already_gone``, ``runner_already_gone``). A failed attempt leaves it ``terminating``
   with ``status_reason`` and a ``ci_worker_termination_failed`` event (reason ``gitea_error`` or
   ``provider_error``); the task's retry, or terminating again, resumes it where it stopped.
"""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from diskci.platform.actions.events import record_event
from diskci.platform.ci import scheduler
from diskci.platform.db.models import (
    CiConclusion,
    CiJob,
    CiLogRow,
    CiRunner,
    CiRunnerStatus,
    CiStatus,
    NodeInstance,
    Task,
    TaskStatus,
    utcnow,
)
from diskci.platform.db.session import Database
from diskci.platform.providers import provider
from diskci.platform.providers.base import MachineState, ProviderFailed, RunnerAgent, WorkerMachine
from diskci.platform.secrets import SecretBox
from diskci.platform.services import gitea_workers
from diskci.platform.settings import PlatformSettings

log = logging.getLogger(__name__)

PROVISION_TASK_KIND = "ci_worker_provision"
TERMINATE_TASK_KIND = "ci_worker_terminate"
WORKER_TASK_KINDS = (PROVISION_TASK_KIND, TERMINATE_TASK_KIND)
TOKEN_PURPOSE = "ci-worker-registration-token"
CI_WORKER_MODULE = "gitea-runner"


class InstanceStatus(StrEnum):
    """A CI worker NodeInstance's own status (what the provider did with its machine)."""

    PROVISIONING = "provisioning"
    RUNNING = "running"
    FAILED = "failed"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


def open_tasks(session: Session, kind: str, instance_id: int) -> list[Task]:
    """The queued or running tasks of ``kind`` for the instance."""
    rows = session.scalars(
        select(Task)
        .where(Task.kind == kind, Task.status.in_([TaskStatus.QUEUED.value, TaskStatus.RUNNING.value]))
        .order_by(Task.id)
    )
    return [t for t in rows if (t.payload or {}).get("instance_id") == instance_id]


def runners_of(session: Session, instance_id: int) -> list[CiRunner]:
    return list(
        session.scalars(select(CiRunner).where(CiRunner.instance_id == instance_id).order_by(CiRunner.id))
    )


def revoke_and_cancel(session: Session, instance: NodeInstance, *, now: datetime, actor: str) -> list[CiJob]:
    """Revoke every runner of ``instance`` (its token stops working at once) and cancel the jobs they
    have in progress, each with a row in its log and a ``ci_worker_job_cancelled`` event; returns the
    jobs cancelled now (none when it ran before: idempotent)."""
    runners = runners_of(session, instance.id)
    for runner in runners:
        if runner.revoked_at is None:
            runner.revoked_at = now
        runner.status = CiRunnerStatus.REVOKED.value
    session.flush()
    if not runners:
        return []
    jobs = list(
        session.scalars(
            select(CiJob).where(
                CiJob.runner_id.in_([r.id for r in runners]), CiJob.status == CiStatus.IN_PROGRESS.value
            )
        )
    )
    for job in jobs:
        stored = session.scalar(select(func.count()).select_from(CiLogRow).where(CiLogRow.job_id == job.id))
        note = f"[diskci: cancelled: its CI worker {instance.hostname} #{instance.id} was terminated]"
        session.add(CiLogRow(job_id=job.id, index=stored or 0, time=now, content=note))
        scheduler.record_state(session, job, conclusion=CiConclusion.CANCELLED.value, now=now)
        record_event(
            session,
            "ci_worker_job_cancelled",
            platform_id=job.run.platform_id,
            subject=instance.hostname,
            reason="worker_terminated",
            payload={
                "actor": actor,
                "instance_id": instance.id,
                "run_id": job.run_id,
                "job_name": job.name,
            },
        )
    return jobs


def run_step(
    database: Database, settings: PlatformSettings, kind: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """Do the step of a worker task (``kind``, ``payload``); raises when it failed (to be retried)."""
    if kind == PROVISION_TASK_KIND:
        return _provision(database, settings, payload)
    if kind == TERMINATE_TASK_KIND:
        return _terminate(database, settings, payload)
    raise ValueError(f"not a CI worker task kind: {kind!r}")


def _provision(database: Database, settings: PlatformSettings, payload: dict[str, Any]) -> dict[str, Any]:
    instance_id = int(payload["instance_id"])
    with database.read_session() as s:
        instance = s.get(NodeInstance, instance_id)
        if instance is None:
            return {"skipped": f"instance {instance_id} no longer exists"}
        if instance.status != InstanceStatus.PROVISIONING.value:
            return {"skipped": f"instance {instance_id} is {instance.status}"}
        token = SecretBox(key=settings.resolve_secret_key()).decrypt(
            payload["registration_token_encrypted"], purpose=TOKEN_PURPOSE
        )
        machine = WorkerMachine(
            instance_id=instance.id,
            hostname=instance.hostname,
            region=instance.provider_region or "",
            instance_type=instance.instance_type or "",
            labels=tuple(instance.build_targets),
            registration_url=str(payload.get("registration_url") or settings.ci_base_url),
            registration_token=token,
            agent=RunnerAgent(str(payload.get("agent") or RunnerAgent.DISKCI.value)),
        )
        provider_name = instance.provider
    provider_id = provider(provider_name, settings).create(machine)
    with database.session() as s:
        instance = s.get(NodeInstance, instance_id)
        if instance is None:
            return {"skipped": f"instance {instance_id} no longer exists"}
        instance.provider_id = provider_id  # also when terminating meanwhile: its task destroys it
        if instance.status == InstanceStatus.PROVISIONING.value:
            instance.status = InstanceStatus.RUNNING.value
            instance.status_reason = None
            record_event(
                s,
                "ci_worker_provisioned",
                subject=instance.hostname,
                payload={"instance_id": instance_id, "provider": provider_name, "provider_id": provider_id},
            )
    log.info("CI worker %s: %s machine %s made", instance_id, provider_name, provider_id)
    return {"instance_id": instance_id, "provider_id": provider_id}


def _terminate(database: Database, settings: PlatformSettings, payload: dict[str, Any]) -> dict[str, Any]:
    instance_id = int(payload["instance_id"])
    with database.session() as s:
        instance = s.get(NodeInstance, instance_id)
        if instance is None:
            return {"skipped": f"instance {instance_id} no longer exists"}
        if instance.status == InstanceStatus.TERMINATED.value:
            return {"instance_id": instance_id, "status": instance.status}
        actor = str(payload.get("actor") or "platform")
        revoke_and_cancel(s, instance, now=utcnow(), actor=actor)
        provisioning = [t.task_id for t in open_tasks(s, PROVISION_TASK_KIND, instance_id)]
        provider_name, provider_id = instance.provider, instance.provider_id
        gitea_backed = gitea_workers.gitea_platform(instance) is not None
    if provisioning:
        raise ProviderFailed(f"the provisioning task {provisioning[0]} of this worker is still running")
    runner: gitea_workers.Deregistration | None = None
    if gitea_backed:
        box = SecretBox(key=settings.resolve_secret_key())
        runner = gitea_workers.deregister(database, box, instance_id, actor=actor)
        gitea_workers.cancel_jobs(database, box, instance_id, runner.runner_id, actor=actor)
    compute = provider(provider_name, settings)
    provider_id = provider_id or compute.lookup(instance_id)
    # A machine destroyed behind the platform's back (or never made) is not an error: the event says so.
    reason: str | None = "machine_already_gone"
    if provider_id is not None and compute.get(provider_id) != MachineState.GONE:
        reason = None
        compute.destroy(provider_id)
        state = compute.get(provider_id)
        if state != MachineState.GONE:
            raise ProviderFailed(
                f"{provider_name} machine {provider_id} is still {state.value} after destroy"
            )
    late_runner = None
    if runner is not None and runner.runner_id is None:  # registered while it was being terminated?
        late_runner = gitea_workers.deregister_late(database, box, instance_id)
    runner_payload: dict[str, Any] = {}
    if runner is not None:
        runner_payload = {
            "gitea_runner_id": runner.runner_id or late_runner,
            "runner_reason": None if late_runner is not None else runner.reason,
            "machine_reason": reason,
        }
        reason = reason or runner_payload["runner_reason"]
    with database.session() as s:
        instance = s.get(NodeInstance, instance_id)
        if instance is None:
            return {"skipped": f"instance {instance_id} no longer exists"}
        if instance.status != InstanceStatus.TERMINATED.value:
            instance.status = InstanceStatus.TERMINATED.value
            instance.status_reason = None
            instance.terminated_at = utcnow()
            record_event(
                s,
                "ci_worker_terminated",
                subject=instance.hostname,
                reason=reason,
                payload={
                    "instance_id": instance_id,
                    "provider": provider_name,
                    "provider_id": provider_id,
                    **runner_payload,
                },
            )
    log.info("CI worker %s: terminated (%s %s)", instance_id, provider_name, provider_id)
    return {"instance_id": instance_id, "status": InstanceStatus.TERMINATED.value, "provider_id": provider_id}


def step_failed(
    database: Database, kind: str, payload: dict[str, Any], error: str, *, attempt: int, final: bool
) -> None:
    """Record a failed attempt on the instance (``status_reason``) and as an event; after the final
    attempt a provisioning instance becomes ``failed`` (a terminating one stays ``terminating``)."""
    instance_id = int(payload["instance_id"])
    with database.session() as s:
        instance = s.get(NodeInstance, instance_id)
        if instance is None:
            return
        retry = "" if final else "; it will be retried"
        if kind == PROVISION_TASK_KIND:
            if instance.status != InstanceStatus.PROVISIONING.value:
                return
            instance.status_reason = f"provisioning attempt {attempt} failed: {error}{retry}"[:4000]
            if final:
                instance.status = InstanceStatus.FAILED.value
            event = "ci_worker_provisioning_failed"
        else:
            if instance.status != InstanceStatus.TERMINATING.value:
                return
            instance.status_reason = f"termination attempt {attempt} failed: {error}{retry}"[:4000]
            event = "ci_worker_termination_failed"
        gitea = error.startswith(gitea_workers.GITEA_FAILURE_PREFIX)
        record_event(
            s,
            event,
            subject=instance.hostname,
            reason="gitea_error" if gitea else "provider_error",
            payload={"instance_id": instance_id, "attempt": attempt, "final": final, "error": error[:2000]},
        )
