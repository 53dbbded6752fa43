"""What a compute provider is: the interface the platform provisions CI workers through, the machine
it is asked for, and the catalog of regions and instance types its inputs are checked against.

A provider makes, inspects and destroys machines; every call is idempotent and keyed by the
NodeInstance id, so a retried ``create`` finds the machine it made rather than making a second one,
and ``destroy`` of a machine that is gone is not an error. Slow provider calls run in queued tasks
(``diskci.platform.services.worker_lifecycle``), never inside an action's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from diskci.errors import InvalidRequest, PlatformError
from diskci.platform.settings import PlatformSettings

__all__ = [
    "ComputeProvider",
    "InstanceType",
    "MachineState",
    "ProviderCatalog",
    "ProviderFailed",
    "Region",
    "RunnerAgent",
    "UnknownInstanceType",
    "UnknownRegion",
    "WorkerMachine",
]


class MachineState(StrEnum):
    """What a provider says of a machine: being made, running, stopped (exists, not running), gone."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPED = "stopped"
    GONE = "gone"


class RunnerAgent(StrEnum):
    """The program a CI worker runs for its CI backend (``cloud_init`` renders its user-data)."""

    DISKCI = "diskci"  # ``diskci runner``: the embedded backend's runner protocol server is the platform
    ACT_RUNNER = "act_runner"  # Gitea's act_runner: the gitea backend


class UnknownRegion(InvalidRequest):
    """A region the provider's catalog does not have."""


class UnknownInstanceType(InvalidRequest):
    """An instance type the provider's catalog does not have (in that region)."""


class ProviderFailed(PlatformError):
    """The provider could not do what it was asked (the message says what; a retry may succeed)."""

    http_status = 502


class Region(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    description: str


class InstanceType(BaseModel):
    """A machine size. ``cpus`` and ``memory_mib`` are what a worker of this type may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    cpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    description: str
    regions: tuple[str, ...] = Field(description="The regions that offer it.")


class ProviderCatalog(BaseModel):
    """The regions and instance types of one provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    regions: tuple[Region, ...]
    instance_types: tuple[InstanceType, ...]

    def region(self, region_id: str) -> Region:
        for region in self.regions:
            if region.id == region_id:
                return region
        choices = ", ".join(r.id for r in self.regions)
        raise UnknownRegion(
            f"provider_region_id {region_id!r}: provider {self.provider!r} has no such region "
            f"(choices: {choices})"
        )

    def instance_type(self, region_id: str, type_id: str) -> InstanceType:
        """The instance type ``type_id`` in ``region_id`` (both checked, each error naming its field)."""
        self.region(region_id)
        offered = [t for t in self.instance_types if region_id in t.regions]
        for instance_type in offered:
            if instance_type.id == type_id:
                return instance_type
        choices = ", ".join(t.id for t in offered) or "none"
        raise UnknownInstanceType(
            f"provider_instance_type_id {type_id!r}: provider {self.provider!r} has no such instance type "
            f"in region {region_id!r} (choices: {choices})"
        )


@dataclass(frozen=True)
class WorkerMachine:
    """The machine a provider is asked to make for the CI worker NodeInstance ``instance_id``: where,
    how big, and what its runner registers with (the one-time token is a secret: never logged):
    ``agent`` follows the CI backend of its platform (act_runner registering with Gitea at
    ``registration_url`` for a Gitea-backed one; diskci's runner registering with this platform else)."""

    instance_id: int
    hostname: str
    region: str
    instance_type: str
    labels: tuple[str, ...]
    registration_url: str
    registration_token: str
    agent: RunnerAgent = RunnerAgent.DISKCI

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return (
            f"WorkerMachine(instance_id={self.instance_id}, hostname={self.hostname!r}, "
            f"region={self.region!r}, instance_type={self.instance_type!r}, labels={self.labels!r}, "
            f"agent={self.agent.value!r})"
        )


class ComputeProvider(Protocol):
    """A place CI workers run. Every method is idempotent and keyed by the NodeInstance id."""

    name: ClassVar[str]
    catalog: ClassVar[ProviderCatalog]

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> ComputeProvider:
        """The provider configured from the platform's settings."""
        ...

    def create(self, machine: WorkerMachine) -> str:
        """Make (or find, when it was made before) the machine of ``machine.instance_id``; its provider id."""
        ...

    def lookup(self, instance_id: int) -> str | None:
        """The provider id of the machine made for ``instance_id``, if there is one (not gone)."""
        ...

    def get(self, provider_id: str) -> MachineState:
        """The machine's state now."""
        ...

    def destroy(self, provider_id: str) -> None:
        """Destroy the machine and everything it ran; a machine already gone is not an error."""
        ...
