"""The ``ec2`` compute provider with boto3, unmodified, against moto's server (a real HTTP endpoint on
127.0.0.1; each test is a platform of its own, its machines tagged with its own URL): a create
retried makes one instance (found by its tags; the client token sent), tagged with its NodeInstance,
booting the cloud-init user-data; ``get`` maps EC2's states; ``destroy`` waits for ``terminated`` and
is idempotent; AWS's errors arrive as ``ProviderFailed`` with AWS's code; the catalog's errors name
their field. Then the real provision and terminate actions and their queued tasks with provider
``ec2`` in-process, also for an instance terminated behind the platform's back; and cloud-init's own
schema check of the user-data.
"""

from __future__ import annotations

import base64
import itertools
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from cloud_config import assert_valid_cloud_config, cloud_init_schema
from moto_ec2 import IMAGE, aws

from diskci.errors import UsageError
from diskci.platform.actions.catalog import invoke
from diskci.platform.db.models import Event, NodeInstance, Role
from diskci.platform.db.session import Database
from diskci.platform.providers import catalog, provider
from diskci.platform.providers.base import (
    MachineState,
    ProviderFailed,
    UnknownInstanceType,
    UnknownRegion,
    WorkerMachine,
)
from diskci.platform.providers.cloud_init import RunnerAgent, render_user_data
from diskci.platform.providers.ec2 import (
    INSTANCE_TAG,
    PLATFORM_TAG,
    EC2Provider,
    client_token,
    parse_image_ids,
)
from diskci.platform.settings import PlatformSettings
from diskci.platform.tasks import TaskQueue, _run_ci_worker_task

_PLATFORMS = itertools.count(1)
WORKER = {
    "hostname": "ci-ec2-1",
    "provider": "ec2",
    "provider_region_id": "region-aws-us-east-1",
    "provider_instance_type_id": "type-c5-2xlarge",
    "build_targets": ["amd64", "arm64"],
}


@pytest.fixture
def platform() -> str:
    """This test's platform URL: the tag its machines carry (moto's state is shared by the module's
    tests and not reset between them, since moto rebuilds each region's backend after a reset)."""
    return f"http://127.0.0.1:8480/test-{next(_PLATFORMS)}"


@pytest.fixture
def ec2(moto_endpoint: str, platform: str) -> EC2Provider:
    return EC2Provider(
        platform_tag=platform,
        image_ids={"*": IMAGE},
        endpoint_url=moto_endpoint,
        terminate_timeout=10,
        poll_interval=0.2,
    )


def machine(instance_id: int = 7, **overrides: Any) -> WorkerMachine:
    values: dict[str, Any] = {
        "instance_id": instance_id,
        "hostname": f"ci-{instance_id}",
        "region": "region-aws-us-east-1",
        "instance_type": "type-c5-2xlarge",
        "labels": ("amd64", "arm64"),
        "registration_url": "http://127.0.0.1:8480",
        "registration_token": "one-time-registration-token",
    }
    values.update(overrides)
    return WorkerMachine(**values)


def instances(moto_endpoint: str, platform: str, region: str = "us-east-1") -> list[dict[str, Any]]:
    """Every instance of ``platform`` in ``region``, terminated ones too."""
    filters = [{"Name": f"tag:{PLATFORM_TAG}", "Values": [platform]}]
    reply = aws(moto_endpoint, region).describe_instances(Filters=filters)
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def test_create_twice_makes_one_tagged_instance_booting_the_user_data(
    ec2: EC2Provider, moto_endpoint: str, platform: str
) -> None:
    worker = machine()
    first = ec2.create(worker)
    assert ec2.create(worker) == first  # the retry finds it by its tags
    region, instance_id = first.split("/")
    assert region == "us-east-1"
    [made] = instances(moto_endpoint, platform)
    assert made["InstanceId"] == instance_id and made["InstanceType"] == "c5.2xlarge"
    assert made["ImageId"] == IMAGE
    assert made["ClientToken"] == client_token(platform, 7)
    tags = {t["Key"]: t["Value"] for t in made["Tags"]}
    assert tags == {"Name": "ci-7", INSTANCE_TAG: "7", PLATFORM_TAG: platform}
    assert made["MetadataOptions"]["HttpTokens"] == "required"
    attribute = aws(moto_endpoint).describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    user_data = base64.b64decode(attribute["UserData"]["Value"]).decode()
    assert user_data == render_user_data(worker, RunnerAgent.DISKCI)
    assert yaml.safe_load(user_data)["hostname"] == "ci-7"
    assert ec2.get(first) is MachineState.RUNNING
    assert ec2.lookup(7) == first and ec2.lookup(8) is None
    # another platform sharing the account does not take this machine for its own NodeInstance 7
    other = EC2Provider(
        platform_tag="https://other.example", image_ids={"*": IMAGE}, endpoint_url=moto_endpoint
    )
    assert other.lookup(7) is None
    assert client_token("https://other.example", 7) != client_token(platform, 7)


def test_destroy_waits_for_terminated_and_is_idempotent(
    ec2: EC2Provider, moto_endpoint: str, platform: str
) -> None:
    made = ec2.create(machine())
    ec2.destroy(made)
    assert [i["State"]["Name"] for i in instances(moto_endpoint, platform)] == ["terminated"]
    assert ec2.get(made) is MachineState.GONE
    ec2.destroy(made)  # again: fine
    assert ec2.lookup(7) is None
    never = "us-east-1/i-0123456789abcdef0"  # not known to EC2 (as one terminated long ago)
    assert ec2.get(never) is MachineState.GONE
    ec2.destroy(never)


def test_stopped_and_stopping_instances_map_to_stopped(ec2: EC2Provider, moto_endpoint: str) -> None:
    made = ec2.create(machine(region="region-aws-eu-west-1"))
    assert made.startswith("eu-west-1/")
    aws(moto_endpoint, "eu-west-1").stop_instances(InstanceIds=[made.split("/")[1]])
    assert ec2.get(made) is MachineState.STOPPED
    assert ec2.lookup(7) == made  # a stopped machine is still the worker's (terminate destroys it)
    ec2.destroy(made)
    assert ec2.get(made) is MachineState.GONE


def test_aws_errors_are_provider_failures_with_the_aws_code(ec2: EC2Provider, moto_endpoint: str) -> None:
    made = ec2.create(machine())
    instance_id = made.split("/")[1]
    aws(moto_endpoint).modify_instance_attribute(
        InstanceId=instance_id, DisableApiTermination={"Value": True}
    )
    with pytest.raises(ProviderFailed, match=rf"EC2 TerminateInstances of {made}: OperationNotPermitted"):
        ec2.destroy(made)
    assert ec2.get(made) is MachineState.RUNNING  # nothing half done


def test_no_credentials_is_a_provider_failure(
    moto_endpoint: str, platform: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    # a session of its own: the process's clients were made with the dummy credentials already
    bare = EC2Provider(
        platform_tag=platform,
        image_ids={"*": IMAGE},
        endpoint_url=moto_endpoint,
        session=boto3.session.Session(),
    )
    with pytest.raises(ProviderFailed, match=r"EC2 DescribeInstances in us-east-1: NoCredentialsError"):
        bare.create(machine())


def test_unknown_region_or_type_and_missing_image_name_what_is_wrong(
    ec2: EC2Provider, moto_endpoint: str, platform: str
) -> None:
    with pytest.raises(UnknownRegion, match=r"^provider_region_id 'us-east-1': provider 'ec2' has no such"):
        ec2.create(machine(region="us-east-1"))
    with pytest.raises(UnknownInstanceType, match=r"^provider_instance_type_id 'c5.2xlarge': provider 'ec2'"):
        ec2.create(machine(instance_type="c5.2xlarge"))
    with pytest.raises(UnknownInstanceType, match=r"choices: type-c5-xlarge, type-c5-2xlarge"):
        catalog("ec2").instance_type("region-aws-eu-central-1", "type-t3-micro")
    imageless = EC2Provider(platform_tag=platform, image_ids={"eu-west-1": IMAGE}, endpoint_url=moto_endpoint)
    with pytest.raises(UsageError, match=r"no EC2 image for us-east-1: set DISKCI_EC2_IMAGE_ID"):
        imageless.create(machine())
    assert instances(moto_endpoint, platform) == []  # nothing made
    assert parse_image_ids("us-east-1=ami-0123456789abcdef0, ami-0fedcba987654321f") == {
        "us-east-1": IMAGE,
        "*": "ami-0fedcba987654321f",
    }
    with pytest.raises(UsageError, match=r"'ami-xyz' is not an AMI id"):
        parse_image_ids("us-east-1=ami-xyz")


# the real actions and their queued tasks, with provider "ec2" (from the platform's settings)


def _call(db: Database, settings: PlatformSettings, name: str, data: dict[str, Any]) -> Any:
    return invoke(name, data, database=db, settings=settings, actor="test", role=Role.ADMIN, confirmed=True)


@pytest.fixture
def ec2_settings(
    moto_endpoint: str, platform: str, platform_settings: PlatformSettings, monkeypatch: pytest.MonkeyPatch
) -> PlatformSettings:
    """The test platform's settings, its CI URL this test's own, with the EC2 endpoint and image."""
    monkeypatch.setattr(TaskQueue, "enqueue_ci_worker_task", lambda self, task_id: task_id)
    return platform_settings.model_copy(
        update={"ci_base_url": platform, "ec2_endpoint_url": moto_endpoint, "ec2_image_id": IMAGE}
    )


def _node(db: Database, instance_id: int) -> tuple[str, str | None, str | None]:
    with db.read_session() as s:
        node = s.get(NodeInstance, instance_id)
        assert node is not None
        return node.status, node.provider_id, node.status_reason


def _provisioned(db: Database, settings: PlatformSettings) -> tuple[Any, str]:
    queue = TaskQueue(settings, database=db)
    answer = _call(db, settings, "system_provision_ci_worker", WORKER)
    assert _run_ci_worker_task(queue, answer.task_id, None)["provider_id"].startswith("us-east-1/i-")
    status, provider_id, _ = _node(db, answer.instance.id)
    assert status == "running" and provider_id is not None
    return answer, provider_id


def test_provision_and_terminate_actions_on_ec2(
    platform_db: Database, ec2_settings: PlatformSettings, moto_endpoint: str, platform: str
) -> None:
    answer, provider_id = _provisioned(platform_db, ec2_settings)
    [made] = instances(moto_endpoint, platform)
    tags = {t["Key"]: t["Value"] for t in made["Tags"]}
    assert tags[INSTANCE_TAG] == str(answer.instance.id) and tags[PLATFORM_TAG] == ec2_settings.ci_base_url
    attribute = aws(moto_endpoint).describe_instance_attribute(
        InstanceId=made["InstanceId"], Attribute="userData"
    )
    user_data = base64.b64decode(attribute["UserData"]["Value"]).decode()
    assert answer.runner_token in user_data  # the one-time token reaches the machine (its 0600 file)

    queue = TaskQueue(ec2_settings, database=platform_db)
    terminating = _call(platform_db, ec2_settings, "system_terminate_ci_worker", {"id": answer.instance.id})
    result = _run_ci_worker_task(queue, terminating.task_id, None)
    assert result == {"instance_id": answer.instance.id, "status": "terminated", "provider_id": provider_id}
    assert _node(platform_db, answer.instance.id)[0] == "terminated"
    with platform_db.read_session() as s:
        last = s.query(Event).order_by(Event.id.desc()).first()
        assert last is not None and (last.type, last.reason) == ("ci_worker_terminated", None)
    assert [i["State"]["Name"] for i in instances(moto_endpoint, platform)] == ["terminated"]
    assert provider("ec2", ec2_settings).lookup(answer.instance.id) is None


def test_an_instance_already_gone_terminates_cleanly(
    platform_db: Database, ec2_settings: PlatformSettings, moto_endpoint: str, platform: str
) -> None:
    answer, provider_id = _provisioned(platform_db, ec2_settings)
    aws(moto_endpoint).terminate_instances(
        InstanceIds=[provider_id.split("/")[1]]
    )  # behind the platform's back
    queue = TaskQueue(ec2_settings, database=platform_db)
    terminating = _call(platform_db, ec2_settings, "system_terminate_ci_worker", {"id": answer.instance.id})
    _run_ci_worker_task(queue, terminating.task_id, None)
    status, _, reason = _node(platform_db, answer.instance.id)
    assert (status, reason) == ("terminated", None)
    with platform_db.read_session() as s:
        events = [(e.type, e.reason) for e in s.query(Event).order_by(Event.id)]
    assert events[-1] == ("ci_worker_terminated", "machine_already_gone")
    assert "ci_worker_termination_failed" not in [kind for kind, _ in events]


# cloud-init's own schema validation of the user-data


@pytest.mark.parametrize("agent", list(RunnerAgent))
def test_cloud_init_validates_the_user_data(agent: RunnerAgent, tmp_path: Path) -> None:
    user_data = render_user_data(machine(hostname="ci-7.build.example"), agent)
    assert_valid_cloud_config(user_data, tmp_path)
    # the check is real: the same file with a write_files entry of the wrong shape is refused
    broken = yaml.safe_load(user_data)
    broken["write_files"][0]["permissions"] = ["0600"]
    refused = cloud_init_schema("#cloud-config\n" + yaml.safe_dump(broken), tmp_path)
    assert refused.returncode != 0 and "write_files.0.permissions" in refused.stdout + refused.stderr
