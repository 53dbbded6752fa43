"""The reproducibility check of a CI run: a build job and its second copy (``replica`` 1) must report
the same artifact digests.

A run made with ``reproducibility_check`` plans each build job twice (``scheduler.create_run``); the
second copy runs with ``DISKCI_REPLICA=1`` in its job's env (``replica_payload``), which the workflow
reads to build without the cache and not to push. Each copy reports the output ``digests``
(``{artifact path: sha256}``, JSON). Once both copies of a job have succeeded, ``check_pair`` compares
them: any artifact whose digest differs (or that only one copy has) fails the run with reason
``not_reproducible``, a ``failure_detail`` naming each such artifact with both digests, and an event
``ci_run_not_reproducible``; the scheduler then skips the jobs that need the builds (the publish job).
Identical digests give an event ``ci_run_reproducible`` and the run goes on. A copy that reported no
readable ``digests`` cannot be compared: the run fails with reason ``digests_missing``.

``differences(first, second)`` is the pure comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from sqlalchemy.orm import Session

from diskci.ci.workflow import DIGESTS_OUTPUT, REPLICA_ENV
from diskci.platform.db.models import CiConclusion, CiJob, CiRun, CiStatus, Event

__all__ = [
    "DIGESTS_MISSING",
    "NOT_REPRODUCIBLE",
    "Difference",
    "check_pair",
    "differences",
    "parse_digests",
    "replica_payload",
]

NOT_REPRODUCIBLE = "not_reproducible"
DIGESTS_MISSING = "digests_missing"
EVENT_DIFFERS = "ci_run_not_reproducible"
EVENT_IDENTICAL = "ci_run_reproducible"


@dataclass(frozen=True)
class Difference:
    """One artifact whose digest is not the same in both copies (None: that copy has no such artifact)."""

    artifact: str
    first: str | None
    second: str | None

    def describe(self, first_job: str, second_job: str) -> str:
        return (
            f"{self.artifact}: sha256 {self.first or '(absent)'} in {first_job!r}, "
            f"{self.second or '(absent)'} in {second_job!r}"
        )


def parse_digests(outputs: dict[str, Any] | None) -> dict[str, str] | None:
    """The ``digests`` output as ``{artifact path: sha256}``, or None when missing or malformed."""
    raw = (outputs or {}).get(DIGESTS_OUTPUT)
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return {str(k): v for k, v in value.items()}


def differences(first: dict[str, str], second: dict[str, str]) -> list[Difference]:
    """Every artifact whose digest differs between the two copies, in path order."""
    return [
        Difference(path, first.get(path), second.get(path))
        for path in sorted(set(first) | set(second))
        if first.get(path) != second.get(path)
    ]


def replica_payload(payload: str) -> str:
    """The one-job workflow ``payload`` with ``DISKCI_REPLICA: "1"`` in its job's env."""
    data = yaml.safe_load(payload) or {}
    data = {("on" if key is True else key): value for key, value in data.items()}
    for job in (data.get("jobs") or {}).values():
        if isinstance(job, dict):
            env = job.get("env")
            job["env"] = {**(env if isinstance(env, dict) else {}), REPLICA_ENV: "1"}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)


def _counterpart(job: CiJob) -> CiJob | None:
    for other in job.run.jobs:
        if other.id != job.id and other.job_id == job.job_id and other.matrix == job.matrix:
            return other
    return None


def _fail(run: CiRun, reason: str, detail: str) -> None:
    if run.failure_reason is None:
        run.failure_reason = reason
        run.failure_detail = detail
    else:  # a second pair that fails too: both are named
        run.failure_detail = f"{run.failure_detail}\n{detail}" if run.failure_detail else detail


def check_pair(session: Session, job: CiJob, now: datetime) -> None:
    """Compare ``job`` with its other copy once both succeeded (else nothing); see the module."""
    run = job.run
    if not run.reproducibility_check or run.status == CiStatus.COMPLETED.value:
        return
    other = _counterpart(job)
    if other is None:
        return
    done = (job.status, job.conclusion), (other.status, other.conclusion)
    if any(pair != (CiStatus.COMPLETED.value, CiConclusion.SUCCESS.value) for pair in done):
        return
    first, second = (job, other) if job.replica == 0 else (other, job)
    base = {"run_id": run.id, "job": first.name, "rebuild": second.name}
    digests = parse_digests(first.outputs), parse_digests(second.outputs)
    if digests[0] is None or digests[1] is None:
        lacking = [j.name for j, d in zip((first, second), digests, strict=True) if d is None]
        detail = f"{first.name}: no {DIGESTS_OUTPUT} output to compare from {', '.join(map(repr, lacking))}"
        _fail(run, DIGESTS_MISSING, detail)
        _event(session, run, EVENT_DIFFERS, DIGESTS_MISSING, {**base, "detail": detail}, now)
        return
    found = differences(digests[0], digests[1])
    if not found:
        payload = {**base, "artifacts": len(digests[0]), "detail": "identical artifact digests"}
        _event(session, run, EVENT_IDENTICAL, None, payload, now)
        return
    lines = [d.describe(first.name, second.name) for d in found]
    _fail(run, NOT_REPRODUCIBLE, "\n".join(lines))
    differing = [{"artifact": d.artifact, "first": d.first, "second": d.second} for d in found]
    payload = {**base, "differences": differing, "detail": "\n".join(lines)}
    _event(session, run, EVENT_DIFFERS, NOT_REPRODUCIBLE, payload, now)


def _event(session: Session, run: CiRun, type_: str, reason: str | None, payload: dict[str, Any],
           now: datetime) -> None:  # fmt: skip
    session.add(
        Event(
            type=type_,
            platform_id=run.platform_id,
            subject=f"run {run.id}",
            reason=reason,
            payload=payload,
            created_at=now,
        )
    )
