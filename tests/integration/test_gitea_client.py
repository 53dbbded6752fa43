"""GiteaClient against the fake Gitea (tests/fake_gitea.py, a test double) served on 127.0.0.1: every call
on 1.25 (no cancel endpoint) and on a later version with one, the 1.23 registration-token GET,
pagination, dispatch without a run id, cancel detection, retries, timeouts and refusals."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from loopback import free_port

from diskci.platform.gitea.client import (
    GiteaClient,
    GiteaInvalidRequest,
    GiteaNotFound,
    GiteaOutcomeUnknown,
    GiteaRunnerNotFound,
    GiteaTokenRefused,
    GiteaUnavailable,
    GiteaUnsupported,
    RetryPolicy,
)
from diskci.platform.gitea.models import RunnerScope
from fake_gitea import FakeGitea, served

FAST = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05)
REPO = RunnerScope.repository("ops", "images")
# Gitea through 1.26 has no cancel endpoint; its 1.28 development line adds POST .../runs/{run}/cancel
WITHOUT_CANCEL, WITH_CANCEL = "1.25.0", "1.28.0"

Serve = Callable[..., tuple[FakeGitea, GiteaClient]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """serve(version=..., cancel=..., client options...) → a served fake and a client of it."""
    with contextlib.ExitStack() as stack:

        def start(
            version: str = WITHOUT_CANCEL, *, cancel: bool | None = None, serve_swagger: bool = True,
            token: str | None = None, **client: object,
        ) -> tuple[FakeGitea, GiteaClient]:  # fmt: skip
            fake = FakeGitea(version=version, cancel=version == WITH_CANCEL if cancel is None else cancel,
                             serve_swagger=serve_swagger)  # fmt: skip
            refs = {"refs/heads/main": "a" * 40, "refs/tags/v1": "b" * 40}
            workflows = {"build.yaml": ["build amd64", "build arm64"], "other.yaml": ["x"]}
            fake.add_repo("ops", "images", refs=refs, workflows=workflows)
            fake.add_org("ops")
            url = stack.enter_context(served(fake))
            options = {"retry": FAST, "timeout": 2.0, **client}
            gitea = stack.enter_context(GiteaClient(url, token or fake.token, **options))  # type: ignore[arg-type]
            return fake, gitea

        yield start


both_versions = pytest.mark.parametrize("version", [WITHOUT_CANCEL, WITH_CANCEL])


# --- version and registration tokens ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "method"), [("1.23.0", "GET"), (WITHOUT_CANCEL, "POST"), (WITH_CANCEL, "POST")]
)
def test_registration_token_per_scope_by_version(serve: Serve, version: str, method: str) -> None:
    fake, gitea = serve(version)
    assert str(gitea.version()) == version
    scopes = [REPO, RunnerScope.organization("ops"), RunnerScope.instance()]
    tokens = [gitea.registration_token(scope) for scope in scopes]
    assert len(set(tokens)) == 3 and all(len(t) == 40 for t in tokens)
    assert gitea.registration_token(REPO) == tokens[0]  # Gitea's current token, reusable
    assert fake.calls(method, "/registration-token") == 4
    instance_path = "/api/v1/admin/runners/" if version == "1.23.0" else "/api/v1/admin/actions/runners/"
    assert (method, instance_path + "registration-token") in fake.requests


def test_registration_token_of_an_unknown_repository(serve: Serve) -> None:
    _, gitea = serve()
    with pytest.raises(GiteaNotFound) as caught:
        gitea.registration_token(RunnerScope.repository("ops", "nothing"))
    assert caught.value.gitea_status == 404 and caught.value.http_status == 404


# --- runners ---------------------------------------------------------------------------------------------


@both_versions
def test_runners_list_get_delete_across_pages(serve: Serve, version: str) -> None:
    fake, gitea = serve(version, page_size=2)
    ids = [fake.add_runner(f"worker-{i}", "repo", "ops", "images", labels=["amd64"]) for i in range(5)]
    fake.add_runner("org-worker", "org", "ops")
    fake.set_runner_status(ids[1], "offline")
    runners = gitea.list_runners(REPO)
    assert [r.id for r in runners] == ids  # 3 pages of 2: Gitea sends no Link header here, total_count
    assert fake.calls("GET", "/repos/ops/images/actions/runners") == 3
    assert runners[1].status == "offline" and runners[0].label_names == ["amd64"]
    assert [r.name for r in gitea.list_runners(RunnerScope.organization("ops"))] == ["org-worker"]
    assert gitea.get_runner(REPO, ids[0]).name == "worker-0"
    gitea.delete_runner(REPO, ids[0])
    assert ids[0] not in fake.runners


def test_a_runner_gitea_no_longer_knows(serve: Serve) -> None:
    fake, gitea = serve()
    org_runner = fake.add_runner("elsewhere", "org", "ops")
    with pytest.raises(GiteaRunnerNotFound, match="Runner not found"):
        gitea.delete_runner(REPO, 999)
    with pytest.raises(GiteaRunnerNotFound):
        gitea.get_runner(REPO, org_runner)  # not a runner of this scope
    assert fake.calls("DELETE", "/runners/999") == 1  # a 404 is an answer: not retried


def test_runners_api_before_1_24_is_unsupported(serve: Serve) -> None:
    fake, gitea = serve("1.23.0")
    with pytest.raises(GiteaUnsupported, match=r"no runners API \(it came in 1.24\)"):
        gitea.list_runners(REPO)
    assert fake.calls("GET", "/actions/runners") == 0


# --- dispatch and runs -----------------------------------------------------------------------------------


@both_versions
def test_dispatch_returns_no_run_id_and_the_run_is_found(serve: Serve, version: str) -> None:
    fake, gitea = serve(version)
    earlier = fake.add_run("ops", "images", event="workflow_dispatch")  # an older dispatch, same ref
    fake.add_run("ops", "images", event="push", head_sha="a" * 40)
    ticket = gitea.dispatch(
        "ops", "images", "build.yaml", "main", inputs={"arch": "amd64"}, head_sha="a" * 40
    )
    assert ticket.after_run_id == earlier
    run = gitea.wait_for_dispatched_run(ticket, timeout=5, interval=0.05)
    assert run is not None and run.id > earlier
    assert (run.event, run.workflow_file, run.ref, run.head_sha) == (
        "workflow_dispatch", "build.yaml", "refs/heads/main", "a" * 40,
    )  # fmt: skip
    assert run.status == "queued" and run.conclusion is None and run.started_at is None
    assert gitea.find_dispatched_run(ticket, exclude={run.id}) is None  # already matched: not twice


def test_dispatch_refusals_carry_giteas_message(serve: Serve) -> None:
    _, gitea = serve()
    with pytest.raises(GiteaNotFound, match=r"workflow 'nope\.yaml' not found"):
        gitea.dispatch("ops", "images", "nope.yaml", "main")
    with pytest.raises(GiteaInvalidRequest, match="422: ref 'no-such-branch' does not exist") as caught:
        gitea.dispatch("ops", "images", "build.yaml", "no-such-branch")
    assert caught.value.http_status == 400 and caught.value.gitea_status == 422


@both_versions
def test_runs_across_pages_with_filters(serve: Serve, version: str) -> None:
    fake, gitea = serve(version, page_size=2)
    push_runs = [fake.add_run("ops", "images", head_sha=f"{i:040x}") for i in range(5)]
    tag_run = fake.add_run("ops", "images", ref="refs/tags/v1", event="workflow_dispatch")
    runs = gitea.list_runs("ops", "images")
    assert [r.id for r in runs] == [tag_run, *reversed(push_runs)]  # newest first, 3 pages via Link
    assert fake.calls("GET", "/actions/runs") == 3
    assert [r.id for r in gitea.list_runs("ops", "images", event="push", max_runs=3)] == push_runs[:1:-1]
    assert [r.id for r in gitea.list_runs("ops", "images", head_sha=f"{3:040x}")] == [push_runs[3]]
    assert [r.id for r in gitea.list_runs("ops", "images", branch="main")] == list(reversed(push_runs))
    fake.set_job(fake.job_ids(push_runs[0])[0], status="completed", conclusion="failure")
    fake.set_job(fake.job_ids(push_runs[0])[1], status="completed", conclusion="success")
    assert [r.id for r in gitea.list_runs("ops", "images", status="failure")] == [push_runs[0]]
    assert [r.id for r in gitea.list_runs("ops", "images", status="completed")] == [push_runs[0]]


@both_versions
def test_run_jobs_and_logs(serve: Serve, version: str) -> None:
    fake, gitea = serve(version)
    run_id = fake.add_run("ops", "images")
    first, second = fake.job_ids(run_id)
    runner = fake.add_runner("worker", "repo", "ops", "images")
    with pytest.raises(GiteaNotFound, match="job logs not found"):
        gitea.job_logs("ops", "images", first)  # not started: no log yet
    fake.set_job(first, status="in_progress", runner_id=runner, log="step 1\nstep 2\n")
    assert gitea.get_run("ops", "images", run_id).status == "in_progress"
    jobs = gitea.list_jobs("ops", "images", run_id)
    assert [(j.id, j.name, j.status) for j in jobs] == [
        (first, "build amd64", "in_progress"), (second, "build arm64", "queued"),
    ]  # fmt: skip
    assert jobs[0].runner_name == "worker" and jobs[0].started_at is not None and jobs[1].started_at is None
    assert gitea.job_logs("ops", "images", first) == "step 1\nstep 2\n"
    fake.set_job(second, status="completed", conclusion="success")
    fake.set_job(first, status="completed", conclusion="success")
    done = gitea.get_run("ops", "images", run_id)
    assert (done.status, done.conclusion, done.done) == ("completed", "success", True)
    assert gitea.get_job("ops", "images", second).conclusion == "success"
    with pytest.raises(GiteaNotFound, match="run not found"):
        gitea.get_run("ops", "images", 4242)


def test_runs_api_before_1_25_is_unsupported(serve: Serve) -> None:
    _, gitea = serve("1.24.0")
    with pytest.raises(GiteaUnsupported, match="no runs API"):
        gitea.list_runs("ops", "images")
    ticket = gitea.dispatch("ops", "images", "build.yaml", "main")  # 1.24 dispatches, cannot list runs
    assert ticket.after_run_id is None


# --- cancel ----------------------------------------------------------------------------------------------


def test_cancel_is_detected_where_gitea_has_it(serve: Serve) -> None:
    fake, gitea = serve(WITH_CANCEL)
    assert gitea.cancel_supported() is True
    run_id = fake.add_run("ops", "images")
    fake.set_job(fake.job_ids(run_id)[0], status="in_progress")
    assert gitea.cancel_run("ops", "images", run_id) is True
    run = gitea.get_run("ops", "images", run_id)
    assert (run.status, run.conclusion) == ("completed", "cancelled")
    assert gitea.cancel_run("ops", "images", run_id) is False  # already completed


def test_cancel_is_reported_unavailable_on_1_25(serve: Serve) -> None:
    fake, gitea = serve(WITHOUT_CANCEL)
    assert gitea.cancel_supported() is False
    run_id = fake.add_run("ops", "images")
    with pytest.raises(GiteaUnsupported, match="has no API to cancel") as caught:
        gitea.cancel_run("ops", "images", run_id)
    assert caught.value.feature == "cancel" and "deregister its runner" in caught.value.diagnostics()
    assert fake.calls("POST", "/cancel") == 0


@pytest.mark.parametrize("has_cancel", [False, True])
def test_cancel_detected_from_the_first_call_without_an_api_document(serve: Serve, has_cancel: bool) -> None:
    fake, gitea = serve(WITH_CANCEL if has_cancel else WITHOUT_CANCEL, serve_swagger=False)
    assert gitea.cancel_supported() is None  # no swagger.v1.json (ENABLE_SWAGGER=false): not known yet
    run_id = fake.add_run("ops", "images")
    if has_cancel:
        assert gitea.cancel_run("ops", "images", run_id) is True
    else:
        with pytest.raises(GiteaUnsupported):
            gitea.cancel_run("ops", "images", run_id)
    assert gitea.cancel_supported() is has_cancel
    assert fake.calls("POST", "/cancel") == 1


# --- faults ----------------------------------------------------------------------------------------------


def test_5xx_is_retried_then_answered(serve: Serve) -> None:
    fake, gitea = serve()
    run_id = fake.add_run("ops", "images")
    fake.fail_next(2, status=500, path_contains="/actions/runs/")
    assert gitea.get_run("ops", "images", run_id).id == run_id
    assert fake.calls("GET", f"/actions/runs/{run_id}") == 3


def test_status_and_deregistration_give_up_as_gitea_unavailable(serve: Serve) -> None:
    fake, gitea = serve()
    run_id = fake.add_run("ops", "images")
    runner = fake.add_runner("worker", "repo", "ops", "images")
    gitea.version()
    fake.fail_next(10, status=500)
    with pytest.raises(GiteaUnavailable, match="answered 500: fake Gitea: injected failure") as caught:
        gitea.get_run("ops", "images", run_id)
    assert caught.value.http_status == 503 and not isinstance(caught.value, GiteaOutcomeUnknown)
    with pytest.raises(GiteaUnavailable):
        gitea.delete_runner(REPO, runner)
    assert fake.calls("GET", f"/runs/{run_id}") == 3 and fake.calls("DELETE", f"/runners/{runner}") == 3


def test_dispatch_is_never_retried_blindly(serve: Serve) -> None:
    fake, gitea = serve()
    fake.fail_next(1, status=500, path_contains="/dispatches")
    with pytest.raises(GiteaOutcomeUnknown, match="may have done it") as caught:
        gitea.dispatch("ops", "images", "build.yaml", "main")
    assert fake.calls("POST", "/dispatches") == 1
    ticket = caught.value.ticket
    assert ticket is not None and gitea.find_dispatched_run(ticket) is None  # this 500 made no run


def test_dispatch_timeout_is_outcome_unknown_and_the_ticket_finds_its_run(serve: Serve) -> None:
    fake, gitea = serve(timeout=0.3)
    fake.set_delay(0.6, path_contains="/dispatches", count=1)
    with pytest.raises(GiteaOutcomeUnknown, match="timed out after it was sent") as caught:
        gitea.dispatch("ops", "images", "build.yaml", "main")
    assert fake.calls("POST", "/dispatches") == 1
    ticket = caught.value.ticket
    assert ticket is not None
    run = gitea.wait_for_dispatched_run(ticket, timeout=5, interval=0.1)  # the slow Gitea did dispatch
    assert run is not None and run.event == "workflow_dispatch"


def test_status_timeouts_are_retried_then_unavailable(serve: Serve) -> None:
    fake, gitea = serve(timeout=0.2)
    run_id = fake.add_run("ops", "images")
    fake.set_delay(0.5, path_contains=f"/runs/{run_id}")
    with pytest.raises(GiteaUnavailable, match="timed out"):
        gitea.get_run("ops", "images", run_id)
    assert fake.calls("GET", f"/runs/{run_id}") == 3


def test_deregistration_that_timed_out_but_happened(serve: Serve) -> None:
    """The first DELETE times out but Gitea deletes; the retry's 404 means the runner is gone."""
    fake, gitea = serve(timeout=0.2, retry=RetryPolicy(attempts=3, first_delay=0.6))
    runner = fake.add_runner("worker", "repo", "ops", "images")
    fake.set_delay(0.3, path_contains="/runners/", count=1)
    gitea.delete_runner(REPO, runner)
    assert runner not in fake.runners and fake.calls("DELETE", f"/runners/{runner}") == 2


def test_unreachable_gitea() -> None:
    gitea = GiteaClient(f"http://127.0.0.1:{free_port()}", "t", retry=FAST)
    with gitea, pytest.raises(GiteaUnavailable, match="cannot reach Gitea"):
        gitea.version()


def test_a_wrong_token_is_refused_once(serve: Serve) -> None:
    fake, gitea = serve(token="not-the-token")
    with pytest.raises(GiteaTokenRefused, match="401: user does not exist") as caught:
        gitea.list_runs("ops", "images")
    assert caught.value.http_status == 502 and "token" in caught.value.diagnostics()
    assert fake.calls("GET", "/actions/runs") == 1
