"""The ``gitea`` CI backend's runs: Gitea Actions runs mirrored into ``CiRun``/``CiJob`` rows, so every CI
action reads the same through either backend.

- ``create_dispatched_run`` makes the ``CiRun`` first (diskci's own ``run_id``); ``dispatch`` then asks
  Gitea to run ``.gitea/workflows/build.yaml`` at the ref with input ``arches``. Gitea answers 204 with
  no run id: the run is found later by the dispatch ticket (``find_dispatched_run``) and its id kept in
  ``gitea_run_id``. Until then the dispatch's state is kept in the run's ``trigger_key``
  (``gitea_dispatch:{json}``, ``DispatchState``): ``pending`` (not sent yet, or sent by a process that
  died), ``sent`` (Gitea took it) or ``unknown`` (``GiteaOutcomeUnknown``: it may have taken effect; the
  run is looked for before dispatching again, after ``REDISPATCH_AFTER`` seconds). A hard refusal (404
  workflow, 422 ref, 401 token, an API this Gitea lacks) fails the run, ``failure_reason``
  ``gitea_refused``, with a ``ci_run_dispatch_failed`` event; a run Gitea took but never showed
  within ``FIND_DEADLINE`` fails ``gitea_run_not_found``.
- ``sync`` reads the Gitea run and its jobs and writes status, conclusion, times and steps (Gitea's
  words are the embedded backend's: ``CiStatus``, ``CiConclusion``). Gitea's calls run with no
  database transaction open. A Gitea error sets ``sync_error`` (``synced_at`` keeps the last good
  sync, one ``ci_run_sync_failed`` event per outage) and the run keeps its last known state; the next
  good answer clears it.
- ``sync_delivered``: a ``workflow_run``/``workflow_job`` webhook delivery syncs its run at once; a
  Gitea run diskci did not dispatch (a tag push in Gitea) gets a ``CiRun`` (``trigger_key``
  ``gitea_run:<id>``, event as Gitea names it) and a ``ci_run_discovered`` event.
- ``cancel``: Gitea's REST cancel where the server has one (``cancel_supported()``, detected); where it
  has none the run is marked ``cancel_requested_at``, the runners running its jobs are deregistered
  (now, and at each later sync while it runs), and the ``ci_run_cancel_requested`` event says
  ``gitea_has_no_cancel``.
- ``job_log``: a job's log as Gitea keeps it (None before the job has one).

How Gitea's answers become rows (status words, steps, the dispatch state) is ``ci.gitea_mirror``.
Clients are kept per platform (``clients``: one connection pool and one version question per Gitea)
with the timeouts and retries of ``CALLS``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from diskci.platform.actions.events import record_event
from diskci.platform.ci.gitea_mirror import (
    COMPLETED,
    DISPATCH_KEY_PREFIX,
    FOUND_KEY_PREFIX,
    WORKFLOW_FILE,
    DispatchState,
    apply_job,
    apply_run,
    fail_run,
    gitea_status,
    record_sync_error,
    run_inputs,
)
from diskci.platform.db.models import (
    CiConclusion,
    CiRun,
    CiStatus,
    NodePlatform,
    utcnow,
)
from diskci.platform.db.session import Database
from diskci.platform.gitea.answers import (
    GiteaBadAnswer,
    GiteaNotFound,
    GiteaOutcomeUnknown,
    GiteaRefused,
    GiteaRunnerNotFound,
    GiteaUnavailable,
    GiteaUnsupported,
)
from diskci.platform.gitea.client import GiteaClient, RetryPolicy
from diskci.platform.gitea.models import DispatchTicket, WorkflowJob, WorkflowRun
from diskci.platform.gitea.platform_client import client_for, repository_of, runner_scope
from diskci.platform.secrets import SecretBox

__all__ = [
    "CALLS",
    "WORKFLOW_FILE",
    "CallPolicy",
    "CancelOutcome",
    "DispatchState",
    "SyncOutcome",
    "cancel",
    "clients",
    "create_dispatched_run",
    "dispatch",
    "job_log",
    "sync",
    "sync_delivered",
    "unfinished_run_ids",
]

log = logging.getLogger(__name__)

REDISPATCH_AFTER = 30.0  # an outcome-unknown dispatch whose run is still not there: dispatch again
ABANDONED_PENDING = 120.0  # a pending dispatch nobody finished (its process died): treat as unknown
FIND_DEADLINE = 600.0  # a dispatch Gitea took whose run never appeared: the run fails
REFUSED = "gitea_refused"
NOT_FOUND = "gitea_run_not_found"
NO_CANCEL = "gitea_has_no_cancel"
GiteaFailure = (GiteaUnavailable, GiteaRefused, GiteaBadAnswer, GiteaUnsupported)


@dataclass(frozen=True)
class CallPolicy:
    """Timeouts and retries of the backend's Gitea calls (bounded: an action waits at most a few seconds)."""

    timeout: float = 10.0
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(attempts=3, first_delay=0.25, max_delay=2.0)
    )
    client_ttl: float = 300.0  # a kept client is made anew after this (Gitea may have been upgraded)


CALLS = CallPolicy()


# --- clients ----------------------------------------------------------------------------------------------


class _Clients:
    """One ``GiteaClient`` per platform and configuration, reused until ``client_ttl`` passes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple[Any, ...], tuple[float, GiteaClient]] = {}

    @contextmanager
    def of(self, platform: NodePlatform, box: SecretBox) -> Iterator[GiteaClient]:
        policy = CALLS
        key = (platform.id, platform.gitea_url, platform.gitea_token_encrypted, policy)
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or now - kept[0] > policy.client_ttl:
                client = client_for(platform, box, timeout=policy.timeout)
                client.retry = policy.retry
                stale = [k for k in self._kept if k[0] == platform.id]
                for old in stale:
                    self._kept.pop(old)[1].close()
                self._kept[key] = (now, client)
            else:
                client = kept[1]
        yield client

    def clear(self) -> None:
        with self._lock:
            for _, client in self._kept.values():
                client.close()
            self._kept.clear()


clients = _Clients()


@dataclass(frozen=True)
class _Target:
    """What a sync needs of a run, read before any Gitea call (no session open meanwhile)."""

    platform: NodePlatform  # detached
    run_id: int
    owner: str
    repo: str
    ref: str
    inputs: dict[str, str]
    gitea_run_id: int | None
    dispatch: DispatchState | None
    done: bool
    cancel_requested: bool
    had_error: bool
    exclude: frozenset[int]  # Gitea runs other rows of the platform mirror


def _target(session: Session, run_id: int) -> _Target | None:
    run = session.get(CiRun, run_id)
    if run is None:
        return None
    platform = run.platform
    owner, repo = repository_of(platform)
    taken: list[int | None] = []
    if run.gitea_run_id is None:  # what a ticket must not match: the Gitea runs other rows mirror
        taken = list(
            session.scalars(
                select(CiRun.gitea_run_id).where(
                    CiRun.platform_id == platform.id, CiRun.gitea_run_id.is_not(None), CiRun.id != run.id
                )
            )
        )
    return _Target(
        platform=_detached(platform),
        run_id=run.id,
        owner=owner,
        repo=repo,
        ref=run.ref,
        inputs=run_inputs(run),
        gitea_run_id=run.gitea_run_id,
        dispatch=DispatchState.of(run),
        done=run.status == COMPLETED,
        cancel_requested=run.cancel_requested_at is not None,
        had_error=run.sync_error is not None,
        exclude=frozenset(int(t) for t in taken if t is not None),
    )


def _detached(platform: NodePlatform) -> NodePlatform:
    """A copy of the platform's Gitea settings in no session (it outlives the one it was read in)."""
    return NodePlatform(
        id=platform.id,
        name=platform.name,
        ci_backend=platform.ci_backend,
        gitea_url=platform.gitea_url,
        gitea_repository=platform.gitea_repository,
        gitea_token_encrypted=platform.gitea_token_encrypted,
        gitea_webhook_secret_encrypted=platform.gitea_webhook_secret_encrypted,
    )


def _read_target(database: Database, run_id: int) -> _Target | None:
    with database.read_session() as session:
        return _target(session, run_id)


# --- dispatch ---------------------------------------------------------------------------------------------


def create_dispatched_run(
    session: Session, platform: NodePlatform, ref: str, arches: list[str], actor: str
) -> CiRun:
    """The queued run a dispatch will fill (before anything is sent to Gitea), with its event."""
    run = CiRun(
        platform_id=platform.id,
        ref=ref,
        event="workflow_dispatch",
        workflow="",
        inputs={"arches": json.dumps(arches, separators=(",", ":"))},
        status=CiStatus.QUEUED.value,
        created_at=utcnow(),
    )
    session.add(run)
    session.flush()
    run.trigger_key = DispatchState("pending", time.time()).key(run.id)
    record_event(
        session,
        "ci_run_queued",
        platform=platform,
        subject=f"run {run.id}",
        payload={
            "actor": actor,
            "run_id": run.id,
            "ref": ref,
            "event": run.event,
            "arches": arches,
            "backend": "gitea",
        },
    )
    session.flush()
    return run


def dispatch(database: Database, box: SecretBox, run_id: int) -> GiteaRefused | GiteaUnsupported | None:
    """Send the run's dispatch to Gitea and look for its run once; the refusal, when Gitea refused (the
    run is then failed ``gitea_refused``). An outage leaves ``sync_error`` for the poller to retry."""
    target = _read_target(database, run_id)
    if target is None or target.done or target.gitea_run_id is not None:
        return None
    ticket: DispatchTicket | None = None
    phase: Literal["sent", "unknown"] = "sent"
    failure: Exception | None = None
    refused: GiteaRefused | GiteaUnsupported | None = None
    found: tuple[WorkflowRun, list[WorkflowJob]] | None = None
    with clients.of(target.platform, box) as gitea:
        try:
            ticket = gitea.dispatch(
                target.owner, target.repo, WORKFLOW_FILE, target.ref, inputs=target.inputs
            )
        except GiteaOutcomeUnknown as exc:
            ticket, phase, failure = exc.ticket, "unknown", exc
        except (GiteaRefused, GiteaUnsupported) as exc:
            refused = exc
        except (GiteaUnavailable, GiteaBadAnswer) as exc:
            failure = exc
        if ticket is not None and phase == "sent":
            try:
                found = _find(gitea, ticket, target.exclude)
            except GiteaFailure as exc:
                failure = exc
    now = utcnow()
    with database.session() as session:
        run = session.get(CiRun, run_id)
        if run is None or run.status == COMPLETED:
            return None
        if refused is not None:
            fail_run(session, run, REFUSED, refused.message, now)
            return refused
        if ticket is not None:
            run.trigger_key = DispatchState(phase, ticket.dispatched_at, ticket.after_run_id).key(run.id)
        if found is not None:
            apply_run(session, run, found[0], found[1], now)
        elif failure is not None:
            record_sync_error(session, run, failure)
    return None


def _find(
    gitea: GiteaClient, ticket: DispatchTicket, exclude: frozenset[int]
) -> tuple[WorkflowRun, list[WorkflowJob]] | None:
    remote = gitea.find_dispatched_run(ticket, exclude=set(exclude))
    if remote is None:
        return None
    return remote, gitea.list_jobs(ticket.owner, ticket.repo, remote.id)


# --- sync -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncOutcome:
    """What a sync did: ``written`` false when the rows already held Gitea's answer (nothing stored)."""

    written: bool = True
    changed: bool = False
    error: str | None = None
    done: bool = False
    runner_names: dict[int, str] = field(default_factory=dict)  # Gitea job id → its runner's name


def sync(database: Database, box: SecretBox, run_id: int, *, reader: Session | None = None) -> SyncOutcome:
    """Read the run's Gitea run (finding or re-dispatching it first when needed) and mirror it.

    ``reader``: the caller's read session, to read the run in (and nothing is written when its rows
    already hold Gitea's answer; when ``written``, the caller's session has stale rows: roll it back)."""
    target = _target(reader, run_id) if reader is not None else _read_target(database, run_id)
    if target is None:
        return SyncOutcome(done=True)
    if target.gitea_run_id is None:
        return _sync_undispatched(database, box, target)
    if target.done and not target.had_error:
        return SyncOutcome(done=True)
    failure: Exception | None = None
    remote: WorkflowRun | None = None
    jobs: list[WorkflowJob] = []
    with clients.of(target.platform, box) as gitea:
        try:
            remote = gitea.get_run(target.owner, target.repo, target.gitea_run_id)
            jobs = gitea.list_jobs(target.owner, target.repo, target.gitea_run_id)
            if target.cancel_requested and not remote.done and _cancel_remote(gitea, target, jobs)[0]:
                remote = gitea.get_run(target.owner, target.repo, target.gitea_run_id)
                jobs = gitea.list_jobs(target.owner, target.repo, target.gitea_run_id)
        except GiteaFailure as exc:
            failure = exc
    if reader is not None and remote is not None and failure is None:
        row = reader.get(CiRun, run_id)
        try:
            unchanged = row is not None and not apply_run(None, row, remote, jobs, utcnow(), write=False)
        except GiteaBadAnswer:
            unchanged = False
        if unchanged:
            names = {j.id: j.runner_name for j in jobs if j.runner_name}
            return SyncOutcome(written=False, done=remote.done, runner_names=names)
    return _store(database, run_id, remote, jobs, failure)


def _store(
    database: Database,
    run_id: int,
    remote: WorkflowRun | None,
    jobs: list[WorkflowJob],
    failure: Exception | None,
) -> SyncOutcome:
    now = utcnow()
    with database.session() as session:
        run = session.get(CiRun, run_id)
        if run is None:
            return SyncOutcome(done=True)
        changed = False
        if remote is not None and failure is None:
            try:
                changed = apply_run(session, run, remote, jobs, now)
            except GiteaBadAnswer as exc:
                failure = exc
        if failure is not None:
            record_sync_error(session, run, failure)
        return SyncOutcome(
            changed=changed,
            error=run.sync_error,
            done=run.status == COMPLETED,
            runner_names={j.id: j.runner_name for j in jobs if j.runner_name},
        )


def _sync_undispatched(database: Database, box: SecretBox, target: _Target) -> SyncOutcome:
    """A run with no Gitea run yet: look for it by its ticket; dispatch (again) when it is sure not to
    be there; fail it once Gitea took the dispatch but never showed the run."""
    if target.done:
        return SyncOutcome(done=True)
    state = target.dispatch or DispatchState("pending", 0.0)
    age = time.time() - state.at
    if state.phase == "pending" and age < ABANDONED_PENDING and not target.had_error:
        return SyncOutcome()  # the action that made it is dispatching now
    if state.phase == "pending" and target.had_error:
        dispatch(database, box, target.run_id)  # the first try never reached Gitea
        return _outcome(database, target.run_id)
    failure: Exception | None = None
    found: tuple[WorkflowRun, list[WorkflowJob]] | None = None
    with clients.of(target.platform, box) as gitea:
        try:
            ticket = state.ticket(target.owner, target.repo, target.ref, target.inputs)
            found = _find(gitea, ticket, target.exclude)
        except GiteaFailure as exc:
            failure = exc
    if found is not None:
        return _store(database, target.run_id, found[0], found[1], None)
    if failure is None and state.phase != "sent" and age >= REDISPATCH_AFTER:
        with database.session() as session:  # not there: it never took effect; send it again
            run = session.get(CiRun, target.run_id)
            if run is not None:
                run.trigger_key = replace(state, phase="pending").key(run.id)
        dispatch(database, box, target.run_id)
        return _outcome(database, target.run_id)
    if failure is None and state.phase == "sent" and age >= FIND_DEADLINE:
        with database.session() as session:
            run = session.get(CiRun, target.run_id)
            if run is not None and run.status != COMPLETED:
                fail_run(
                    session,
                    run,
                    NOT_FOUND,
                    f"Gitea took the dispatch but showed no run of it within {FIND_DEADLINE:.0f} s",
                    utcnow(),
                )
        return SyncOutcome(changed=True, done=True)
    return _store(database, target.run_id, None, [], failure) if failure else SyncOutcome()


def _outcome(database: Database, run_id: int) -> SyncOutcome:
    with database.read_session() as session:
        run = session.get(CiRun, run_id)
        if run is None:
            return SyncOutcome(done=True)
        return SyncOutcome(changed=True, error=run.sync_error, done=run.status == COMPLETED)


def unfinished_run_ids(session: Session) -> list[int]:
    """The runs of Gitea-backed platforms not completed (and completed ones whose last sync failed)."""
    rows = session.scalars(
        select(CiRun.id)
        .join(NodePlatform, NodePlatform.id == CiRun.platform_id)
        .where(NodePlatform.ci_backend == "gitea")
        .where((CiRun.status != COMPLETED) | CiRun.sync_error.is_not(None))
        .order_by(CiRun.id)
    ).all()
    return [int(r) for r in rows]


# --- webhook deliveries -----------------------------------------------------------------------------------


def sync_delivered(
    database: Database,
    box: SecretBox,
    platform_id: int,
    gitea_run_id: int,
    delivered: WorkflowRun | None = None,
    delivered_job: WorkflowJob | None = None,
) -> int | None:
    """A ``workflow_run``/``workflow_job`` delivery of Gitea run ``gitea_run_id``: its ``CiRun`` (made
    when diskci did not dispatch it), synced now through the REST API. When Gitea cannot answer, what
    the delivery carries (the run, or one job of a run already known) is kept and ``sync_error`` says
    why; with neither, the Gitea error is raised. Returns the run_id."""
    with database.read_session() as session:
        platform = session.get(NodePlatform, platform_id)
        if platform is None:
            return None
        owner, repo = repository_of(platform)
        session.expunge(platform)
    failure: Exception | None = None
    remote, jobs = delivered, [delivered_job] if delivered_job is not None else []
    with clients.of(platform, box) as gitea:
        try:
            remote = gitea.get_run(owner, repo, gitea_run_id)
            jobs = gitea.list_jobs(owner, repo, gitea_run_id)
        except GiteaFailure as exc:
            failure = exc
    now = utcnow()
    with database.session() as session:
        if remote is None:
            known = session.scalar(
                select(CiRun).where(CiRun.platform_id == platform.id, CiRun.gitea_run_id == gitea_run_id)
            )
            if known is None or failure is None:
                raise failure or GiteaBadAnswer(f"Gitea run {gitea_run_id} could not be read")
            for job in jobs:
                apply_job(known, job, len(known.jobs), now)
            record_sync_error(session, known, failure)
            return known.id
        run = _run_of(session, platform, owner, repo, remote)
        try:
            apply_run(session, run, remote, jobs, now)
        except GiteaBadAnswer as exc:
            failure = exc
        if failure is not None:
            record_sync_error(session, run, failure)
        return run.id


def _run_of(session: Session, platform: NodePlatform, owner: str, repo: str, remote: WorkflowRun) -> CiRun:
    """The row mirroring ``remote``: the one that has it, a dispatch of ours it matches, or a new one."""
    run = session.scalar(
        select(CiRun).where(CiRun.platform_id == platform.id, CiRun.gitea_run_id == remote.id)
    )
    if run is not None:
        return run
    if remote.event == "workflow_dispatch":
        waiting = session.scalars(
            select(CiRun)
            .where(CiRun.platform_id == platform.id, CiRun.gitea_run_id.is_(None), CiRun.status != COMPLETED)
            .where(CiRun.trigger_key.like(DISPATCH_KEY_PREFIX + "%"))
            .order_by(CiRun.id)
        ).all()
        for candidate in waiting:
            state = DispatchState.of(candidate)
            if state is None or state.phase == "pending":
                continue
            ticket = state.ticket(owner, repo, candidate.ref, run_inputs(candidate))
            if remote.id > (ticket.after_run_id or 0) and ticket.matches(remote):
                return candidate
    key = f"{FOUND_KEY_PREFIX}{remote.id}"
    run = session.scalar(select(CiRun).where(CiRun.platform_id == platform.id, CiRun.trigger_key == key))
    if run is not None:
        return run
    run = CiRun(
        platform_id=platform.id,
        ref=remote.ref or remote.head_branch,
        sha=remote.head_sha,
        event=remote.event or "push",
        workflow="",
        trigger_key=key,
        created_at=utcnow(),
    )
    session.add(run)
    session.flush()
    record_event(
        session,
        "ci_run_discovered",
        platform_id=platform.id,
        subject=f"run {run.id}",
        payload={
            "run_id": run.id,
            "gitea_run_id": remote.id,
            "event": run.event,
            "ref": run.ref,
            "sha": run.sha,
        },
    )
    return run


# --- logs and cancel --------------------------------------------------------------------------------------


def job_log(box: SecretBox, platform: NodePlatform, gitea_job_id: int) -> str | None:
    """A job's log as the platform's Gitea keeps it; None while it has none (not started, or expired)."""
    owner, repo = repository_of(platform)
    with clients.of(platform, box) as gitea:
        try:
            return gitea.job_logs(owner, repo, gitea_job_id)
        except GiteaNotFound:
            return None


@dataclass(frozen=True)
class CancelOutcome:
    cancelled_jobs: list[str]
    cancel_requested: bool  # Gitea has no cancel: the run is marked and its runners deregistered
    deregistered_runners: list[int] = field(default_factory=list)


def _deregister(gitea: GiteaClient, target: _Target, jobs: list[WorkflowJob]) -> list[int]:
    """Delete the Gitea runners running the run's unfinished jobs (one Gitea forgot is skipped)."""
    removed = []
    scope = runner_scope(target.platform)
    running = {j.runner_id for j in jobs if j.runner_id and gitea_status(j.status) != COMPLETED}
    for runner_id in sorted(running):
        try:
            gitea.delete_runner(scope, runner_id)
        except GiteaRunnerNotFound:
            continue
        removed.append(runner_id)
    return removed


def _cancel_remote(gitea: GiteaClient, target: _Target, jobs: list[WorkflowJob]) -> tuple[bool, list[int]]:
    """Cancel through Gitea's REST endpoint where it has one (True); else deregister the runners of the
    run's unfinished jobs (False, with the runners removed)."""
    assert target.gitea_run_id is not None
    if gitea.cancel_supported() is not False:
        try:
            gitea.cancel_run(target.owner, target.repo, target.gitea_run_id)
            return True, []
        except GiteaUnsupported:
            pass
    return False, _deregister(gitea, target, jobs)


def cancel(database: Database, box: SecretBox, run_id: int, actor: str) -> CancelOutcome:
    """Cancel the run in Gitea (REST where it has the endpoint; else cancel-requested and its runners
    deregistered), mirror the result and record the event. Gitea errors propagate (nothing changed)."""
    target = _read_target(database, run_id)
    if target is None:
        return CancelOutcome([], False)
    with database.read_session() as session:
        run = session.get(CiRun, run_id)
        unfinished = [j.name for j in run.jobs if j.status != COMPLETED] if run is not None else []
    if target.gitea_run_id is None:
        return _cancel_undispatched(database, run_id, actor, unfinished)
    with clients.of(target.platform, box) as gitea:
        jobs = gitea.list_jobs(target.owner, target.repo, target.gitea_run_id)
        by_rest, removed = _cancel_remote(gitea, target, jobs)
        requested = not by_rest
        remote = gitea.get_run(target.owner, target.repo, target.gitea_run_id)
        jobs = gitea.list_jobs(target.owner, target.repo, target.gitea_run_id)
    now = utcnow()
    with database.session() as session:
        run = session.get(CiRun, run_id)
        if run is None:
            return CancelOutcome([], requested, removed)
        if requested:
            run.cancel_requested_at = run.cancel_requested_at or now
        apply_run(session, run, remote, jobs, now)
        cancelled = [j.name for j in run.jobs if j.name in unfinished and j.conclusion == "cancelled"]
        if requested:
            record_event(
                session,
                "ci_run_cancel_requested",
                platform_id=run.platform_id,
                subject=f"run {run.id}",
                reason=NO_CANCEL,
                payload={
                    "actor": actor,
                    "run_id": run.id,
                    "gitea_run_id": run.gitea_run_id,
                    "deregistered_runners": removed,
                },
            )
        else:
            record_event(
                session,
                "ci_run_cancelled",
                platform_id=run.platform_id,
                subject=f"run {run.id}",
                payload={"actor": actor, "run_id": run.id, "jobs": cancelled, "backend": "gitea"},
            )
    return CancelOutcome(cancelled, requested, removed)


def _cancel_undispatched(database: Database, run_id: int, actor: str, unfinished: list[str]) -> CancelOutcome:
    """A run whose Gitea run is not known yet: one never sent ends cancelled here; one that may have
    been sent is marked cancel-requested (cancelled in Gitea once found, by the next sync)."""
    now = utcnow()
    with database.session() as session:
        run = session.get(CiRun, run_id)
        if run is None:
            return CancelOutcome([], False)
        state = DispatchState.of(run)
        if state is None or (state.phase == "pending" and run.sync_error is not None):
            run.status, run.conclusion, run.completed_at = COMPLETED, CiConclusion.CANCELLED.value, now
            run.sync_error = None
            record_event(
                session,
                "ci_run_cancelled",
                platform_id=run.platform_id,
                subject=f"run {run.id}",
                payload={"actor": actor, "run_id": run.id, "jobs": unfinished, "backend": "gitea"},
            )
            return CancelOutcome(unfinished, False)
        run.cancel_requested_at = run.cancel_requested_at or now
        record_event(
            session,
            "ci_run_cancel_requested",
            platform_id=run.platform_id,
            subject=f"run {run.id}",
            reason="gitea_run_not_found_yet",
            payload={"actor": actor, "run_id": run.id},
        )
        return CancelOutcome([], True)
