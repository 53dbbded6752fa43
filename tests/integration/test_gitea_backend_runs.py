"""The gitea CI backend's runs against the fake Gitea (tests/fake_gitea.py, a test double) served on
127.0.0.1: configuring a platform for Gitea (bad fields named, an unreachable Gitea stores nothing),
bootstrap → run_id → the Gitea run found and mirrored, status and logs through the same actions as the
embedded backend, cancel on a Gitea with a cancel API (1.28) and without (1.25), Gitea's webhook
deliveries, polling back-off, and Gitea answering 500 or timing out during dispatch and status."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from huey import MemoryHuey
from loopback import free_port
from pydantic import ValidationError
from sqlalchemy import select

from diskci.errors import InvalidRequest
from diskci.platform.actions.catalog import invoke
from diskci.platform.actions.ci_runs import CiJobNotFound, LogsOut, RunAlreadyCompleted, RunOut
from diskci.platform.ci import gitea_polling, gitea_runs
from diskci.platform.db.models import CiRun, Event, NodePlatform, Role
from diskci.platform.db.session import Database
from diskci.platform.gitea.answers import GiteaRefused, GiteaUnavailable
from diskci.platform.gitea.client import RetryPolicy
from diskci.platform.gitea.webhooks import sign_body
from diskci.platform.secrets import SecretBox
from diskci.platform.settings import PlatformSettings
from fake_gitea import FakeGitea, served

PLATFORM = "debian-12-amd64"
OWNER, REPO = "ops", "images"
MAIN_SHA, TAG_SHA = "a" * 40, "b" * 40
JOBS = ["build amd64", "build arm64", "publish"]


@dataclass
class Env:
    db: Database
    settings: PlatformSettings
    fake: FakeGitea
    url: str

    def call(self, action: str, role: Role = Role.ADMIN, /, confirmed: bool = False, **data: Any) -> Any:
        return invoke(action, data, database=self.db, settings=self.settings, actor="test", role=role,
                      confirmed=confirmed)  # fmt: skip

    def configure(self, **over: Any) -> Any:
        data = {"node_platform": PLATFORM, "ci_backend": "gitea", "gitea_url": self.url,
                "gitea_repository": f"{OWNER}/{REPO}", "gitea_token": self.fake.token, **over}  # fmt: skip
        return self.call("system_configure_disk_image_ci", **data)

    def run(self, run_id: int) -> CiRun:
        with self.db.read_session() as s:
            run = s.get(CiRun, run_id)
            assert run is not None
            _ = run.jobs, run.platform
            s.expunge_all()
            return run

    def events(self, kind: str) -> list[Event]:
        with self.db.read_session() as s:
            found = list(s.scalars(select(Event).where(Event.type == kind).order_by(Event.id)))
            s.expunge_all()
            return found

    def bootstrap(self, ref: str = "main") -> Any:
        return self.call("bootstrap_disk_image_ci", Role.OPERATOR, node_platform=PLATFORM, ref=ref)

    def box(self) -> SecretBox:
        return SecretBox(key=self.settings.resolve_secret_key())


Start = Callable[..., Env]


@pytest.fixture
def start(
    platform_db: Database, platform_settings: PlatformSettings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Start]:
    """start(version=..., cancel=...) → a served fake Gitea and a platform (not yet configured for it)."""
    quick = gitea_runs.CallPolicy(
        timeout=1.0, retry=RetryPolicy(attempts=2, first_delay=0.01, max_delay=0.02)
    )
    monkeypatch.setattr(gitea_runs, "CALLS", quick)
    gitea_runs.clients.clear()
    with contextlib.ExitStack() as stack:
        stack.callback(gitea_runs.clients.clear)

        def begin(version: str = "1.25.0", *, cancel: bool = False) -> Env:
            fake = FakeGitea(version=version, cancel=cancel)
            fake.add_repo(OWNER, REPO, refs={"refs/heads/main": MAIN_SHA, "refs/tags/v1": TAG_SHA},
                          workflows={"build.yaml": JOBS})  # fmt: skip
            url = stack.enter_context(served(fake))
            env = Env(platform_db, platform_settings, fake, url)
            env.call("system_create_node_platform", name=PLATFORM, architectures=["amd64", "arm64"],
                     registry_repository=f"127.0.0.1:5000/ops/disk-images/{PLATFORM}",
                     cosign_identity_regexp=r"^https://ci\.example/ops/images/.+$",
                     cosign_oidc_issuer="https://ci.example")  # fmt: skip
            return env

        yield begin


def _stored(env: Env) -> NodePlatform:
    with env.db.read_session() as s:
        platform = s.scalar(select(NodePlatform).where(NodePlatform.name == PLATFORM))
        assert platform is not None
        s.expunge(platform)
        return platform


# --- configuring ------------------------------------------------------------------------------------------


def test_configure_names_bad_fields_and_stores_nothing_on_failure(start: Start) -> None:
    env = start()
    with pytest.raises(InvalidRequest, match="gitea_url"):
        env.configure(gitea_url="ftp://gitea.example")
    with pytest.raises(InvalidRequest, match="gitea_repository"):
        env.configure(gitea_repository="no-slash")
    with pytest.raises(InvalidRequest, match="gitea_token"):
        env.configure(gitea_token=None)
    with pytest.raises(InvalidRequest, match=r"gitea_repository 'ops/nope'.*no such repository"):
        env.configure(gitea_repository="ops/nope")
    with pytest.raises(InvalidRequest, match=r"gitea_token: .* refused it"):
        env.configure(gitea_token="wrong-token")
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GiteaUnavailable) as unreachable:
        env.configure(gitea_url=closed)
    assert unreachable.value.http_status == 503
    platform = _stored(env)  # none of those stored anything
    assert platform.ci_backend == "embedded" and platform.gitea_url is None
    assert platform.gitea_token_encrypted is None and platform.gitea_webhook_secret_encrypted is None

    out = env.configure()
    assert out.ci_backend == "gitea" and out.has_gitea_token and out.gitea_repository == "ops/images"
    assert out.gitea_webhook_url == f"{env.settings.ci_base_url}/api/v1/ci/gitea/{PLATFORM}"
    assert out.gitea_webhook_secret and out.gitea_webhook_secret_fingerprint
    assert env.fake.token not in json.dumps(out.model_dump(mode="json"))
    again = env.call("system_configure_disk_image_ci", node_platform=PLATFORM)
    assert again.gitea_webhook_secret is None  # shown once
    assert again.gitea_webhook_secret_fingerprint == out.gitea_webhook_secret_fingerprint
    stored = _stored(env)
    assert stored.gitea_token_encrypted and env.fake.token not in stored.gitea_token_encrypted


def test_configure_refuses_a_gitea_without_the_runs_api(start: Start) -> None:
    env = start("1.24.0")
    with pytest.raises(InvalidRequest, match=r"needs 1\.25 or later"):
        env.configure()
    assert _stored(env).ci_backend == "embedded"


def test_configure_input_validation_names_the_field(start: Start) -> None:
    env = start()
    with pytest.raises((InvalidRequest, ValidationError)) as bad:
        env.configure(gitea_token="two words")
    assert "gitea_token" in str(bad.value)


# --- bootstrap, status, logs ------------------------------------------------------------------------------


def test_bootstrap_status_and_logs_through_the_actions(start: Start) -> None:
    env = start()
    env.configure()
    out = env.bootstrap()
    assert out.status == "queued" and out.event == "workflow_dispatch" and out.jobs == JOBS
    assert out.sha == MAIN_SHA and out.arches == ["amd64", "arm64"]
    run = env.run(out.run_id)
    [gitea_run] = env.fake.runs
    assert run.gitea_run_id == gitea_run and run.sync_error is None and run.synced_at is not None
    assert json.loads(run.inputs["arches"]) == ["amd64", "arm64"]

    runner = env.fake.add_runner("worker-1", "repo", OWNER, REPO)
    amd64, arm64, publish = env.fake.job_ids(gitea_run)
    env.fake.set_job(amd64, status="in_progress", runner_id=runner, log="one\ntwo\nthree\n")
    env.fake.set_steps(amd64, [("checkout", "completed", "success"), ("build", "in_progress", "")])
    shown = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert isinstance(shown, RunOut) and shown.status == "in_progress" and shown.sync_error is None
    job = shown.jobs[0]
    assert (job.name, job.status, job.runner, job.conclusion) == (
        "build amd64",
        "in_progress",
        "worker-1",
        None,
    )
    assert [(s.name, s.status, s.conclusion) for s in job.steps] == [
        ("checkout", "completed", "success"), ("build", "in_progress", None)]  # fmt: skip
    assert [j.status for j in shown.jobs[1:]] == ["queued", "queued"] and shown.jobs[
        1
    ].waiting_for_labels == []

    logs = env.call("get_gitea_job_logs", Role.VIEWER, run_id=out.run_id, job_name="build amd64", limit=2)
    assert isinstance(logs, LogsOut) and logs.logs == ["one", "two"] and logs.next_offset == 2
    assert not logs.complete
    rest = env.call("get_gitea_job_logs", Role.VIEWER, run_id=out.run_id, job_name="build amd64", offset=2)
    assert rest.logs == ["three"] and not rest.complete  # the job still runs
    none_yet = env.call("get_gitea_job_logs", Role.VIEWER, run_id=out.run_id, job_name="publish")
    assert none_yet.logs == [] and not none_yet.complete
    with pytest.raises(CiJobNotFound, match="has no job 'nope'"):
        env.call("get_gitea_job_logs", Role.VIEWER, run_id=out.run_id, job_name="nope")

    for job_id in (amd64, arm64, publish):
        env.fake.set_job(job_id, status="completed", conclusion="success", runner_id=runner, log="done\n")
    done = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert (done.status, done.conclusion) == ("completed", "success") and done.completed_at is not None
    final = env.call("get_gitea_job_logs", Role.VIEWER, run_id=out.run_id, job_name="publish")
    assert final.logs == ["done"] and final.complete
    listed = env.call("system_list_disk_image_ci_runs", Role.VIEWER, node_platform=PLATFORM)
    assert [(r.run_id, r.status, r.conclusion, r.jobs) for r in listed.runs] == [
        (out.run_id, "completed", "success", 3)]  # fmt: skip


def test_a_refused_dispatch_fails_the_run_with_its_reason(start: Start) -> None:
    env = start()
    env.configure()
    with pytest.raises(GiteaRefused, match="422") as refused:
        env.bootstrap("no-such-branch")
    assert refused.value.http_status == 400
    [run] = [env.run(e.payload["run_id"]) for e in env.events("ci_run_queued")]
    assert (run.status, run.conclusion, run.failure_reason) == ("completed", "failure", "gitea_refused")
    assert "does not exist" in (run.failure_detail or "")
    [event] = env.events("ci_run_dispatch_failed")
    assert event.reason == "gitea_refused" and event.payload["run_id"] == run.id
    with pytest.raises(InvalidRequest, match="reproducibility_check"):
        env.call("bootstrap_disk_image_ci", Role.OPERATOR, node_platform=PLATFORM, ref="main",
                 reproducibility_check=True)  # fmt: skip


# --- cancel -----------------------------------------------------------------------------------------------


def test_cancel_through_gitea_rest_where_it_has_the_endpoint(start: Start) -> None:
    env = start("1.28.0", cancel=True)
    env.configure()
    out = env.bootstrap()
    gitea_run = env.run(out.run_id).gitea_run_id
    assert gitea_run is not None
    env.fake.set_job(env.fake.job_ids(gitea_run)[0], status="in_progress")
    cancelled = env.call("system_cancel_disk_image_ci_run", Role.OPERATOR, confirmed=True, run_id=out.run_id)
    assert (cancelled.status, cancelled.conclusion, cancelled.cancel_requested) == (
        "completed",
        "cancelled",
        False,
    )
    assert cancelled.cancelled_jobs == JOBS
    assert env.fake.calls("POST", f"/actions/runs/{gitea_run}/cancel") == 1
    [event] = env.events("ci_run_cancelled")
    assert event.payload["jobs"] == JOBS
    with pytest.raises(RunAlreadyCompleted, match="already completed"):
        env.call("system_cancel_disk_image_ci_run", Role.OPERATOR, confirmed=True, run_id=out.run_id)


def test_cancel_without_a_cancel_api_deregisters_the_runner(start: Start) -> None:
    env = start("1.25.0")
    env.configure()
    out = env.bootstrap()
    gitea_run = env.run(out.run_id).gitea_run_id
    assert gitea_run is not None
    runner = env.fake.add_runner("worker-1", "repo", OWNER, REPO)
    first = env.fake.job_ids(gitea_run)[0]
    env.fake.set_job(first, status="in_progress", runner_id=runner)
    answer = env.call("system_cancel_disk_image_ci_run", Role.OPERATOR, confirmed=True, run_id=out.run_id)
    assert answer.cancel_requested and answer.status == "in_progress" and answer.cancelled_jobs == []
    assert runner not in env.fake.runners  # deregistered: DELETE .../runners/{id}
    assert env.fake.calls("POST", "/cancel") == 0
    run = env.run(out.run_id)
    assert run.cancel_requested_at is not None
    [event] = env.events("ci_run_cancel_requested")
    assert event.reason == "gitea_has_no_cancel" and event.payload["deregistered_runners"] == [runner]
    # Gitea notices the runner is gone: the job fails, the rest never start; diskci shows it cancelled
    for job_id in env.fake.job_ids(gitea_run):
        env.fake.set_job(job_id, status="completed", conclusion="failure" if job_id == first else "cancelled")
    shown = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert (shown.status, shown.conclusion) == ("completed", "cancelled")


# --- webhooks ---------------------------------------------------------------------------------------------


def _post(
    client: Any, body: dict[str, Any] | bytes, event: str, secret: str, platform: str = PLATFORM
) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"X-Gitea-Event": event, "X-Gitea-Delivery": "d-1", "X-Gitea-Signature": sign_body(secret, raw),
               "Content-Type": "application/json"}  # fmt: skip
    return client.post(f"/api/v1/ci/gitea/{platform}", content=raw, headers=headers)


def test_webhook_deliveries_update_runs_at_once(start: Start, platform_client: Any) -> None:
    env = start()
    secret = env.configure().gitea_webhook_secret
    out = env.bootstrap()
    gitea_run = env.run(out.run_id).gitea_run_id
    assert gitea_run is not None
    job = env.fake.job_ids(gitea_run)[0]
    env.fake.set_job(job, status="in_progress")
    answer = _post(platform_client, env.fake.delivery("workflow_job", job), "workflow_job", secret)
    assert answer.status_code == 200, answer.text
    assert answer.json()["run_id"] == out.run_id and answer.json()["status"] == "in_progress"
    assert env.run(out.run_id).jobs[0].status == "in_progress"  # no poll needed

    body = env.fake.delivery("workflow_job", job)
    assert _post(platform_client, body, "workflow_job", "not-the-secret").status_code == 401
    unsigned = platform_client.post(f"/api/v1/ci/gitea/{PLATFORM}", content=json.dumps(body).encode(),
                                    headers={"X-Gitea-Event": "workflow_job"})  # fmt: skip
    assert unsigned.status_code == 401
    assert _post(platform_client, b"[1, 2]", "workflow_job", secret).status_code == 400
    assert _post(platform_client, {"workflow_job": {"id": "x"}}, "workflow_job", secret).status_code == 400
    foreign = {**body, "repository": {"full_name": "someone/else"}}
    assert _post(platform_client, foreign, "workflow_job", secret).status_code == 400
    assert _post(platform_client, body, "workflow_job", secret, platform="nope").status_code == 404
    too_big = b"{" + b" " * (env.settings.webhook_max_body_bytes + 1) + b"}"
    assert _post(platform_client, too_big, "workflow_job", secret).status_code == 413
    push = {
        "ref": "refs/tags/v1",
        "before": "0" * 40,
        "after": TAG_SHA,
        "repository": {"full_name": "ops/images"},
    }
    pushed = _post(platform_client, push, "push", secret)
    assert pushed.status_code == 202 and "Gitea starts the workflow" in pushed.json()["ignored"]

    # a run diskci did not dispatch (a tag push in Gitea) gets its CI run
    tag_run = env.fake.add_run(OWNER, REPO, ref="refs/tags/v1", event="push")
    made = _post(platform_client, env.fake.delivery("workflow_run", tag_run), "workflow_run", secret)
    assert made.status_code == 200, made.text
    discovered = env.run(made.json()["run_id"])
    assert (discovered.event, discovered.ref, discovered.sha) == ("push", "refs/tags/v1", TAG_SHA)
    assert discovered.gitea_run_id == tag_run and [j.name for j in discovered.jobs] == JOBS
    [event] = env.events("ci_run_discovered")
    assert event.payload["gitea_run_id"] == tag_run
    again = _post(platform_client, env.fake.delivery("workflow_run", tag_run), "workflow_run", secret)
    assert again.json()["run_id"] == discovered.id  # the same run, once


def test_webhook_of_an_embedded_platform_is_refused(start: Start, platform_client: Any) -> None:
    env = start()
    answer = _post(platform_client, {"action": "x"}, "workflow_job", "secret")
    assert answer.status_code == 400 and "embedded" in answer.json()["detail"]
    assert env.events("ci_run_discovered") == []


# --- faults -----------------------------------------------------------------------------------------------


def test_gitea_500_during_dispatch_is_looked_for_then_dispatched_again(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = start()
    env.configure()
    env.fake.fail_next(1, status=500, path_contains="/dispatches")
    out = env.bootstrap()  # no 500 for the caller: the run waits, saying why
    run = env.run(out.run_id)
    assert (
        run.status == "queued" and run.gitea_run_id is None and "may have done it" in (run.sync_error or "")
    )
    assert env.fake.runs == {}
    shown = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert shown.status == "queued" and shown.sync_error
    monkeypatch.setattr(gitea_runs, "REDISPATCH_AFTER", 0.0)
    recovered = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert recovered.sync_error is None and [j.name for j in recovered.jobs] == JOBS
    assert env.fake.calls("POST", "/dispatches") == 2 and len(env.fake.runs) == 1
    assert len(env.events("ci_run_sync_failed")) == 1


def _point_gitea_at(env: Env, url: str) -> None:
    with env.db.session() as s:
        platform = s.scalar(select(NodePlatform).where(NodePlatform.name == PLATFORM))
        assert platform is not None
        platform.gitea_url = url
    gitea_runs.clients.clear()


def test_a_dispatch_that_never_reached_gitea_is_sent_again(start: Start) -> None:
    env = start()
    env.configure()
    _point_gitea_at(env, f"http://127.0.0.1:{free_port()}")  # Gitea down: nothing listens there
    out = env.bootstrap()
    run = env.run(out.run_id)
    assert run.status == "queued" and "cannot reach Gitea" in (run.sync_error or "")
    _point_gitea_at(env, env.url)  # back
    shown = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert shown.sync_error is None and [j.name for j in shown.jobs] == JOBS
    assert env.fake.calls("POST", "/dispatches") == 1 and len(env.fake.runs) == 1


def test_a_dispatch_that_timed_out_but_took_effect_is_found_not_repeated(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = start()
    env.configure()
    env.fake.set_delay(1.5, path_contains="/dispatches", count=1)  # longer than the 1 s timeout
    out = env.bootstrap()
    assert env.run(out.run_id).gitea_run_id is None
    monkeypatch.setattr(gitea_runs, "REDISPATCH_AFTER", 0.0)
    for _ in range(40):  # the slow Gitea finishes the dispatch meanwhile
        if env.fake.runs:
            break
        time.sleep(0.05)
    shown = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert shown.sync_error is None and [j.name for j in shown.jobs] == JOBS
    assert env.fake.calls("POST", "/dispatches") == 1 and len(env.fake.runs) == 1


def test_gitea_outage_during_status_shows_sync_error_then_recovers(start: Start) -> None:
    env = start()
    env.configure()
    out = env.bootstrap()
    gitea_run = env.run(out.run_id).gitea_run_id
    assert gitea_run is not None
    env.fake.fail_next(2, status=500, path_contains=f"/actions/runs/{gitea_run}")
    shown = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert shown.status == "queued" and [j.name for j in shown.jobs] == JOBS  # the last known state
    assert shown.sync_error and "500" in shown.sync_error
    synced_before = env.run(out.run_id).synced_at
    env.fake.set_delay(1.5, path_contains=f"/actions/runs/{gitea_run}", count=2)
    timed_out = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert timed_out.sync_error and "timed out" in timed_out.sync_error
    assert env.run(out.run_id).synced_at == synced_before  # untouched while Gitea fails
    assert len(env.events("ci_run_sync_failed")) == 1  # once per outage
    env.fake.set_job(env.fake.job_ids(gitea_run)[0], status="in_progress")
    back = env.call("get_gitea_workflow_run", Role.VIEWER, run_id=out.run_id)
    assert back.sync_error is None and back.status == "in_progress"
    env.fake.fail_next(4, status=503, path_contains="/logs")
    with pytest.raises(GiteaUnavailable):  # a 503-class answer, never a 500
        env.call("get_gitea_job_logs", Role.VIEWER, run_id=out.run_id, job_name="build amd64")


# --- polling ----------------------------------------------------------------------------------------------


def test_polling_backs_off_per_run_and_survives_a_broken_platform(start: Start) -> None:
    env = start()
    env.configure()
    out = env.bootstrap()
    gitea_run = env.run(out.run_id).gitea_run_id
    assert gitea_run is not None
    # a second Gitea-backed platform whose Gitea is gone
    env.call("system_create_node_platform", name="broken", architectures=["amd64"],
             registry_repository="127.0.0.1:5000/ops/disk-images/broken",
             cosign_identity_regexp=r"^https://ci\.example/ops/images/.+$",
             cosign_oidc_issuer="https://ci.example")  # fmt: skip
    env.call("system_configure_disk_image_ci", node_platform="broken", ci_backend="gitea", gitea_url=env.url,
             gitea_repository=f"{OWNER}/{REPO}", gitea_token=env.fake.token)  # fmt: skip
    with env.db.session() as s:
        broken = s.scalar(select(NodePlatform).where(NodePlatform.name == "broken"))
        assert broken is not None
        broken.gitea_url = f"http://127.0.0.1:{free_port()}"
        stuck = CiRun(platform_id=broken.id, ref="main", event="workflow_dispatch", gitea_run_id=999)
        s.add(stuck)
        s.flush()
        stuck_id = stuck.id
    gitea_runs.clients.clear()

    clock = [1000.0]
    poller = gitea_polling.GiteaRunPoller(clock=lambda: clock[0])
    box = env.box()
    assert poller.poll(env.db, box) == pytest.approx(4.0)  # both synced, neither changed: 2 s doubled
    assert env.run(stuck_id).sync_error  # the broken one failed ...
    assert poller.delay_of(out.run_id) == 4.0  # ... and the good one was synced (nothing changed: backs off)
    assert poller.delay_of(stuck_id) == 4.0
    delays = []
    for _ in range(6):
        clock[0] += 60
        poller.poll(env.db, box)
        delays.append(poller.delay_of(out.run_id))
    assert delays == [8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    env.fake.set_job(env.fake.job_ids(gitea_run)[0], status="in_progress")
    clock[0] += 60
    poller.poll(env.db, box)
    assert poller.delay_of(out.run_id) == 2.0  # a change: back to 2 s
    assert env.run(out.run_id).status == "in_progress"
    clock[0] += 2
    poller.poll(env.db, box)
    assert poller.delay_of(out.run_id) == 4.0  # the same answer again (started times too): no change
    clock[0] += 1  # not due yet: nothing is asked of Gitea
    asked = len(env.fake.requests)
    poller.poll(env.db, box)
    assert len(env.fake.requests) == asked
    for job_id in env.fake.job_ids(gitea_run):
        env.fake.set_job(job_id, status="completed", conclusion="success")
    clock[0] += 4
    poller.poll(env.db, box)
    assert poller.delay_of(out.run_id) is None and env.run(out.run_id).conclusion == "success"


def test_the_polling_chain_runs_once_and_ends_when_nothing_is_left(start: Start) -> None:
    env = start()
    huey = MemoryHuey("gitea-poll-test", immediate=False)
    poller = gitea_polling.GiteaRunPoller()
    chain = gitea_polling.start_chain(huey)
    assert chain is not None and gitea_polling.start_chain(huey) is None  # one chain at a time
    assert gitea_polling.chain_round(huey, "superseded", poller, env.db, env.box()) is None
    assert gitea_polling.chain_round(huey, chain, poller, env.db, env.box()) is None  # no Gitea runs: ends
    assert gitea_polling.start_chain(huey) is not None  # and the next minute starts a new one
