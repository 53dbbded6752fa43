"""What Gitea's Actions REST API and webhooks answer, as typed values (pydantic).

Shapes follow Gitea's ``modules/structs`` (1.24–1.25): ``ActionRunner``, ``ActionWorkflowRun``,
``ActionWorkflowJob`` and their steps. Unknown fields are ignored (Gitea adds fields between releases);
the fields diskci reads are typed. Gitea writes an unset time as the Unix epoch
(``1970-01-01T00:00:00Z``) and an unset conclusion as ``""``: both become ``None`` here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "DispatchTicket",
    "GiteaVersion",
    "JobStep",
    "Runner",
    "RunnerLabel",
    "RunnerScope",
    "WorkflowJob",
    "WorkflowRun",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# "1.25.0", "v1.24.3", "1.26.0+dev-12-gabcdef", "1.25.0-rc1"; Forgejo: "11.0.1+gitea-1.22.0"
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")
_FORGEJO_COMPAT = re.compile(r"\+gitea-(v?\d+\.\d+(?:\.\d+)?)")


class _GiteaModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _unset_time(value: Any) -> Any:
    """Gitea's unset timestamps (the epoch, or empty) as None."""
    if value in (None, "", 0):
        return None
    if isinstance(value, str) and value.startswith(("1970-01-01T00:00:00", "0001-01-01T00:00:00")):
        return None
    if isinstance(value, datetime) and value.astimezone(UTC) <= _EPOCH:
        return None
    return value


class GiteaVersion(_GiteaModel):
    """A Gitea server's version as ``GET /api/v1/version`` gives it; Forgejo's ``+gitea-X.Y.Z``
    compatibility suffix is what counts for the API's shape."""

    raw: str
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, raw: str) -> GiteaVersion:
        text = raw.strip()
        compat = _FORGEJO_COMPAT.search(text)
        match = _VERSION.match(compat.group(1) if compat else text)
        if match is None:
            raise ValueError(f"{raw!r} is not a Gitea version (expected e.g. 1.25.0)")
        major, minor, patch = match.groups()
        return cls(raw=text, major=int(major), minor=int(minor), patch=int(patch or 0))

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)

    def __str__(self) -> str:
        return self.raw


class RunnerLabel(_GiteaModel):
    id: int = 0
    name: str
    type: str = "custom"


class Runner(_GiteaModel):
    """An Actions runner as Gitea lists it (``status`` is ``online`` or ``offline``; ``busy`` while it
    runs a job)."""

    id: int
    name: str
    status: str
    busy: bool = False
    ephemeral: bool = False
    disabled: bool = False
    labels: list[RunnerLabel] = Field(default_factory=list)

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]


class JobStep(_GiteaModel):
    name: str
    number: int
    status: str
    conclusion: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None

    _times = field_validator("started_at", "completed_at", mode="before")(_unset_time)

    @field_validator("conclusion", mode="before")
    @classmethod
    def _no_conclusion(cls, value: Any) -> Any:
        return value or None


class WorkflowRun(_GiteaModel):
    """A workflow run. ``status``: ``queued`` | ``waiting`` | ``in_progress`` | ``completed``;
    ``conclusion`` (once completed): ``success`` | ``failure`` | ``cancelled`` | ``skipped``.
    ``path`` is ``<workflow file>@<ref>``."""

    id: int
    run_number: int = 0
    run_attempt: int = 0
    display_title: str = ""
    path: str = ""
    event: str = ""
    head_sha: str = ""
    head_branch: str = ""
    status: str
    conclusion: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    url: str = ""
    html_url: str = ""

    _times = field_validator("started_at", "completed_at", mode="before")(_unset_time)

    @field_validator("conclusion", mode="before")
    @classmethod
    def _no_conclusion(cls, value: Any) -> Any:
        return value or None

    @property
    def workflow_file(self) -> str:
        """The workflow's file name (``build.yaml``), from ``path``."""
        return self.path.split("@", 1)[0].rsplit("/", 1)[-1]

    @property
    def ref(self) -> str:
        """The ref the run was made for (``refs/heads/main``), from ``path``; empty when not given."""
        return self.path.split("@", 1)[1] if "@" in self.path else ""

    @property
    def done(self) -> bool:
        return self.status == "completed"


class WorkflowJob(_GiteaModel):
    """A job of a workflow run (same status words as the run)."""

    id: int
    run_id: int
    name: str
    status: str
    conclusion: str | None = None
    labels: list[str] = Field(default_factory=list)
    run_attempt: int = 0
    head_sha: str = ""
    head_branch: str = ""
    runner_id: int = 0
    runner_name: str = ""
    steps: list[JobStep] = Field(default_factory=list)
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    html_url: str = ""

    _times = field_validator("created_at", "started_at", "completed_at", mode="before")(_unset_time)

    @field_validator("conclusion", mode="before")
    @classmethod
    def _no_conclusion(cls, value: Any) -> Any:
        return value or None

    @field_validator("labels", "steps", mode="before")
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return [] if value is None else value


@dataclass(frozen=True)
class RunnerScope:
    """Where runners are registered: one repository, an organization, or the whole instance."""

    kind: Literal["repo", "org", "instance"]
    owner: str = ""
    repo: str = ""

    def __post_init__(self) -> None:
        if self.kind == "repo" and not (self.owner and self.repo):
            raise ValueError("a repository scope needs an owner and a repository name")
        if self.kind == "org" and not self.owner:
            raise ValueError("an organization scope needs the organization's name")

    @classmethod
    def repository(cls, owner: str, repo: str) -> RunnerScope:
        return cls("repo", owner, repo)

    @classmethod
    def organization(cls, org: str) -> RunnerScope:
        return cls("org", org)

    @classmethod
    def instance(cls) -> RunnerScope:
        return cls("instance")

    def _actions(self) -> str:
        if self.kind == "repo":
            return f"/repos/{self.owner}/{self.repo}/actions"
        if self.kind == "org":
            return f"/orgs/{self.owner}/actions"
        return "/admin/actions"

    def runners_path(self) -> str:
        """The runners collection (Gitea 1.24+)."""
        return f"{self._actions()}/runners"

    def token_path_post(self) -> str:
        """Gitea 1.24+: ``POST .../actions/runners/registration-token``."""
        return f"{self._actions()}/runners/registration-token"

    def token_path_get(self) -> str:
        """Gitea 1.22/1.23: ``GET``; the instance's path has no ``/actions`` there."""
        if self.kind == "instance":
            return "/admin/runners/registration-token"
        return f"{self._actions()}/runners/registration-token"


@dataclass(frozen=True)
class DispatchTicket:
    """What diskci knows of a dispatch Gitea answered without a run id: the workflow, the ref (and
    commit, when the caller knows it), and the newest dispatch run before it (None where Gitea has
    no runs API to ask)."""

    owner: str
    repo: str
    workflow: str
    ref: str
    head_sha: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    after_run_id: int | None = None
    dispatched_at: float = 0.0

    def matches(self, run: WorkflowRun) -> bool:
        """Whether ``run`` is of this dispatch's workflow, ref and commit."""
        if run.event != "workflow_dispatch" or run.workflow_file != self.workflow.rsplit("/", 1)[-1]:
            return False
        if self.head_sha and run.head_sha and run.head_sha != self.head_sha:
            return False
        if self.ref.startswith("refs/"):
            return not run.ref or run.ref == self.ref
        return not run.ref or run.ref in (f"refs/heads/{self.ref}", f"refs/tags/{self.ref}")
