"""The periodic lease check (``expire_ci_jobs``, every 30 s on the task queue): a CI job whose worker
stopped calling fails ``worker_lost``, once, with a ``ci_job_worker_lost`` event."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from diskci.ci.workflow import render, workflow
from diskci.platform.ci import runners, scheduler
from diskci.platform.db.models import CiJob, Event, NodePlatform, utcnow
from diskci.platform.db.session import Database
from diskci.platform.tasks import expire_ci_jobs
from diskci.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_a_lost_job_fails_worker_lost_with_an_event(platform_db: Database) -> None:
    text = render(workflow(load_spec(ROOT / "platforms/debian-12-amd64.yaml"), "platforms/x.yaml"))
    with platform_db.session() as s:
        platform = NodePlatform(
            name="p",
            architectures=["amd64"],
            registry_repository="127.0.0.1:5000/ops/p",
            cosign_identity_regexp="^x$",
            cosign_oidc_issuer="https://ci.example",
        )
        s.add(platform)
        s.flush()
        run = scheduler.create_run(s, platform, text, ref="refs/tags/v1", sha="a" * 40)
        token = runners.new_registration_token(s)
        runner, _ = runners.register(s, registration_token=token, name="w", labels=["amd64"])
        job = scheduler.claim_job(s, runner)
        assert job is not None
        job.lease_expires_at = utcnow() - timedelta(seconds=1)
        job_id, run_id = job.id, run.id
    assert expire_ci_jobs(platform_db) == [job_id]
    assert expire_ci_jobs(platform_db) == []  # once
    with platform_db.read_session() as s:
        lost = s.get(CiJob, job_id)
        assert lost is not None and (lost.conclusion, lost.failure_reason) == ("failure", "worker_lost")
        event = s.scalars(select(Event).where(Event.type == "ci_job_worker_lost")).one()
        assert (event.reason, event.payload["run_id"], event.payload["job"]) == (
            "worker_lost",
            run_id,
            lost.name,
        )
