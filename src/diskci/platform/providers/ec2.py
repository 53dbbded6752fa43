"""The ``ec2`` compute provider: CI workers as Amazon EC2 instances, made with boto3.

Its catalog maps the platform's region and instance type ids to AWS names
(``region-aws-us-east-1`` → ``us-east-1``, ``type-c5-2xlarge`` → ``c5.2xlarge``); every type is
x86_64, and a worker builds arm64 under qemu-user as a local one does. A worker's machine boots the
image ``image_ids`` gives for its region (a Debian image carrying the worker's agent) with the
cloud-init user-data of ``cloud_init`` (the ``gitea-runner`` module), tagged with its NodeInstance id
(``diskci:node-instance-id``) and the platform it belongs to (``diskci:platform``: the platform's CI
URL, so two platforms sharing an AWS account never take each other's machines). The provider id is
``<aws region>/<instance id>``.

``create`` first looks for a live instance with those tags, then calls RunInstances with a client
token derived from the platform and the NodeInstance id, so a retried or concurrent create gets the
instance the first one made. ``destroy`` terminates and waits (the ``instance_terminated`` waiter,
bounded) for ``terminated``; an instance already gone is not an error. Every AWS error becomes
``ProviderFailed`` naming the call and AWS's error code.

Credentials come from boto3's usual chain (environment, shared files, instance or task role), never
from the platform's database or settings. EC2 clients are made once per process and region (a boto3
client is thread-safe and slow to make), from one boto3 session, as boto3's own ``boto3.client`` does.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from diskci.errors import InvalidRequest, UsageError
from diskci.platform.providers.base import (
    InstanceType,
    MachineState,
    ProviderCatalog,
    ProviderFailed,
    Region,
    WorkerMachine,
)
from diskci.platform.providers.cloud_init import WorkerImage, render_user_data
from diskci.platform.settings import PlatformSettings

__all__ = [
    "INSTANCE_TAG",
    "PLATFORM_TAG",
    "EC2Provider",
    "client_token",
    "parse_image_ids",
    "parse_provider_id",
]

INSTANCE_TAG = "diskci:node-instance-id"
PLATFORM_TAG = "diskci:platform"
USER_DATA_LIMIT = 16 * 1024  # EC2's limit on user-data, before base64
TERMINATE_TIMEOUT = 600.0  # how long destroy waits for ``terminated``
POLL_INTERVAL = 5.0
ANY_REGION = "*"  # the key of an image id given for every region
# The settings' environment variables (``PlatformSettings.ec2_*``), named in errors
ENDPOINT_URL_VARIABLE = "DISKCI_EC2_ENDPOINT_URL"
IMAGE_ID_VARIABLE = "DISKCI_EC2_IMAGE_ID"

# catalog region id → (AWS region, description); regions every AWS account has enabled
_REGIONS = {
    "region-aws-us-east-1": ("us-east-1", "US East (N. Virginia)"),
    "region-aws-us-east-2": ("us-east-2", "US East (Ohio)"),
    "region-aws-us-west-2": ("us-west-2", "US West (Oregon)"),
    "region-aws-eu-west-1": ("eu-west-1", "Europe (Ireland)"),
    "region-aws-eu-central-1": ("eu-central-1", "Europe (Frankfurt)"),
}
# catalog type id → (EC2 instance type, vCPUs, memory MiB)
_TYPES = {
    "type-c5-xlarge": ("c5.xlarge", 4, 8 * 1024),
    "type-c5-2xlarge": ("c5.2xlarge", 8, 16 * 1024),
    "type-c5-4xlarge": ("c5.4xlarge", 16, 32 * 1024),
    "type-m5-2xlarge": ("m5.2xlarge", 8, 32 * 1024),
}
# EC2 instance states → what the platform sees; a shutting-down instance exists but does not run
_STATES = {
    "pending": MachineState.PENDING,
    "running": MachineState.RUNNING,
    "stopping": MachineState.STOPPED,
    "stopped": MachineState.STOPPED,
    "shutting-down": MachineState.STOPPED,
    "terminated": MachineState.GONE,
}
_LIVE_STATES = [name for name, state in _STATES.items() if state is not MachineState.GONE]
_NOT_FOUND = "InvalidInstanceID.NotFound"
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")
_IMAGE_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")


def _catalog() -> ProviderCatalog:
    region_ids = tuple(_REGIONS)
    return ProviderCatalog(
        provider="ec2",
        regions=tuple(
            Region(id=rid, description=f"AWS {aws} ({desc})") for rid, (aws, desc) in _REGIONS.items()
        ),
        instance_types=tuple(
            InstanceType(
                id=tid,
                cpus=cpus,
                memory_mib=memory,
                description=f"EC2 {name}: {cpus} vCPUs, {memory // 1024} GiB, x86_64",
                regions=region_ids,
            )
            for tid, (name, cpus, memory) in _TYPES.items()
        ),
    )


def client_token(platform_tag: str, instance_id: int) -> str:
    """RunInstances' idempotency token for NodeInstance ``instance_id`` of the platform (≤ 64 ASCII)."""
    platform = hashlib.sha256(platform_tag.encode()).hexdigest()[:16]
    return f"diskci-{platform}-{instance_id}"


def parse_image_ids(text: str) -> dict[str, str]:
    """``ami-…`` (every region's image) or ``us-east-1=ami-…,eu-west-1=ami-…`` (one per AWS region)."""
    images: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        region, sep, image = entry.rpartition("=")
        region = region.strip() if sep else ANY_REGION
        image = image.strip()
        if region != ANY_REGION and not _AWS_REGION.match(region):
            raise UsageError(f"{IMAGE_ID_VARIABLE}: {region!r} is not an AWS region name (e.g. us-east-1)")
        if not _IMAGE_ID.match(image):
            raise UsageError(f"{IMAGE_ID_VARIABLE}: {image!r} is not an AMI id (ami-…)")
        images[region] = image
    return images


def parse_provider_id(provider_id: str) -> tuple[str, str]:
    """``us-east-1/i-0123…`` → (AWS region, instance id)."""
    region, _, instance = provider_id.partition("/")
    if not _AWS_REGION.match(region) or not _INSTANCE_ID.match(instance):
        raise InvalidRequest(
            f"provider id {provider_id!r} is not an EC2 worker's (<aws region>/i-<instance id>)"
        )
    return region, instance


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "Unknown")


def _failed(what: str, exc: Exception) -> ProviderFailed:
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message") or ""
        return ProviderFailed(f"EC2 {what}: {_error_code(exc)}: {message}".rstrip(": "))
    return ProviderFailed(f"EC2 {what}: {type(exc).__name__}: {exc}")


@contextmanager
def _calling(what: str) -> Iterator[None]:
    """Turn boto3's errors in the block into ``ProviderFailed`` naming ``what`` and AWS's error code."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:  # BotoCoreError: no credentials, endpoint unreachable
        raise _failed(what, exc) from exc


class _Clients:
    """EC2 clients by (region, endpoint), made from one boto3 session (made when first needed)."""

    def __init__(self, session: Any = None) -> None:
        self._session = session
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._lock = threading.Lock()  # a boto3 session is not thread-safe; its clients are

    def get(self, aws_region: str, endpoint_url: str | None) -> Any:
        with self._lock:
            key = (aws_region, endpoint_url)
            if key not in self._clients:
                if self._session is None:
                    self._session = boto3.session.Session()
                self._clients[key] = self._session.client(
                    "ec2",
                    region_name=aws_region,
                    endpoint_url=endpoint_url,
                    config=Config(
                        retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60
                    ),
                )
            return self._clients[key]


_PROCESS_CLIENTS = _Clients()


class EC2Provider:
    """CI workers as EC2 instances of the platform ``platform_tag`` (its CI URL), booting the image
    ``image_ids`` names for their region (``parse_image_ids``) with the user-data of each machine's
    agent (``WorkerMachine.agent``: act_runner for a Gitea-backed platform's worker). Clients
    come from the process's boto3 session, or from ``session`` when one is given."""

    name: ClassVar[str] = "ec2"
    catalog: ClassVar[ProviderCatalog] = _catalog()

    def __init__(
        self,
        *,
        platform_tag: str,
        image_ids: Mapping[str, str],
        worker_image: WorkerImage | None = None,
        endpoint_url: str | None = None,
        session: Any = None,
        terminate_timeout: float = TERMINATE_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        if not platform_tag:
            raise InvalidRequest("platform_tag: empty (the platform's CI URL tags its machines)")
        self.platform_tag = platform_tag
        self.image_ids = dict(image_ids)
        self.worker_image = worker_image or WorkerImage()
        self.endpoint_url = endpoint_url
        self.terminate_timeout = terminate_timeout
        self.poll_interval = poll_interval
        self._clients = _PROCESS_CLIENTS if session is None else _Clients(session)

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> EC2Provider:
        """Machines tagged with ``settings.ci_base_url``; the EC2 endpoint (``ec2_endpoint_url``, for a
        test server or a VPC endpoint) and the image ids (``ec2_image_id``, see ``parse_image_ids``)
        from the settings. Each worker runs the agent its machine names (its platform's CI backend)."""
        images = settings.ec2_image_id
        return cls(
            platform_tag=settings.ci_base_url,
            image_ids=parse_image_ids(images) if images else {},
            endpoint_url=settings.ec2_endpoint_url or None,
        )

    def _client(self, aws_region: str) -> Any:
        return self._clients.get(aws_region, self.endpoint_url)

    def _image(self, aws_region: str) -> str:
        image = self.image_ids.get(aws_region) or self.image_ids.get(ANY_REGION)
        if image is None:
            raise UsageError(
                f"no EC2 image for {aws_region}: set {IMAGE_ID_VARIABLE}",
                hint="e.g. DISKCI_EC2_IMAGE_ID=ami-0123456789abcdef0, or us-east-1=ami-…,eu-west-1=ami-…",
            )
        return image

    def _find(self, aws_region: str, instance_id: int) -> str | None:
        """The live instance of NodeInstance ``instance_id`` in ``aws_region`` (the oldest, if several)."""
        filters = [
            {"Name": f"tag:{INSTANCE_TAG}", "Values": [str(instance_id)]},
            {"Name": f"tag:{PLATFORM_TAG}", "Values": [self.platform_tag]},
            {"Name": "instance-state-name", "Values": _LIVE_STATES},
        ]
        found: list[dict[str, Any]] = []
        with _calling(f"DescribeInstances in {aws_region}"):
            for page in (
                self._client(aws_region).get_paginator("describe_instances").paginate(Filters=filters)
            ):
                found.extend(i for r in page["Reservations"] for i in r["Instances"])
        if not found:
            return None
        oldest = min(found, key=lambda i: (str(i.get("LaunchTime", "")), i["InstanceId"]))
        return f"{aws_region}/{oldest['InstanceId']}"

    # create / lookup / get / destroy

    def create(self, machine: WorkerMachine) -> str:
        self.catalog.instance_type(machine.region, machine.instance_type)  # each error names its field
        aws_region = _REGIONS[machine.region][0]
        existing = self._find(aws_region, machine.instance_id)
        if existing is not None:
            return existing  # made before: the retried create finds it
        user_data = render_user_data(machine, machine.agent, image=self.worker_image)
        if len(user_data.encode()) > USER_DATA_LIMIT:
            raise InvalidRequest(
                f"the worker's user-data is {len(user_data.encode())} bytes: EC2 takes 16 KiB"
            )
        tags = [
            {"Key": "Name", "Value": machine.hostname},
            {"Key": INSTANCE_TAG, "Value": str(machine.instance_id)},
            {"Key": PLATFORM_TAG, "Value": self.platform_tag},
        ]
        with _calling(f"RunInstances in {aws_region}"):
            reply = self._client(aws_region).run_instances(
                ImageId=self._image(aws_region),
                InstanceType=_TYPES[machine.instance_type][0],
                MinCount=1,
                MaxCount=1,
                ClientToken=client_token(self.platform_tag, machine.instance_id),
                UserData=user_data,
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": tags},
                    {"ResourceType": "volume", "Tags": tags},
                ],
                # IMDSv2 only, not reachable from containers a job may start
                MetadataOptions={
                    "HttpTokens": "required",
                    "HttpPutResponseHopLimit": 1,
                    "HttpEndpoint": "enabled",
                },
            )
        instance = reply["Instances"][0]
        state = instance.get("State", {}).get("Name")
        if state == "terminated":  # the client token's instance was made before and terminated since
            raise ProviderFailed(
                f"EC2 instance {instance['InstanceId']} made for NodeInstance {machine.instance_id} was "
                "terminated; provision a new CI worker"
            )
        return f"{aws_region}/{instance['InstanceId']}"

    def lookup(self, instance_id: int) -> str | None:
        for aws_region, _ in _REGIONS.values():
            found = self._find(aws_region, instance_id)
            if found is not None:
                return found
        return None

    def get(self, provider_id: str) -> MachineState:
        aws_region, instance = parse_provider_id(provider_id)
        try:
            reply = self._client(aws_region).describe_instances(InstanceIds=[instance])
        except ClientError as exc:
            if _error_code(exc) == _NOT_FOUND:  # terminated long ago (or never made)
                return MachineState.GONE
            raise _failed(f"DescribeInstances of {provider_id}", exc) from exc
        except BotoCoreError as exc:
            raise _failed(f"DescribeInstances of {provider_id}", exc) from exc
        found = [i for r in reply["Reservations"] for i in r["Instances"]]
        if not found:
            return MachineState.GONE
        name = found[0]["State"]["Name"]
        if name not in _STATES:
            raise ProviderFailed(f"EC2 instance {provider_id} is in a state diskci does not know: {name!r}")
        return _STATES[name]

    def destroy(self, provider_id: str) -> None:
        aws_region, instance = parse_provider_id(provider_id)
        client = self._client(aws_region)
        try:
            client.terminate_instances(InstanceIds=[instance])
        except ClientError as exc:
            if _error_code(exc) == _NOT_FOUND:
                return  # gone already
            raise _failed(f"TerminateInstances of {provider_id}", exc) from exc
        except BotoCoreError as exc:
            raise _failed(f"TerminateInstances of {provider_id}", exc) from exc
        attempts = max(1, math.ceil(self.terminate_timeout / self.poll_interval))
        try:
            client.get_waiter("instance_terminated").wait(
                InstanceIds=[instance],
                WaiterConfig={"Delay": self.poll_interval, "MaxAttempts": attempts},
            )
        except WaiterError as exc:  # timed out, or the instance vanished from DescribeInstances
            state = self.get(provider_id)
            if state is not MachineState.GONE:
                raise ProviderFailed(
                    f"EC2 instance {provider_id} is still {state.value} {self.terminate_timeout:g} s "
                    "after TerminateInstances"
                ) from exc
        except (ClientError, BotoCoreError) as exc:  # WaiterError is a BotoCoreError: caught above
            raise _failed(f"waiting for {provider_id} to terminate", exc) from exc
