"""The operator runbook end to end on the gitea CI backend, against the fake Gitea (``fake_gitea``, a test
double of Gitea's REST API on 127.0.0.1), moto's EC2 server, a real registry and the embedded signing
authority, through the real actions, HTTP routes and tasks:

1. a node platform, configured for Gitea (system_configure_disk_image_ci: ci_backend gitea);
2. a CI worker provisioned on EC2: its user-data installs and registers act_runner with the Gitea URL
   (checked with ``cloud-init schema --config-file``); the fake Gitea then "registers" the runner, as
   act_runner does once the machine boots, and the worker list shows it online;
3. a tag push: Gitea's ``push`` webhook (Gitea itself starts the workflow: the fake makes the run a
   real Gitea would), then its ``workflow_run`` webhook gives the platform its CI run;
4. status and logs through Gitea's API (get_gitea_workflow_run, get_gitea_job_logs) while the job runs
   on the worker's runner (the worker shows busy);
5. the publication arrives: no act_runner can run here, so the build the job would have made (a small
   netboot build, signed by the authority and pushed to the registry, as
   platform_publication_helpers does) is announced with the signed ``disk_image_built`` webhook the
   job's ``diskci publish`` posts, and the platform verifies and publishes it;
6. decommission with the full cascade: Gitea's DELETE of the runner, the EC2 instance terminated, the
   NodeInstance terminated.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cloud_config import assert_valid_cloud_config
from moto_ec2 import IMAGE, aws
from platform_publication_helpers import (
    IDENTITY_REGEXP,
    ISSUER,
    make_netboot_build,
    make_processor,
    repository_for,
    sign_and_push,
)
from sqlalchemy import select

from diskci.notify import sign_delivery
from diskci.platform.actions.catalog import invoke
from diskci.platform.db.models import DiskImagePublication, Event, NodeInstance, Role
from diskci.platform.db.session import Database
from diskci.platform.gitea.webhooks import sign_body
from diskci.platform.services import gitea_workers
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.settings import PlatformSettings
from diskci.platform.tasks import TaskQueue, _run_ci_worker_task
from diskci.supplychain.authority import SigningAuthority
from fake_gitea import FakeGitea, served

PLATFORM = "debian-12-amd64"
OWNER, REPO = "ops", "images"
TAG, TAG_SHA = "v2026.12.0", "c" * 40
JOBS = ["build amd64", "publish"]
HOSTNAME = "ci-gitea-runbook-1"


def _gitea_hook(client: Any, secret: str, event: str, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    headers = {"X-Gitea-Event": event, "X-Gitea-Delivery": str(uuid.uuid4()),
               "X-Gitea-Signature": sign_body(secret, raw), "Content-Type": "application/json"}  # fmt: skip
    return client.post(f"/api/v1/ci/gitea/{PLATFORM}", content=raw, headers=headers)


def test_the_runbook_on_gitea_with_ec2_workers(
    moto_endpoint: str,
    platform_db: Database,
    platform_settings: PlatformSettings,
    platform_client: Any,
    enqueued: list[str],
    registry: str,
    authority: SigningAuthority,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    settings = platform_settings.model_copy(
        update={
            "ci_base_url": f"http://127.0.0.1:8480/gitea-runbook-{uuid.uuid4().hex[:8]}",
            "ec2_endpoint_url": moto_endpoint,
            "ec2_image_id": IMAGE,
        }
    )

    def call(action: str, role: Role = Role.ADMIN, /, **data: Any) -> Any:
        return invoke(action, data, database=platform_db, settings=settings, actor="ops", role=role,
                      confirmed=True)  # fmt: skip

    def run_task(task_id: str) -> dict[str, Any]:
        return _run_ci_worker_task(TaskQueue(settings, database=platform_db), task_id, None)

    fake = FakeGitea(version="1.25.0")
    fake.add_repo(OWNER, REPO, refs={"refs/heads/main": "a" * 40, f"refs/tags/{TAG}": TAG_SHA},
                  workflows={"build.yaml": JOBS})  # fmt: skip
    with served(fake) as gitea_url:
        # 1. the node platform, its CI on Gitea, its disk image webhook
        repository = repository_for(registry, request.node.name)
        call("system_create_node_platform", name=PLATFORM, architectures=["amd64"],
             registry_repository=repository, cosign_identity_regexp=f"^{IDENTITY_REGEXP}$",
             cosign_oidc_issuer=ISSUER, trusted_root=authority.trusted_root_json().decode())  # fmt: skip
        configured = call("system_configure_disk_image_ci", node_platform=PLATFORM, ci_backend="gitea",
                          gitea_url=gitea_url, gitea_repository=f"{OWNER}/{REPO}",
                          gitea_token=fake.token)  # fmt: skip
        gitea_secret = configured.gitea_webhook_secret
        disk_image_secret = str(call("provision_disk_image_webhook", platform=PLATFORM).secret)

        # 2. a CI worker on EC2 whose user-data installs and registers act_runner with Gitea
        worker = call("system_provision_ci_worker", hostname=HOSTNAME, provider="ec2",
                      provider_region_id="region-aws-us-east-1", provider_instance_type_id="type-c5-2xlarge",
                      build_targets=["amd64"], node_platform=PLATFORM)  # fmt: skip
        assert worker.registration_url == gitea_url
        provider_id = run_task(worker.task_id)["provider_id"]
        attribute = aws(moto_endpoint).describe_instance_attribute(
            InstanceId=provider_id.split("/")[1], Attribute="userData"
        )
        user_data = base64.b64decode(attribute["UserData"]["Value"]).decode()
        assert "act_runner register --no-interactive" in user_data and gitea_url in user_data
        assert_valid_cloud_config(user_data, tmp_path)

        def listed() -> Any:
            workers = call("system_list_ci_workers", Role.VIEWER, include_terminated=True).workers
            return next(w for w in workers if w.id == worker.instance.id)

        assert listed().status == "provisioning"
        runner_id = fake.add_runner(HOSTNAME, "repo", OWNER, REPO, labels=["amd64"])  # act_runner registers
        assert (listed().status, listed().gitea_runner_id) == ("online", runner_id)

        # 3. a tag push: Gitea starts the workflow; its workflow_run webhook gives the platform the run
        push = {"ref": f"refs/tags/{TAG}", "before": "0" * 40, "after": TAG_SHA,
                "repository": {"full_name": f"{OWNER}/{REPO}"}}  # fmt: skip
        pushed = _gitea_hook(platform_client, gitea_secret, "push", push)
        assert pushed.status_code == 202, pushed.text
        gitea_run = fake.add_run(OWNER, REPO, ref=f"refs/tags/{TAG}", event="push")  # what Gitea does
        made = _gitea_hook(
            platform_client, gitea_secret, "workflow_run", fake.delivery("workflow_run", gitea_run)
        )
        assert made.status_code == 200, made.text
        run_id = made.json()["run_id"]

        # 4. status and logs through Gitea's API while the worker's runner builds
        build, publish = fake.job_ids(gitea_run)
        fake.set_job(build, status="in_progress", runner_id=runner_id, log="mmdebstrap\ncomposefs\n")
        fake.set_runner_status(runner_id, "online", busy=True)
        shown = call("get_gitea_workflow_run", Role.VIEWER, run_id=run_id)
        assert shown.status == "in_progress"
        assert [(j.name, j.status, j.runner) for j in shown.jobs] == [
            ("build amd64", "in_progress", HOSTNAME), ("publish", "queued", None)]  # fmt: skip
        logs = call("get_gitea_job_logs", Role.VIEWER, run_id=run_id, job_name="build amd64")
        assert logs.logs == ["mmdebstrap", "composefs"] and not logs.complete
        assert listed().status == "busy"

        # 5. the publication arrives: the build the job makes, signed, pushed, announced by its webhook
        version = TAG.removeprefix("v")
        build_dir = tmp_path / "build"
        make_netboot_build(build_dir, platform=PLATFORM, version=version)
        identity = f"https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/{TAG}"
        published = sign_and_push(build_dir, authority, repository, identity=identity)
        fake.set_job(build, status="completed", conclusion="success", runner_id=runner_id, log="built\n")
        fake.set_job(publish, status="in_progress", runner_id=runner_id, log="pushed\n")
        body = json.dumps({
            "node_platform": PLATFORM, "version": version, "reference": published.reference,
            "manifest_digest": published.digest, "run_id": str(run_id), "critical": False,
            "source": {"repo": f"{gitea_url}/{OWNER}/{REPO}", "ref": f"refs/tags/{TAG}", "commit": TAG_SHA},
        }).encode()  # fmt: skip
        delivery = str(uuid.uuid4())
        answer = platform_client.post(
            "/api/v1/system/webhooks/disk_image_built",
            content=body,
            headers={"Content-Type": "application/json", **sign_delivery(disk_image_secret, delivery,
                                                                         int(time.time()), body)},
        )  # fmt: skip
        assert answer.status_code == 202, answer.text
        assert enqueued == [delivery]
        outcome = make_processor(platform_db, BlobCache(tmp_path / "blobs"), tmp_path).process(delivery)
        assert outcome.status == "published", outcome
        with platform_db.read_session() as s:
            [publication] = s.scalars(select(DiskImagePublication))
            assert (publication.version, publication.manifest_digest) == (version, published.digest)
        fake.set_job(publish, status="completed", conclusion="success", runner_id=runner_id, log="done\n")
        fake.set_runner_status(runner_id, "online", busy=False)
        done = call("get_gitea_workflow_run", Role.VIEWER, run_id=run_id)
        assert (done.status, done.conclusion) == ("completed", "success")
        assert call("get_gitea_job_logs", Role.VIEWER, run_id=run_id, job_name="publish").complete

        # 6. decommission: Gitea's DELETE of the runner, the EC2 instance terminated, the instance too
        terminating = call("system_terminate_ci_worker", Role.OPERATOR, id=worker.instance.id)
        assert run_task(terminating.task_id)["status"] == "terminated"
        assert fake.calls("DELETE", f"/repos/{OWNER}/{REPO}/actions/runners/{runner_id}") == 1
        assert runner_id not in fake.runners
        reply = aws(moto_endpoint).describe_instances(InstanceIds=[provider_id.split("/")[1]])
        assert reply["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
        with platform_db.read_session() as s:
            node = s.get(NodeInstance, worker.instance.id)
            assert node is not None and node.status == "terminated"
            kinds = [
                e.type for e in s.scalars(select(Event).where(Event.subject == HOSTNAME).order_by(Event.id))
            ]
        assert kinds[-3:] == [
            "ci_worker_terminating",
            "ci_worker_runner_deregistered",
            "ci_worker_terminated",
        ]
        assert "ci_worker_job_cancelled" not in kinds  # its jobs had finished
        assert gitea_workers.DEREGISTERED_EVENT in kinds
