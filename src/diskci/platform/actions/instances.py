"""Node instances (machines known by MAC address) and the instance-wide statistics."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator
from sqlalchemy import func, select

from diskci.errors import Conflict, InvalidRequest
from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.actions.ci_workers import WorkerHostStats, worker_host_stats
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import get_platform
from diskci.platform.db.models import (
    DiskImagePublication,
    DiskImageWebhook,
    Event,
    NodeInstance,
    NodePlatform,
    Role,
    Task,
)

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


class InvalidMacAddress(InvalidRequest, ValueError):
    """Not a MAC address (a ValueError too, so that pydantic reports it inside input validation)."""


def normalize_mac(mac: str) -> str:
    """``52-54-00-AB-CD-EF``, ``525400abcdef`` → ``52:54:00:ab:cd:ef``."""
    value = mac.strip().lower()
    if not _MAC.match(value):
        raise InvalidMacAddress(f"{mac!r} is not a MAC address")
    digits = re.sub(r"[:-]", "", value)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


class MacAddressInUse(Conflict):
    pass


class NodeInstanceOut(ActionModel):
    id: int
    hostname: str
    platform: str | None
    mac_addresses: list[str]
    provider: str
    provider_id: str | None
    modules: list[str]
    status: str
    last_report: dict[str, Any] | None
    last_seen: datetime | None

    @classmethod
    def of(cls, node: NodeInstance) -> NodeInstanceOut:
        return cls(
            id=node.id,
            hostname=node.hostname,
            platform=node.platform.name if node.platform is not None else None,
            mac_addresses=list(node.mac_addresses),
            provider=node.provider,
            provider_id=node.provider_id,
            modules=list(node.modules),
            status=node.status,
            last_report=node.last_report,
            last_seen=node.last_seen,
        )


class RegisterNodeInstanceInput(ActionModel):
    hostname: str = Field(min_length=1, max_length=255)
    platform: str
    mac_addresses: list[str] = Field(min_length=1)
    provider: str = "local"
    provider_id: str | None = None
    modules: list[str] = Field(default_factory=list)

    @field_validator("mac_addresses")
    @classmethod
    def _macs(cls, value: list[str]) -> list[str]:
        return sorted({normalize_mac(m) for m in value})


@action("system_register_node_instance", RegisterNodeInstanceInput, NodeInstanceOut, Role.OPERATOR)
def system_register_node_instance(ctx: ActionContext, data: RegisterNodeInstanceInput) -> NodeInstanceOut:
    """Register a machine of a platform by its MAC addresses, so /ipxe?mac=... knows what to boot.

    Example: {"hostname": "node-1", "platform": "debian-12-amd64", "mac_addresses": ["52:54:00:12:34:56"]}
    """
    platform = get_platform(ctx.session, data.platform)
    for node in ctx.session.scalars(select(NodeInstance)):
        taken = set(node.mac_addresses) & set(data.mac_addresses)
        if taken:
            raise MacAddressInUse(f"MAC address {sorted(taken)[0]} already belongs to node {node.hostname!r}")
    node = NodeInstance(
        hostname=data.hostname,
        platform=platform,
        mac_addresses=data.mac_addresses,
        provider=data.provider,
        provider_id=data.provider_id,
        modules=data.modules,
        created_at=ctx.now,
    )
    ctx.session.add(node)
    ctx.session.flush()
    record_event(
        ctx.session,
        "node_instance_registered",
        platform=platform,
        subject=node.hostname,
        payload={"actor": ctx.actor, "mac_addresses": node.mac_addresses},
    )
    return NodeInstanceOut.of(node)


def _known_node_status(status: str) -> str:
    if status not in node_statuses():
        raise ValueError(f"unknown node status {status!r} (known: {', '.join(node_statuses())})")
    return status


def node_statuses() -> tuple[str, ...]:
    """What a NodeInstance's status can be: registered, a boot report's status, a CI worker's status."""
    from diskci.platform.services.netboot import REPORT_STATUSES
    from diskci.platform.services.worker_lifecycle import InstanceStatus

    return ("registered", *sorted(REPORT_STATUSES), *(s.value for s in InstanceStatus))


class ListNodeInstancesInput(ActionModel):
    platform: str | None = None
    status: Annotated[str, AfterValidator(_known_node_status)] | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class ListNodeInstancesOutput(ActionModel):
    instances: list[NodeInstanceOut]


@action(
    "system_list_node_instances", ListNodeInstancesInput, ListNodeInstancesOutput, Role.VIEWER, read_only=True
)
def system_list_node_instances(ctx: ActionContext, data: ListNodeInstancesInput) -> ListNodeInstancesOutput:
    """List node instances, optionally of one platform or status.

    Example: {"platform": "debian-12-amd64", "status": "booted"}
    """
    query = select(NodeInstance).order_by(NodeInstance.hostname, NodeInstance.id)
    if data.platform:
        query = query.where(NodeInstance.platform_id == get_platform(ctx.session, data.platform).id)
    if data.status:
        query = query.where(NodeInstance.status == data.status)
    rows = ctx.session.scalars(query.limit(data.limit).offset(data.offset)).unique()
    return ListNodeInstancesOutput(instances=[NodeInstanceOut.of(n) for n in rows])


class InstanceStats(ActionModel):
    node_platforms: int
    node_instances: dict[str, int] = Field(description="Node instances by status.")
    publications: dict[str, int] = Field(description="Disk image publications by status.")
    webhooks: int
    tasks: dict[str, int] = Field(description="Tasks by status.")
    events: int
    last_event_at: datetime | None
    worker: WorkerHostStats | None = Field(
        default=None, description="With instance_id: that CI worker's disk, memory and load (its heartbeats)."
    )


class InstanceStatsInput(ActionModel):
    instance_id: int | None = Field(
        default=None, description="A CI worker's NodeInstance id: also give its host's disk, memory and load."
    )


def _counts(ctx: ActionContext, column: Any) -> dict[str, int]:
    rows = ctx.session.execute(select(column, func.count()).group_by(column)).all()
    return {str(value): int(count) for value, count in rows}


@action("system_get_instance_stats", InstanceStatsInput, InstanceStats, Role.VIEWER, read_only=True)
def system_get_instance_stats(ctx: ActionContext, data: InstanceStatsInput) -> InstanceStats:
    """Counts for this platform instance: platforms, nodes, publications, tasks and events; with
    instance_id, also that CI worker's disk, memory and load as its last heartbeat gave them.

    Example: {} or {"instance_id": 3}
    """
    s = ctx.session
    worker = worker_host_stats(s, data.instance_id) if data.instance_id is not None else None
    return InstanceStats(
        node_platforms=s.scalar(select(func.count()).select_from(NodePlatform)) or 0,
        node_instances=_counts(ctx, NodeInstance.status),
        publications=_counts(ctx, DiskImagePublication.status),
        webhooks=s.scalar(select(func.count()).select_from(DiskImageWebhook)) or 0,
        tasks=_counts(ctx, Task.status),
        events=s.scalar(select(func.count()).select_from(Event)) or 0,
        last_event_at=s.scalar(select(func.max(Event.created_at))),
        worker=worker,
    )
