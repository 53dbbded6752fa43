"""CI workers of a Gitea-backed node platform, against the fake Gitea (``fake_gitea``, a test double of
Gitea's REST API on 127.0.0.1) and moto's EC2 server, through the real actions and their queued tasks
in-process: provisioning gets the registration token from Gitea and boots act_runner user-data that
cloud-init's own schema check accepts (register-if-missing with the Gitea URL; the token only in the
0600 environment file); the worker list shows it provisioning until the fake "registers" the runner,
then Gitea's status (and the last known one while Gitea is down); terminating deregisters the runner
in Gitea (its DELETE seen by the fake), cancels the job Gitea says it runs, terminates the EC2
instance and marks the NodeInstance terminated, with events. Faults: Gitea's 500s and timeouts on the
DELETE (the task retries, then finishes), a runner Gitea no longer knows, an EC2 instance already
gone, Gitea down while getting the token, and the local provider refused.

The platform row is made Gitea-backed by writing its fields here (``ci_backend``, ``gitea_url``,
``gitea_repository``, the token encrypted as ``platform_client`` reads it), not through
system_configure_disk_image_ci: this test is about the workers.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from cloud_config import assert_valid_cloud_config
from moto_ec2 import IMAGE, aws

from diskci.errors import InvalidRequest
from diskci.platform.actions.catalog import invoke, preview_action
from diskci.platform.db.models import (
    CiJob,
    CiRun,
    CiStatus,
    Event,
    NodeInstance,
    NodePlatform,
    Role,
    Task,
)
from diskci.platform.db.session import Database
from diskci.platform.gitea.client import GiteaUnavailable
from diskci.platform.gitea.platform_client import token_purpose
from diskci.platform.providers.base import ProviderFailed
from diskci.platform.providers.cloud_init import (
    ACT_RUNNER_ENV_FILE,
    ACT_RUNNER_REGISTER_SCRIPT,
    GITEA_TOKEN_VARIABLE,
    GITEA_URL_VARIABLE,
)
from diskci.platform.providers.ec2 import PLATFORM_TAG
from diskci.platform.secrets import SecretBox
from diskci.platform.services import gitea_workers
from diskci.platform.settings import PlatformSettings
from diskci.platform.tasks import TaskQueue, _run_ci_worker_task
from fake_gitea import FakeGitea, served

OWNER, REPO = "ops", "disk-images"
_PLATFORMS = itertools.count(1)


@dataclass
class Setup:
    """One test's platform: its database and settings, the fake Gitea and its URL, moto's URL."""

    db: Database
    settings: PlatformSettings
    fake: FakeGitea
    gitea_url: str
    endpoint: str
    platform_name: str

    def call(self, name: str, data: dict[str, Any]) -> Any:
        return invoke(
            name,
            data,
            database=self.db,
            settings=self.settings,
            actor="test",
            role=Role.ADMIN,
            confirmed=True,
        )

    def run_task(self, task_id: str, *, retries: int = 0) -> dict[str, Any]:
        """Run a queued CI worker task in-process; ``retries`` > 0: a failure raises (to be retried)."""
        queue = TaskQueue(self.settings, database=self.db)
        return _run_ci_worker_task(queue, task_id, SimpleNamespace(retries=retries) if retries else None)

    def worker(self, hostname: str) -> dict[str, Any]:
        return {
            "hostname": hostname,
            "provider": "ec2",
            "provider_region_id": "region-aws-us-east-1",
            "provider_instance_type_id": "type-c5-2xlarge",
            "build_targets": ["amd64"],
            "node_platform": self.platform_name,
        }

    def provisioned(self, hostname: str) -> tuple[Any, str]:
        answer = self.call("system_provision_ci_worker", self.worker(hostname))
        result = self.run_task(answer.task_id)
        assert result["provider_id"].startswith("us-east-1/i-"), result
        return answer, result["provider_id"]

    def registered(self, hostname: str) -> int:
        """The fake Gitea "registers" the worker's act_runner (what it does once booted)."""
        return self.fake.add_runner(hostname, "repo", OWNER, REPO, labels=["amd64"])

    def listed(self, instance_id: int) -> Any:
        workers = self.call("system_list_ci_workers", {"include_terminated": True}).workers
        return next(w for w in workers if w.id == instance_id)

    def node(self, instance_id: int) -> NodeInstance:
        with self.db.read_session() as s:
            node = s.get(NodeInstance, instance_id)
            assert node is not None
            s.expunge(node)
            return node

    def events(self, hostname: str) -> list[tuple[str, str | None]]:
        with self.db.read_session() as s:
            rows = s.query(Event).filter(Event.subject == hostname).order_by(Event.id)
            return [(e.type, e.reason) for e in rows]

    def state(self, provider_id: str) -> str:
        reply = aws(self.endpoint).describe_instances(InstanceIds=[provider_id.split("/")[1]])
        return str(reply["Reservations"][0]["Instances"][0]["State"]["Name"])


@pytest.fixture
def setup(
    moto_endpoint: str,
    platform_db: Database,
    platform_settings: PlatformSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Setup]:
    monkeypatch.setattr(gitea_workers, "GITEA_TIMEOUT", 1.0)
    fake = FakeGitea(version="1.25.0")
    fake.add_repo(OWNER, REPO)
    settings = platform_settings.model_copy(
        update={
            "ci_base_url": f"http://127.0.0.1:8480/gitea-workers-{next(_PLATFORMS)}",
            "ec2_endpoint_url": moto_endpoint,
            "ec2_image_id": IMAGE,
        }
    )
    with served(fake) as gitea_url:
        name = "debian-12-amd64"
        with platform_db.session() as s:
            platform = NodePlatform(
                name=name,
                architectures=["amd64"],
                registry_repository="127.0.0.1:5000/ops/disk-images/debian-12-amd64",
                cosign_identity_regexp="^https://gitea.example/.*$",
                cosign_oidc_issuer="https://gitea.example",
                ci_backend="gitea",
                gitea_url=gitea_url,
                gitea_repository=f"{OWNER}/{REPO}",
            )
            s.add(platform)
            s.flush()
            box = SecretBox(key=settings.resolve_secret_key())
            platform.gitea_token_encrypted = box.encrypt(fake.token, purpose=token_purpose(platform.id))
        yield Setup(platform_db, settings, fake, gitea_url, moto_endpoint, name)


def _user_data(endpoint: str, provider_id: str) -> str:
    attribute = aws(endpoint).describe_instance_attribute(
        InstanceId=provider_id.split("/")[1], Attribute="userData"
    )
    return base64.b64decode(attribute["UserData"]["Value"]).decode()


def _in_flight_job(setup: Setup, runner_id: int) -> tuple[int, int]:
    """A Gitea run with a job the worker's runner runs (in Gitea and as the platform's CiJob row)."""
    gitea_run = setup.fake.add_run(OWNER, REPO, ref="refs/tags/v2026.12.0")
    [gitea_job] = setup.fake.job_ids(gitea_run)
    setup.fake.set_job(gitea_job, status="in_progress", runner_id=runner_id, log="building\n")
    with setup.db.session() as s:
        platform = s.query(NodePlatform).filter_by(name=setup.platform_name).one()
        run = CiRun(
            platform_id=platform.id,
            ref="refs/tags/v2026.12.0",
            status=CiStatus.IN_PROGRESS.value,
            gitea_run_id=gitea_run,
        )
        s.add(run)
        s.flush()
        job = CiJob(
            run_id=run.id,
            job_id="build",
            name="build",
            status=CiStatus.IN_PROGRESS.value,
            gitea_job_id=gitea_job,
        )
        s.add(job)
        s.flush()
        return run.id, job.id


def test_provision_list_and_terminate_through_gitea(setup: Setup, tmp_path: Path) -> None:
    answer, provider_id = setup.provisioned("ci-gitea-1")
    # 1. the registration: Gitea's URL and Gitea's token for the platform's repository
    assert answer.registration_url == setup.gitea_url
    assert answer.runner_token == setup.fake.registration_tokens[("repo", OWNER, REPO)]
    assert setup.fake.calls("POST", f"/repos/{OWNER}/{REPO}/actions/runners/registration-token") == 1
    # 2. the machine boots act_runner's user-data, valid for cloud-init, the token only in the 0600 file
    [made] = aws(setup.endpoint).describe_instances(
        Filters=[{"Name": f"tag:{PLATFORM_TAG}", "Values": [setup.settings.ci_base_url]}]
    )["Reservations"]
    assert made["Instances"][0]["InstanceId"] == provider_id.split("/")[1]
    user_data = _user_data(setup.endpoint, provider_id)
    assert_valid_cloud_config(user_data, tmp_path)
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    env = files[str(ACT_RUNNER_ENV_FILE)]
    assert env["permissions"] == "0600"
    assert f'{GITEA_URL_VARIABLE}="{setup.gitea_url}"' in env["content"]
    assert f'{GITEA_TOKEN_VARIABLE}="{answer.runner_token}"' in env["content"]
    holding = [path for path, f in files.items() if answer.runner_token in f["content"]]
    assert holding == [str(ACT_RUNNER_ENV_FILE)]
    assert user_data.count(answer.runner_token) == 1
    register = files[str(ACT_RUNNER_REGISTER_SCRIPT)]["content"]
    assert "if [ -s /var/lib/act_runner/.runner ]; then\n  exit 0" in register  # register if missing
    assert "act_runner register --no-interactive" in register and "--name ci-gitea-1" in register
    assert f'--instance "${GITEA_URL_VARIABLE}"' in register

    # 3. the list: provisioning until Gitea knows the runner, then Gitea's status
    listed = setup.listed(answer.instance.id)
    assert (listed.status, listed.gitea_runner_id) == ("provisioning", None)
    assert listed.status_reason == "its act_runner has not registered with Gitea yet"
    runner_id = setup.registered("ci-gitea-1")
    listed = setup.listed(answer.instance.id)
    assert (listed.status, listed.gitea_runner_id, listed.labels) == ("online", runner_id, ["amd64"])
    assert listed.last_seen is not None and listed.status_reason is None
    assert setup.node(answer.instance.id).gitea_runner_id == runner_id  # found by name, remembered
    setup.fake.set_runner_status(runner_id, "online", busy=True)
    assert setup.listed(answer.instance.id).status == "busy"
    before = setup.fake.calls("GET", f"/repos/{OWNER}/{REPO}/actions/runners")
    setup.call("system_list_ci_workers", {})
    assert setup.fake.calls("GET", f"/repos/{OWNER}/{REPO}/actions/runners") == before + 1  # one call
    setup.fake.fail_next(4, path_contains="/actions/runners")  # Gitea down: the last known status
    down = setup.listed(answer.instance.id)
    assert down.status == "busy" and down.gitea_runner_id == runner_id
    assert down.status_reason is not None and down.status_reason.startswith("Gitea unavailable (")
    setup.fake.set_runner_status(runner_id, "offline")
    assert setup.listed(answer.instance.id).status == "offline"
    setup.fake.set_runner_status(runner_id, "online", busy=True)

    # 4. the preview names the Gitea runner; terminating cascades through Gitea and EC2
    run_id, job_id = _in_flight_job(setup, runner_id)
    preview = preview_action(
        "system_terminate_ci_worker",
        {"id": answer.instance.id},
        database=setup.db,
        settings=setup.settings,
        actor="test",
        role=Role.OPERATOR,
    )
    assert preview["gitea_runner_deregistered"] == {
        "gitea_url": setup.gitea_url,
        "repository": f"{OWNER}/{REPO}",
        "runner_id": runner_id,
        "runner_name": "ci-gitea-1",
        "jobs": "its jobs in progress, as Gitea lists them, are cancelled",
    }
    terminating = setup.call("system_terminate_ci_worker", {"id": answer.instance.id})
    assert terminating.status == "terminating"
    result = setup.run_task(terminating.task_id)
    assert result == {"instance_id": answer.instance.id, "status": "terminated", "provider_id": provider_id}
    assert setup.fake.calls("DELETE", f"/actions/runners/{runner_id}") == 1
    assert runner_id not in setup.fake.runners
    assert setup.state(provider_id) == "terminated"
    node = setup.node(answer.instance.id)
    assert (node.status, node.status_reason) == ("terminated", None) and node.terminated_at is not None
    with setup.db.read_session() as s:
        job = s.get(CiJob, job_id)
        assert job is not None
        assert (job.status, job.conclusion, job.failure_reason) == (
            "completed",
            "cancelled",
            "worker_terminated",
        )
        cancelled = s.query(Event).filter(Event.type == "ci_worker_job_cancelled").one()
        assert cancelled.payload["run_id"] == run_id and cancelled.payload["gitea_runner_id"] == runner_id
        terminated = s.query(Event).filter(Event.type == "ci_worker_terminated").one()
        assert terminated.payload["gitea_runner_id"] == runner_id
    assert setup.events("ci-gitea-1") == [
        ("ci_worker_provisioning", None),
        ("ci_worker_provisioned", None),
        ("ci_worker_terminating", None),
        ("ci_worker_runner_deregistered", None),
        ("ci_worker_job_cancelled", "worker_terminated"),
        ("ci_worker_terminated", None),
    ]
    assert setup.listed(answer.instance.id).status == "terminated"
    # terminating again answers its state; the task run again does nothing more in Gitea
    again = setup.call("system_terminate_ci_worker", {"id": answer.instance.id})
    assert (again.status, again.task_id) == ("terminated", terminating.task_id)
    assert setup.fake.calls("DELETE", "/actions/runners/") == 1


def test_gitea_500_on_delete_is_retried_then_done(setup: Setup) -> None:
    answer, provider_id = setup.provisioned("ci-gitea-2")
    runner_id = setup.registered("ci-gitea-2")
    assert setup.listed(answer.instance.id).gitea_runner_id == runner_id
    setup.fake.fail_next(
        4, status=500, path_contains=f"/actions/runners/{runner_id}"
    )  # every try of one call
    terminating = setup.call("system_terminate_ci_worker", {"id": answer.instance.id})
    with pytest.raises(
        ProviderFailed, match=r"^Gitea: deregistering the runner of CI worker ci-gitea-2: DELETE"
    ):
        setup.run_task(terminating.task_id, retries=3)
    node = setup.node(answer.instance.id)
    assert node.status == "terminating"
    assert node.status_reason is not None
    assert node.status_reason.startswith("termination attempt 1 failed: Gitea: deregistering the runner")
    assert node.status_reason.endswith("; it will be retried")
    assert setup.state(provider_id) == "running"  # nothing after the failed step ran
    assert setup.events("ci-gitea-2")[-1] == ("ci_worker_termination_failed", "gitea_error")
    assert setup.fake.calls("DELETE", f"/actions/runners/{runner_id}") == 4  # the client's own retries
    # the task's retry finishes it
    assert setup.run_task(terminating.task_id)["status"] == "terminated"
    assert setup.fake.calls("DELETE", f"/actions/runners/{runner_id}") == 5
    assert runner_id not in setup.fake.runners and setup.state(provider_id) == "terminated"
    assert setup.events("ci-gitea-2")[-2:] == [
        ("ci_worker_runner_deregistered", None),
        ("ci_worker_terminated", None),
    ]


def test_gitea_timing_out_on_delete_is_retried_and_ends_deregistered(setup: Setup) -> None:
    answer, provider_id = setup.provisioned("ci-gitea-3")
    runner_id = setup.registered("ci-gitea-3")
    setup.listed(answer.instance.id)
    # every try of the first attempt times out (the client waits 1 s); the slow Gitea still deletes it
    setup.fake.set_delay(1.5, path_contains=f"/actions/runners/{runner_id}", count=4)
    terminating = setup.call("system_terminate_ci_worker", {"id": answer.instance.id})
    with pytest.raises(ProviderFailed, match=r"timed out"):
        setup.run_task(terminating.task_id, retries=3)
    assert setup.node(answer.instance.id).status == "terminating"
    assert setup.state(provider_id) == "running"
    assert setup.run_task(terminating.task_id)["status"] == "terminated"
    assert runner_id not in setup.fake.runners and setup.state(provider_id) == "terminated"
    with setup.db.read_session() as s:
        done = s.query(Event).filter(Event.type == "ci_worker_runner_deregistered").one()
        # the slow Gitea had deleted it: the retry finds it gone
        assert (done.reason, done.payload["gitea_runner_id"]) == ("runner_already_gone", runner_id)


def test_a_runner_gitea_no_longer_knows(setup: Setup) -> None:
    answer, provider_id = setup.provisioned("ci-gitea-4")
    runner_id = setup.registered("ci-gitea-4")
    setup.listed(answer.instance.id)
    del setup.fake.runners[runner_id]  # removed in Gitea's UI, behind the platform's back
    listed = setup.listed(answer.instance.id)
    assert listed.status == "offline"
    assert listed.status_reason == f"Gitea no longer knows its runner {runner_id} (removed outside diskci?)"
    terminating = setup.call("system_terminate_ci_worker", {"id": answer.instance.id})
    setup.run_task(terminating.task_id)
    node = setup.node(answer.instance.id)
    assert (node.status, node.status_reason) == ("terminated", None)
    assert setup.state(provider_id) == "terminated"
    assert setup.events("ci-gitea-4")[-2:] == [
        ("ci_worker_runner_deregistered", "runner_already_gone"),
        ("ci_worker_terminated", "runner_already_gone"),
    ]
    assert "ci_worker_termination_failed" not in [kind for kind, _ in setup.events("ci-gitea-4")]


def test_an_ec2_instance_already_gone(setup: Setup) -> None:
    answer, provider_id = setup.provisioned("ci-gitea-5")
    runner_id = setup.registered("ci-gitea-5")  # not listed yet: terminate finds it by name
    aws(setup.endpoint).terminate_instances(InstanceIds=[provider_id.split("/")[1]])
    terminating = setup.call("system_terminate_ci_worker", {"id": answer.instance.id})
    setup.run_task(terminating.task_id)
    assert setup.fake.calls("DELETE", f"/actions/runners/{runner_id}") == 1
    assert setup.node(answer.instance.id).status == "terminated"
    assert setup.events("ci-gitea-5")[-2:] == [
        ("ci_worker_runner_deregistered", None),
        ("ci_worker_terminated", "machine_already_gone"),
    ]


def test_a_runner_that_registers_during_termination_is_deregistered_too(setup: Setup) -> None:
    answer, provider_id = setup.provisioned("ci-gitea-6")
    terminating = setup.call("system_terminate_ci_worker", {"id": answer.instance.id})
    # the worker's act_runner registers while the termination is under way, after Gitea was first asked
    original = gitea_workers.cancel_jobs

    def registering(*args: Any, **kwargs: Any) -> Any:
        setup.registered("ci-gitea-6")
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gitea_workers, "cancel_jobs", registering)
        setup.run_task(terminating.task_id)
    assert [r for r in setup.fake.runners.values() if r.name == "ci-gitea-6"] == []
    assert setup.state(provider_id) == "terminated"
    with setup.db.read_session() as s:
        terminated = s.query(Event).filter(Event.type == "ci_worker_terminated").one()
        assert terminated.payload["runner_reason"] is None and terminated.payload["gitea_runner_id"]
    assert ("ci_worker_runner_deregistered", "runner_not_registered") in setup.events("ci-gitea-6")


def test_gitea_down_at_provisioning_makes_nothing_and_local_is_refused(setup: Setup) -> None:
    setup.fake.fail_next(4, path_contains="/registration-token")
    with pytest.raises(GiteaUnavailable) as caught:
        setup.call("system_provision_ci_worker", setup.worker("ci-gitea-7"))
    message = caught.value.message
    assert message.startswith(
        f"node platform {setup.platform_name!r}: cannot get a runner registration token"
    )
    assert setup.gitea_url in message and message.endswith("no CI worker was made")
    local = {**setup.worker("ci-gitea-7"), "provider": "local", "provider_region_id": "local",
             "provider_instance_type_id": "local.small"}  # fmt: skip
    with pytest.raises(InvalidRequest, match=r"provider 'local' cannot run act_runner.*'debian-12-amd64'"):
        setup.call("system_provision_ci_worker", local)
    with setup.db.read_session() as s:
        assert s.query(NodeInstance).count() == 0 and s.query(Task).count() == 0
        assert s.query(Event).count() == 0
