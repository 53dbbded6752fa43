"""The reproducibility check of a CI run: both copies of a build job report their artifact digests;
any difference fails the run (``not_reproducible``, each artifact named with both digests, an event)
and skips the publish job; identical digests are an event and the run goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from diskci.ci.workflow import render, workflow
from diskci.platform.actions.catalog import invoke
from diskci.platform.ci import runners, scheduler
from diskci.platform.ci.reproducibility import Difference, differences, parse_digests, replica_payload
from diskci.platform.db.models import CiJob, CiRun, Event, NodePlatform, Role
from diskci.platform.db.session import Database
from diskci.platform.settings import PlatformSettings
from diskci.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
A, B, C = "a" * 64, "b" * 64, "c" * 64


def _digests(rootfs: str, kernel: str | None = None) -> dict[str, str]:
    """The build job's output: ``{artifact path: sha256}`` as JSON, as ``diskci build --github-output``."""
    digests = {"amd64/rootfs.img": rootfs} | ({"amd64/vmlinuz": kernel} if kernel else {})
    return {"digests": json.dumps(digests)}


def test_differences_name_each_artifact_that_differs_or_only_one_copy_has() -> None:
    first = {"amd64/rootfs.img": A, "amd64/vmlinuz": B, "amd64/only-first": C}
    second = {"amd64/rootfs.img": C, "amd64/vmlinuz": B, "amd64/only-second": A}
    assert differences(first, second) == [
        Difference("amd64/only-first", C, None),
        Difference("amd64/only-second", None, A),
        Difference("amd64/rootfs.img", A, C),
    ]
    assert differences(first, dict(first)) == []


@pytest.mark.parametrize("outputs", [None, {}, {"digests": ""}, {"digests": "not json"}, {"digests": "[1]"},
                                     {"digests": '{"a": 1}'}])  # fmt: skip
def test_digests_that_are_missing_or_malformed_read_as_none(outputs: dict[str, str] | None) -> None:
    assert parse_digests(outputs) is None


def test_the_replica_payload_carries_diskci_replica_in_its_jobs_env() -> None:
    payload = "on: push\njobs:\n  build:\n    runs-on: amd64\n    env: {A: b}\n    steps: [{run: 'true'}]\n"
    data = yaml.safe_load(replica_payload(payload))
    assert data["jobs"]["build"]["env"] == {"A": "b", "DISKCI_REPLICA": "1"}
    assert "on" in data and True not in data  # the trigger key keeps its name


def _run(database: Database, *, arches: tuple[str, ...] = ("amd64",)) -> tuple[int, list[int]]:
    """A run with a reproducibility check of the real workflow; every build job claimed by a runner."""
    text = render(workflow(load_spec(ROOT / "platforms/debian-12.yaml"), "platforms/debian-12.yaml"))
    with database.session() as s:
        platform = NodePlatform(
            name="p",
            architectures=list(arches),
            registry_repository="127.0.0.1:5000/ops/p",
            cosign_identity_regexp="^x$",
            cosign_oidc_issuer="https://ci.example",
        )
        s.add(platform)
        s.flush()
        arches_input = json.dumps(list(arches))
        run = scheduler.create_run(
            s, platform, text, ref="refs/tags/v1", sha="a" * 40, inputs={"arches": arches_input},
            reproducibility_check=True,
        )  # fmt: skip
        claimed = []
        for i in range(2 * len(arches)):
            token = runners.new_registration_token(s)
            runner, _ = runners.register(s, registration_token=token, name=f"w{i}", labels=list(arches))
            job = scheduler.claim_job(s, runner)
            assert job is not None
            claimed.append(job.id)
        return run.id, claimed


def _finish(database: Database, job_id: int, outputs: dict[str, str]) -> None:
    with database.session() as s:
        job = s.get(CiJob, job_id)
        assert job is not None
        scheduler.record_state(s, job, conclusion="success", outputs=outputs)


def _events(database: Database, type_: str) -> list[Event]:
    with database.read_session() as s:
        rows = list(s.scalars(select(Event).where(Event.type == type_)))
        s.expunge_all()
        return rows


def test_both_copies_are_planned_and_only_the_rebuild_is_a_replica(platform_db: Database) -> None:
    run_id, claimed = _run(platform_db)
    with platform_db.read_session() as s:
        run = s.get(CiRun, run_id)
        assert run is not None
        jobs = {j.name: j for j in run.jobs}
        assert list(jobs) == ["build amd64", "build amd64 (rebuild)", "publish"]
        first, rebuild = jobs["build amd64"], jobs["build amd64 (rebuild)"]
        assert {first.id, rebuild.id} == set(claimed)
        assert "env" not in yaml.safe_load(first.payload)["jobs"]["build"]
        assert yaml.safe_load(rebuild.payload)["jobs"]["build"]["env"] == {"DISKCI_REPLICA": "1"}


def test_identical_digests_are_an_event_and_the_publish_job_is_queued(platform_db: Database) -> None:
    run_id, (first, rebuild) = _run(platform_db)
    same = _digests(A, B)
    _finish(platform_db, first, same)
    assert _events(platform_db, "ci_run_reproducible") == []  # not before both are done
    _finish(platform_db, rebuild, same)
    with platform_db.read_session() as s:
        run = s.get(CiRun, run_id)
        assert run is not None
        assert (run.failure_reason, run.failure_detail) == (None, None)
        assert {j.name: j.status for j in run.jobs}["publish"] == "queued"
    [event] = _events(platform_db, "ci_run_reproducible")
    assert event.payload["run_id"] == run_id and event.payload["artifacts"] == 2
    assert _events(platform_db, "ci_run_not_reproducible") == []


def test_a_differing_artifact_fails_the_run_names_it_with_both_digests_and_skips_publish(
    platform_db: Database,
) -> None:
    run_id, (first, rebuild) = _run(platform_db)
    _finish(platform_db, first, _digests(A, B))
    _finish(platform_db, rebuild, _digests(C, B))
    with platform_db.read_session() as s:
        run = s.get(CiRun, run_id)
        assert run is not None
        assert (run.status, run.conclusion, run.failure_reason) == (
            "completed",
            "failure",
            "not_reproducible",
        )
        assert run.failure_detail == (
            f"amd64/rootfs.img: sha256 {A} in 'build amd64', {C} in 'build amd64 (rebuild)'"
        )
        publish = {j.name: j for j in run.jobs}["publish"]
        assert (publish.status, publish.conclusion) == ("completed", "skipped")
        detail = run.failure_detail
    shown = invoke(
        "get_gitea_workflow_run", {"run_id": run_id}, database=platform_db, settings=PlatformSettings(),
        actor="test", role=Role.VIEWER,
    )  # fmt: skip
    assert (shown.failure_reason, shown.failure_detail) == ("not_reproducible", detail)  # type: ignore[attr-defined]
    [event] = _events(platform_db, "ci_run_not_reproducible")
    assert event.reason == "not_reproducible"
    assert event.payload["differences"] == [{"artifact": "amd64/rootfs.img", "first": A, "second": C}]


def test_a_copy_without_digests_cannot_be_compared_and_fails_the_run(platform_db: Database) -> None:
    run_id, (first, rebuild) = _run(platform_db)
    _finish(platform_db, first, _digests(A))
    _finish(platform_db, rebuild, {})
    with platform_db.read_session() as s:
        run = s.get(CiRun, run_id)
        assert run is not None
        assert (run.conclusion, run.failure_reason) == ("failure", "digests_missing")
        assert "build amd64 (rebuild)" in (run.failure_detail or "")


def test_a_failed_copy_is_no_comparison_the_run_fails_by_its_job(platform_db: Database) -> None:
    run_id, (first, rebuild) = _run(platform_db)
    _finish(platform_db, first, _digests(A))
    with platform_db.session() as s:
        job = s.get(CiJob, rebuild)
        assert job is not None
        scheduler.record_state(s, job, conclusion="failure")
    with platform_db.read_session() as s:
        run = s.get(CiRun, run_id)
        assert run is not None
        assert (run.conclusion, run.failure_reason) == ("failure", None)
    assert (
        _events(platform_db, "ci_run_not_reproducible") == _events(platform_db, "ci_run_reproducible") == []
    )
