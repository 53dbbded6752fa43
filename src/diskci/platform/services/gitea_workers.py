"""The Gitea side of a Gitea-backed platform's CI workers (their agent is Gitea's act_runner).

- Provisioning: the registration URL and token a worker's act_runner registers with are the platform's
  Gitea and the token Gitea gives for the platform's runner scope (``registration_for``).
- Listing: a worker's runner is found in Gitea's runner list by the id recorded for it, else by the
  worker's host name (act_runner registers under it, asynchronously, once the machine has booted);
  Gitea's ``online``/``offline`` and ``busy`` become the worker statuses the embedded backend shows
  (``worker_view``). What Gitea said is remembered on the NodeInstance (``gitea_runner_id``, and
  ``last_report``/``last_seen``), so a listing while Gitea is down shows the last known status and why.
- Termination (``worker_lifecycle``'s terminate step calls these, in this order; each is idempotent
  and resumable): ``deregister`` deletes the runner in Gitea (act_runner has no unregister call) and
  records it (``ci_worker_runner_deregistered``, whose reason says when there was nothing to delete);
  ``cancel_jobs`` cancels the jobs of the platform's Gitea runs that Gitea says this runner runs, each
  with a ``ci_worker_job_cancelled`` event; after the machine is destroyed, ``deregister_late``
  deletes a runner that registered while the worker was being terminated.

A Gitea failure during termination is raised as ``ProviderFailed`` whose message starts with
``GITEA_FAILURE_PREFIX`` (the task retries it; ``worker_lifecycle.step_failed`` gives it the reason
``gitea_error``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from diskci.errors import PlatformError
from diskci.platform.actions.events import record_event
from diskci.platform.db.models import CiJob, CiRun, CiStatus, Event, NodeInstance, NodePlatform, utcnow
from diskci.platform.db.session import Database
from diskci.platform.gitea.client import (
    GiteaClient,
    GiteaRunnerNotFound,
    GiteaUnavailable,
    GiteaUnsupported,
)
from diskci.platform.gitea.models import Runner, RunnerScope
from diskci.platform.gitea.platform_client import client_for, is_gitea_backed, repository_of, runner_scope
from diskci.platform.providers.base import ProviderFailed
from diskci.platform.secrets import SecretBox

log = logging.getLogger(__name__)

GITEA_TIMEOUT = 15.0  # seconds a Gitea call may take (each try; the client retries idempotent calls)
GITEA_FAILURE_PREFIX = "Gitea: "
DEREGISTERED_EVENT = "ci_worker_runner_deregistered"
JOB_CANCELLED_EVENT = "ci_worker_job_cancelled"
# the reasons of ci_worker_runner_deregistered (None: Gitea deleted the runner now)
RUNNER_ALREADY_GONE = "runner_already_gone"  # a runner id was known, and Gitea no longer knows it
RUNNER_NOT_REGISTERED = "runner_not_registered"  # its act_runner never registered with Gitea
DEREGISTRATION_UNSUPPORTED = "runner_deregistration_unsupported"  # a Gitea before 1.24: no runners API
REPORT_KEY = "gitea_runner"  # in NodeInstance.last_report


def gitea_platform(instance: NodeInstance) -> NodePlatform | None:
    """The instance's platform when it is Gitea-backed (its worker runs act_runner), else None."""
    platform = instance.platform
    return platform if platform is not None and is_gitea_backed(platform) else None


def _client(platform: NodePlatform, box: SecretBox) -> GiteaClient:
    return client_for(platform, box, timeout=GITEA_TIMEOUT)


# provisioning


@dataclass(frozen=True)
class Registration:
    """Where a Gitea-backed platform's worker registers, and with what (Gitea's token: a secret)."""

    url: str
    token: str

    def __repr__(self) -> str:
        return f"Registration(url={self.url!r})"


def registration_for(platform: NodePlatform, box: SecretBox) -> Registration:
    """The platform's Gitea URL and the runner registration token Gitea gives for its runner scope;
    ``GiteaUnavailable`` naming the platform and its Gitea when Gitea cannot be asked now."""
    scope = runner_scope(platform)  # NotGiteaBacked when the platform's Gitea is not configured
    with _client(platform, box) as client:
        try:
            token = client.registration_token(scope)
        except GiteaUnavailable as exc:
            raise GiteaUnavailable(
                f"node platform {platform.name!r}: cannot get a runner registration token from its Gitea "
                f"at {platform.gitea_url}: {exc.message}; no CI worker was made",
                hint="Provision the worker again once Gitea answers.",
            ) from exc
    return Registration(url=str(platform.gitea_url), token=token)


# listing


@dataclass(frozen=True)
class RunnersSeen:
    """One platform's runners as Gitea listed them now, or why Gitea could not be asked."""

    runners: list[Runner] | None
    error: str | None = None


def runners_seen(platform: NodePlatform, box: SecretBox) -> RunnersSeen:
    """Gitea's runners of the platform's scope (one list call), or the error that kept them away."""
    try:
        with _client(platform, box) as client:
            return RunnersSeen(runners=client.list_runners(runner_scope(platform)))
    except PlatformError as exc:  # down, refused, unsupported, a bad answer: the listing goes on
        log.warning("Gitea runners of node platform %s: %s", platform.name, exc.message)
        return RunnersSeen(runners=None, error=exc.message)


def find_runner(runners: list[Runner], *, name: str, runner_id: int | None) -> Runner | None:
    """The worker's runner: the one of the id recorded for it, else the newest one with its name."""
    if runner_id is not None:
        for runner in runners:
            if runner.id == runner_id:
                return runner
    named = [r for r in runners if r.name == name]
    return max(named, key=lambda r: r.id) if named else None


def status_of(runner: Runner) -> str:
    """A Gitea runner's status as a worker status: offline (or disabled), busy, online."""
    if runner.status != "online" or runner.disabled:
        return "offline"
    return "busy" if runner.busy else "online"


@dataclass(frozen=True)
class WorkerView:
    """What the worker list shows of a running Gitea-backed worker."""

    status: str
    reason: str | None
    runner_id: int | None
    labels: list[str] | None  # None: Gitea did not say (the worker's build targets are shown)
    last_seen: datetime | None


def _labels(runner: Runner) -> list[str]:
    return [label.name.partition(":")[0] for label in runner.labels]


def worker_view(node: NodeInstance, seen: RunnersSeen) -> WorkerView:
    """The status of the running worker ``node`` from Gitea's list (or, Gitea down, as last known)."""
    if seen.runners is None:
        last = (node.last_report or {}).get(REPORT_KEY)
        if not isinstance(last, dict):
            return WorkerView(
                status="provisioning",
                reason=f"Gitea unavailable ({seen.error}); its runner was not seen registered yet",
                runner_id=node.gitea_runner_id,
                labels=None,
                last_seen=node.last_seen,
            )
        observed = (node.last_report or {}).get("observed_at")
        return WorkerView(
            status=str(last.get("status") or "offline"),
            reason=f"Gitea unavailable ({seen.error}); the status is the last Gitea gave, at {observed}",
            runner_id=node.gitea_runner_id,
            labels=[str(x) for x in last.get("labels") or []] or None,
            last_seen=node.last_seen,
        )
    runner = find_runner(seen.runners, name=node.hostname, runner_id=node.gitea_runner_id)
    if runner is None:
        if node.gitea_runner_id is not None:
            return WorkerView(
                status="offline",
                reason=f"Gitea no longer knows its runner {node.gitea_runner_id} (removed outside diskci?)",
                runner_id=node.gitea_runner_id,
                labels=None,
                last_seen=node.last_seen,
            )
        return WorkerView(
            status="provisioning",
            reason="its act_runner has not registered with Gitea yet",
            runner_id=None,
            labels=None,
            last_seen=None,
        )
    return WorkerView(
        status=status_of(runner),
        reason=None,
        runner_id=runner.id,
        labels=_labels(runner) or None,
        last_seen=None,  # set by ``remember``: now, when online
    )


def remember(database: Database, node_id: int, runner: Runner, now: datetime) -> datetime | None:
    """Record on the NodeInstance what Gitea said of its runner (its id, status, labels; ``last_seen``
    when online), in a unit of work of its own, unless the worker is terminated meanwhile; returns
    ``last_seen`` as it now is."""
    status = status_of(runner)
    report: dict[str, Any] = {
        REPORT_KEY: {"id": runner.id, "name": runner.name, "status": status, "labels": _labels(runner)},
        "observed_at": now.isoformat(),
    }
    values: dict[str, Any] = {"gitea_runner_id": runner.id, "last_report": report}
    if status != "offline":
        values["last_seen"] = now
    with database.session() as s:
        s.execute(
            update(NodeInstance)
            .where(NodeInstance.id == node_id, NodeInstance.status != "terminated")
            .values(**values)
        )
        seen: datetime | None = s.scalar(select(NodeInstance.last_seen).where(NodeInstance.id == node_id))
        return seen


# termination


@dataclass(frozen=True)
class Deregistration:
    """The outcome of deregistering a worker's runner: its Gitea id (None: never registered) and the
    reason there was nothing to delete (None: Gitea deleted it)."""

    runner_id: int | None
    reason: str | None


def _failed(what: str, exc: PlatformError) -> ProviderFailed:
    return ProviderFailed(f"{GITEA_FAILURE_PREFIX}{what}: {exc.message}")


def _recorded(session: Session, instance: NodeInstance) -> Deregistration | None:
    """The deregistration an earlier attempt recorded for the instance, if any (a resumed step)."""
    rows = session.scalars(
        select(Event).where(Event.type == DEREGISTERED_EVENT, Event.subject == instance.hostname)
    )
    for event in rows:
        payload = event.payload or {}
        if payload.get("instance_id") == instance.id:
            known = payload.get("gitea_runner_id")
            return Deregistration(runner_id=int(known) if known is not None else None, reason=event.reason)
    return None


@dataclass(frozen=True)
class _Worker:
    """A Gitea-backed worker as the termination steps need it (plain values, read in one session)."""

    instance_id: int
    hostname: str
    platform_id: int
    gitea_runner_id: int | None
    scope: RunnerScope
    owner: str
    repo: str


def _worker_and_client(
    database: Database, box: SecretBox, instance_id: int
) -> tuple[_Worker, GiteaClient] | None:
    """The worker and a client of its platform's Gitea (close it); None when it is not Gitea-backed."""
    with database.read_session() as s:
        instance = s.get(NodeInstance, instance_id)
        platform = gitea_platform(instance) if instance is not None else None
        if instance is None or platform is None:
            return None
        owner, repo = repository_of(platform)
        worker = _Worker(
            instance_id=instance.id,
            hostname=instance.hostname,
            platform_id=platform.id,
            gitea_runner_id=instance.gitea_runner_id,
            scope=runner_scope(platform),
            owner=owner,
            repo=repo,
        )
        return worker, _client(platform, box)


def deregister(database: Database, box: SecretBox, instance_id: int, *, actor: str) -> Deregistration:
    """Step 1 of a Gitea-backed worker's termination: delete its runner in Gitea (found by the id
    recorded for it, else by name), once. A runner Gitea no longer knows is ``runner_already_gone``;
    one that never registered, ``runner_not_registered``; a Gitea without the runners API,
    ``runner_deregistration_unsupported``. Gitea down or failing: ``ProviderFailed`` (retried)."""
    with database.read_session() as s:
        instance = s.get(NodeInstance, instance_id)
        if instance is None:
            return Deregistration(runner_id=None, reason=RUNNER_NOT_REGISTERED)
        done = _recorded(s, instance)
        if done is not None:
            return done
    scoped = _worker_and_client(database, box, instance_id)
    if scoped is None:
        return Deregistration(runner_id=None, reason=RUNNER_NOT_REGISTERED)
    worker, client = scoped
    scope = worker.scope
    runner_id = worker.gitea_runner_id
    reason: str | None = None
    with client:
        try:
            if runner_id is None:
                found = find_runner(client.list_runners(scope), name=worker.hostname, runner_id=None)
                runner_id = found.id if found is not None else None
            if runner_id is None:
                reason = RUNNER_NOT_REGISTERED
            else:
                try:
                    client.delete_runner(scope, runner_id)
                except GiteaRunnerNotFound:
                    reason = RUNNER_ALREADY_GONE
        except GiteaUnsupported as exc:
            log.warning("CI worker %s: %s; its runner stays in Gitea", instance_id, exc.message)
            reason = DEREGISTRATION_UNSUPPORTED
        except PlatformError as exc:
            raise _failed(f"deregistering the runner of CI worker {worker.hostname}", exc) from exc
    with database.session() as s:
        node = s.get(NodeInstance, instance_id)
        if node is not None:
            if runner_id is not None:
                node.gitea_runner_id = runner_id
            record_event(
                s,
                DEREGISTERED_EVENT,
                platform_id=node.platform_id,
                subject=node.hostname,
                reason=reason,
                payload={
                    "actor": actor,
                    "instance_id": instance_id,
                    "gitea_runner_id": runner_id,
                    "gitea_url": client.url,
                    "gitea_repository": f"{worker.owner}/{worker.repo}",
                },
            )
    log.info("CI worker %s: Gitea runner %s deregistered (%s)", instance_id, runner_id, reason or "deleted")
    return Deregistration(runner_id=runner_id, reason=reason)


def cancel_jobs(
    database: Database, box: SecretBox, instance_id: int, runner_id: int | None, *, actor: str
) -> list[CiJob]:
    """Step 2: cancel the unfinished jobs of the platform's Gitea runs that Gitea says runner
    ``runner_id`` runs (one jobs call per such run): each becomes completed ``cancelled``
    (``failure_reason`` ``worker_terminated``) with a ``ci_worker_job_cancelled`` event. Jobs done
    already are not touched again (idempotent); Gitea down: ``ProviderFailed`` (retried)."""
    if runner_id is None:
        return []
    with database.read_session() as s:
        instance = s.get(NodeInstance, instance_id)
        if instance is None or instance.platform_id is None:
            return []
        pending: list[tuple[int, int, int]] = [
            (row_id, job_id, run_id)
            for row_id, job_id, run_id in s.execute(
                select(CiJob.id, CiJob.gitea_job_id, CiRun.gitea_run_id)
                .join(CiRun, CiJob.run_id == CiRun.id)
                .where(
                    CiRun.platform_id == instance.platform_id,
                    CiRun.gitea_run_id.is_not(None),
                    CiJob.gitea_job_id.is_not(None),
                    CiJob.status != CiStatus.COMPLETED.value,
                )
            )
            if job_id is not None and run_id is not None
        ]
    if not pending:
        return []
    scoped = _worker_and_client(database, box, instance_id)
    if scoped is None:
        return []
    worker, client = scoped
    ours: set[int] = set()
    with client:
        try:
            for gitea_run_id in sorted({run for _, _, run in pending}):
                for gitea_job in client.list_jobs(worker.owner, worker.repo, gitea_run_id):
                    if gitea_job.runner_id == runner_id and gitea_job.status != CiStatus.COMPLETED.value:
                        ours.add(gitea_job.id)
        except PlatformError as exc:
            what = f"reading the jobs of CI worker {worker.hostname}'s runner {runner_id}"
            raise _failed(what, exc) from exc
    now = utcnow()
    cancelled: list[CiJob] = []
    with database.session() as s:
        for job_row_id, gitea_job_id, gitea_run_id in pending:
            job = s.get(CiJob, job_row_id)
            if job is None or gitea_job_id not in ours or job.status == CiStatus.COMPLETED.value:
                continue
            job.status = CiStatus.COMPLETED.value
            job.conclusion = "cancelled"
            job.failure_reason = "worker_terminated"
            job.completed_at = now
            job.lease_expires_at = None
            record_event(
                s,
                JOB_CANCELLED_EVENT,
                platform_id=worker.platform_id,
                subject=worker.hostname,
                reason="worker_terminated",
                payload={
                    "actor": actor,
                    "instance_id": instance_id,
                    "run_id": job.run_id,
                    "job_name": job.name,
                    "gitea_run_id": gitea_run_id,
                    "gitea_job_id": gitea_job_id,
                    "gitea_runner_id": runner_id,
                },
            )
            cancelled.append(job)
        s.flush()
        for done in cancelled:
            s.expunge(done)
    return cancelled


def deregister_late(database: Database, box: SecretBox, instance_id: int) -> int | None:
    """After the machine is destroyed: delete a runner with the worker's name that registered while
    the worker was being terminated (its id; None when there is none). Failures are logged only: the
    machine is gone, so the runner can never run a job and shows offline in Gitea."""
    scoped = _worker_and_client(database, box, instance_id)
    if scoped is None:
        return None
    worker, client = scoped
    scope = worker.scope
    with client:
        try:
            found = find_runner(client.list_runners(scope), name=worker.hostname, runner_id=None)
            if found is None:
                return None
            client.delete_runner(scope, found.id)
        except GiteaRunnerNotFound:
            return None
        except PlatformError as exc:
            log.warning("CI worker %s: a late runner was not deregistered: %s", instance_id, exc.message)
            return None
    with database.session() as s:
        node = s.get(NodeInstance, instance_id)
        if node is not None:
            node.gitea_runner_id = found.id
    return found.id
