"""A run with a reproducibility check through a served platform and a real ``diskci runner`` (act in
host mode): each build job runs twice, the second copy with ``DISKCI_REPLICA=1`` (its push step
skipped); each reports its ``digests`` output (from ``$GITHUB_OUTPUT``, through the job's ``outputs:``);
identical digests let the publish job run with them, differing ones fail the run ``not_reproducible``
naming the artifact with both digests, and skip the publish job. No image is built here: the steps
write their outputs themselves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from served_platform import platform_serve, serve_env
from sqlalchemy import select
from test_runner_agent import TEST_SECRET_KEY, Platform, agent, git_repo, register, wait_completed

from diskci.platform.ci import scheduler
from diskci.platform.db.models import CiRun, Event, NodePlatform
from diskci.platform.db.session import Database


def build_workflow(digest_command: str) -> str:
    """A build job writing ``digests`` the way ``diskci build --github-output`` does, then publish."""
    return f"""\
on: push
jobs:
  build:
    name: build ${{{{ matrix.arch }}}}
    runs-on: ${{{{ matrix.arch }}}}
    strategy:
      matrix:
        arch: [amd64]
    outputs:
      digests: ${{{{ steps.build.outputs.digests }}}}
    steps:
      - name: Build
        id: build
        run: |
          echo "replica=${{DISKCI_REPLICA:-0}}"
          digest=$({digest_command} | sha256sum | cut -c1-64)
          echo "digests={{\\"amd64/rootfs.img\\":\\"$digest\\"}}" >> "$GITHUB_OUTPUT"
      - name: Push
        if: ${{{{ env.DISKCI_REPLICA != '1' }}}}
        run: echo "pushed this architecture's part"
  publish:
    needs: build
    runs-on: amd64
    steps:
      - name: Publish
        env:
          DIGESTS: ${{{{ needs.build.outputs.digests }}}}
        run: echo "publishing $DIGESTS"
"""


DETERMINISTIC = build_workflow("printf 'the same bytes'")
NONDETERMINISTIC = build_workflow("head -c 32 /dev/urandom")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    state = tmp_path / "platform"
    env = serve_env(state, TEST_SECRET_KEY)
    with platform_serve(env, tmp_path / "serve.log", consumer=False) as served:
        db = Database(f"sqlite:///{state / 'platform.db'}")
        try:
            yield Platform(served, db, tmp_path)
        finally:
            db.dispose()


def checked_run(p: Platform, workflow: str) -> int:
    repo, sha = git_repo(p.tmp / f"repo-{time.monotonic_ns()}")
    with p.db.session() as session:
        platform = NodePlatform(
            name=f"debian-{time.monotonic_ns()}",
            architectures=["amd64"],
            registry_repository="127.0.0.1:5000/ops/disk-images/debian-12",
            cosign_identity_regexp=".*",
            cosign_oidc_issuer="https://ci.example",
            image_build_repository=str(repo),
        )
        session.add(platform)
        session.flush()
        run = scheduler.create_run(
            session, platform, workflow, ref="refs/heads/main", sha=sha, reproducibility_check=True
        )
        return run.id


def stored(p: Platform, run_id: int) -> tuple[CiRun, dict[str, dict[str, str]], list[Event]]:
    with p.db.read_session() as session:
        run = session.get(CiRun, run_id)
        assert run is not None
        outputs = {job.name: dict(job.outputs or {}) for job in run.jobs}
        events = list(session.scalars(select(Event).where(Event.subject == f"run {run_id}")))
        session.expunge_all()
        return run, outputs, events


def test_identical_builds_pass_the_check_and_publish_gets_their_digests(platform: Platform) -> None:
    run_id = checked_run(platform, DETERMINISTIC)
    first, second = register(platform, "w1", "amd64"), register(platform, "w2", "amd64")
    with agent(first), agent(second):  # two workers: the two copies may run at once
        run = wait_completed(platform, run_id, first)
    assert (run["status"], run["conclusion"]) == ("completed", "success"), run
    jobs = run["jobs"]
    assert list(jobs) == ["build amd64", "build amd64 (rebuild)", "publish"]
    assert jobs["build amd64"]["steps"] == [("Build", "success"), ("Push", "success")]
    assert jobs["build amd64 (rebuild)"]["steps"] == [("Build", "success"), ("Push", "skipped")]
    assert "replica=0" in jobs["build amd64"]["log"] and "replica=1" in jobs["build amd64 (rebuild)"]["log"]
    assert "pushed this architecture's part" not in jobs["build amd64 (rebuild)"]["log"]
    record, outputs, events = stored(platform, run_id)
    digest = outputs["build amd64"]["digests"]
    assert set(json.loads(digest)) == {"amd64/rootfs.img"}
    assert outputs["build amd64 (rebuild)"]["digests"] == digest
    assert f"publishing {digest}" in jobs["publish"]["log"]  # the needs outputs reached the next job
    assert (record.failure_reason, record.failure_detail) == (None, None)
    assert [e.type for e in events if e.type.startswith("ci_run_")] == ["ci_run_reproducible"]


def test_differing_builds_fail_the_run_naming_the_artifact_and_skip_publish(platform: Platform) -> None:
    run_id = checked_run(platform, NONDETERMINISTIC)
    state_dir = register(platform, "w1", "amd64")
    with agent(state_dir):
        run = wait_completed(platform, run_id, state_dir)
    assert (run["status"], run["conclusion"]) == ("completed", "failure"), run
    jobs = run["jobs"]
    assert jobs["build amd64"]["conclusion"] == jobs["build amd64 (rebuild)"]["conclusion"] == "success"
    assert jobs["publish"]["conclusion"] == "skipped" and jobs["publish"]["log"] == []
    record, outputs, events = stored(platform, run_id)
    digests = [json.loads(outputs[name]["digests"])["amd64/rootfs.img"]
               for name in ("build amd64", "build amd64 (rebuild)")]  # fmt: skip
    assert digests[0] != digests[1]
    assert record.failure_reason == "not_reproducible"
    assert record.failure_detail == (
        f"amd64/rootfs.img: sha256 {digests[0]} in 'build amd64', {digests[1]} in 'build amd64 (rebuild)'"
    )
    [event] = [e for e in events if e.type == "ci_run_not_reproducible"]
    assert event.payload["differences"] == [
        {"artifact": "amd64/rootfs.img", "first": digests[0], "second": digests[1]}
    ]
