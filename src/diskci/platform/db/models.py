"""The control plane's tables as SQLAlchemy 2 typed models.

The Alembic revisions in ``migrations/versions`` create exactly these tables (a unit test compares them
with Alembic's autogenerate). Times are stored in UTC and always come back timezone-aware, on SQLite
as on PostgreSQL (``UTCDateTime``). Status and role values are plain strings, named by the ``StrEnum``
classes below so that every module spells them the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from diskci.supplychain.verified import PublicationArtifacts


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of time stored)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and returned timezone-aware, whatever the database keeps.

    SQLite has no time zones: the value is stored as naive UTC there and given its zone back on read.
    A naive datetime handed in is refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: diskci stores only timezone-aware times")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Stable constraint names, so that migrations on SQLite (batch mode) and PostgreSQL agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class PublicationStatus(StrEnum):
    PROCESSING = "processing"
    PUBLISHED = "published"
    FAILED = "failed"
    PRUNED = "pruned"


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Role(StrEnum):
    """API roles, each including the ones after it: admin > operator > viewer."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        return {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}[self]

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank


class NodePlatform(Base):
    """A kind of node (``debian-12-amd64``): where its images live, who may sign them, what is default."""

    __tablename__ = "node_platforms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    architectures: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Full reference prefix: ``127.0.0.1:5000/ops/disk-images/debian-12-amd64`` or ``oci-layout:/path``.
    registry_repository: Mapped[str] = mapped_column(String(1024))
    cosign_identity_regexp: Mapped[str] = mapped_column(Text)
    cosign_oidc_issuer: Mapped[str] = mapped_column(String(1024))
    # The sigstore trusted root (JSON text) verification uses; None: the embedded authority's root.
    trusted_root: Mapped[str | None] = mapped_column(Text, default=None)
    default_publication_id: Mapped[int | None] = mapped_column(
        ForeignKey("disk_image_publications.id", use_alter=True, ondelete="SET NULL"), default=None
    )
    retention_routine_days: Mapped[int] = mapped_column(Integer, default=90)
    retention_critical_days: Mapped[int] = mapped_column(Integer, default=365)
    # The image-build repository CI runs check out (a git URL or path the platform and workers can
    # read); None: the platform has no CI. ``ci_variables`` are the workflow's ``vars`` (DISKCI_REGISTRY,
    # DISKCI_AUTHORITY, ...); ``push_secret_encrypted`` verifies the repository's push webhooks.
    image_build_repository: Mapped[str | None] = mapped_column(String(1024), default=None)
    ci_variables: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    push_secret_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    # The CI backend its runs go to: ``embedded`` (this platform schedules them on its own workers) or
    # ``gitea`` (dispatched to ``gitea_repository`` ("owner/name") on the Gitea at ``gitea_url`` with an
    # access token kept encrypted, like webhook secrets; Gitea's own webhooks are verified with
    # ``gitea_webhook_secret_encrypted``).
    ci_backend: Mapped[str] = mapped_column(String(16), default="embedded")
    gitea_url: Mapped[str | None] = mapped_column(String(1024), default=None)
    gitea_repository: Mapped[str | None] = mapped_column(String(255), default=None)
    gitea_token_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    gitea_webhook_secret_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    default_publication: Mapped[DiskImagePublication | None] = relationship(
        foreign_keys=[default_publication_id], post_update=True
    )


class NodeInstance(Base):
    """One machine: a node of a platform (known by its MAC addresses; netboot reports update it), or a
    CI worker (module ``gitea-runner``; ``build_targets`` are its runner labels) that a compute
    provider made in ``provider_region`` as ``instance_type``, known there as ``provider_id``."""

    __tablename__ = "node_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    # Lower-case, colon-separated (``52:54:00:12:34:56``).
    mac_addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    # None: a machine that netboots no platform of this one (a local CI worker)
    platform_id: Mapped[int | None] = mapped_column(
        ForeignKey("node_platforms.id", ondelete="CASCADE"), index=True, default=None
    )
    provider: Mapped[str] = mapped_column(String(64), default="local")
    provider_id: Mapped[str | None] = mapped_column(String(255), default=None)
    provider_region: Mapped[str | None] = mapped_column(String(64), default=None)
    instance_type: Mapped[str | None] = mapped_column(String(64), default=None)
    modules: Mapped[list[str]] = mapped_column(JSON, default=list)
    build_targets: Mapped[list[str]] = mapped_column(JSON, default=list)
    # A CI worker of a Gitea-backed platform: its runner's id in Gitea (deregistered on terminate)
    gitea_runner_id: Mapped[int | None] = mapped_column(Integer, default=None)
    status: Mapped[str] = mapped_column(String(32), default="registered")
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    last_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    last_seen: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    terminated_at: Mapped[datetime | None] = mapped_column(default=None)

    platform: Mapped[NodePlatform | None] = relationship(lazy="joined")


class DiskImageWebhook(Base):
    """The HMAC secret a platform's CI signs ``disk_image_built`` deliveries with (encrypted at rest).

    After a rotation the previous secret stays valid until ``previous_valid_until``.
    """

    __tablename__ = "disk_image_webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("node_platforms.id", ondelete="CASCADE"), unique=True)
    url: Mapped[str] = mapped_column(String(1024))
    secret_encrypted: Mapped[str] = mapped_column(Text)
    secret_fingerprint: Mapped[str] = mapped_column(String(128))
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    previous_valid_until: Mapped[datetime | None] = mapped_column(default=None)
    rotated_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    platform: Mapped[NodePlatform] = relationship(lazy="joined")


class DiskImagePublication(Base):
    """One published (or failed, or pruned) image index of a platform, as verified by the processor.

    ``artifacts`` maps each architecture to its verified files: the JSON shape of
    ``diskci.supplychain.verified.PublicationArtifacts``, which ``verified_artifacts`` reads it as.
    """

    __tablename__ = "disk_image_publications"
    __table_args__ = (
        UniqueConstraint("platform_id", "manifest_digest"),
        Index("ix_disk_image_publications_platform_status_created", "platform_id", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("node_platforms.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(128))
    reference: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default=PublicationStatus.PROCESSING.value)
    failure_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    failure_detail: Mapped[str | None] = mapped_column(Text, default=None)
    manifest_digest: Mapped[str] = mapped_column(String(128))
    composefs_digest: Mapped[str | None] = mapped_column(String(128), default=None)
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    signer_identity: Mapped[str | None] = mapped_column(String(1024), default=None)
    signer_issuer: Mapped[str | None] = mapped_column(String(1024), default=None)
    signed_at: Mapped[datetime | None] = mapped_column(default=None)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    delivery_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    pruned_at: Mapped[datetime | None] = mapped_column(default=None)

    platform: Mapped[NodePlatform] = relationship(foreign_keys=[platform_id], lazy="joined")

    @property
    def verified_artifacts(self) -> PublicationArtifacts:
        """``artifacts``, typed (architecture → manifest, build.json config, files)."""
        return PublicationArtifacts.model_validate(self.artifacts or {})


class DiskImageListing(Base):
    """The composefs listing of one architecture of a publication (what ``diskci composefs diff`` compares):
    ``data`` is ``diskci.formats.composefs_diff.encode``'s bytes, or None with ``error`` saying why the
    processor could not read the image (the publication is published all the same)."""

    __tablename__ = "disk_image_listings"
    __table_args__ = (UniqueConstraint("publication_id", "architecture"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    publication_id: Mapped[int] = mapped_column(ForeignKey("disk_image_publications.id", ondelete="CASCADE"))
    architecture: Mapped[str] = mapped_column(String(32))
    composefs_sha256: Mapped[str] = mapped_column(String(64))  # the image blob the listing was read from
    entries: Mapped[int] = mapped_column(Integer, default=0)
    data: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """Every accepted webhook delivery, by its id: a delivery id is never accepted twice."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(64), unique=True)
    platform_id: Mapped[int | None] = mapped_column(
        ForeignKey("node_platforms.id", ondelete="SET NULL"), default=None, index=True
    )
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    publication_id: Mapped[int | None] = mapped_column(
        ForeignKey("disk_image_publications.id", ondelete="SET NULL"), default=None
    )


class Event(Base):
    """Something that happened, for the recent-events view (``disk_image_published``, ...)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_type_created", "type", "created_at"),
        Index("ix_events_platform_created", "platform_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    platform_id: Mapped[int | None] = mapped_column(
        ForeignKey("node_platforms.id", ondelete="SET NULL"), default=None
    )
    subject: Mapped[str | None] = mapped_column(String(255), default=None)
    reason: Mapped[str | None] = mapped_column(String(64), default=None)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    platform: Mapped[NodePlatform | None] = relationship(lazy="joined")


class Task(Base):
    """A unit of queued work (``task_id`` is the queue's id), for status queries and crash recovery."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.QUEUED.value)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    """While ``running`` (or ``queued``): renewed by the worker's heartbeat; once past, the work is
    recovered (re-queued) by ``diskci.platform.tasks.recover_deliveries``."""


class ApiToken(Base):
    """A bearer token for the API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Confirmation(Base):
    """A one-time confirmation of a destructive action, bound to the exact action, arguments and caller
    (``actor``); it expires at ``expires_at`` and is spent at ``used_at`` (shared by every replica)."""

    __tablename__ = "confirmations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    confirmation_id: Mapped[str] = mapped_column(String(64), unique=True)
    action: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actor: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class CiStatus(StrEnum):
    """Where a CI run or job is, in Gitea's words (``waiting``: a job whose ``needs`` are not done)."""

    QUEUED = "queued"
    WAITING = "waiting"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class CiConclusion(StrEnum):
    """How a completed CI run or job ended, in Gitea's words."""

    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class CiRunnerStatus(StrEnum):
    ONLINE = "online"
    BUSY = "busy"
    OFFLINE = "offline"
    REVOKED = "revoked"


class CiRun(Base):
    """One run of a platform's build workflow at a ref (the embedded CI backend); its jobs are ``CiJob``."""

    __tablename__ = "ci_runs"
    __table_args__ = (
        Index("ix_ci_runs_platform_created", "platform_id", "created_at"),
        UniqueConstraint("platform_id", "trigger_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the run_id
    platform_id: Mapped[int] = mapped_column(ForeignKey("node_platforms.id", ondelete="CASCADE"))
    ref: Mapped[str] = mapped_column(String(255))
    sha: Mapped[str] = mapped_column(String(64), default="")
    event: Mapped[str] = mapped_column(String(32), default="push")
    workflow: Mapped[str] = mapped_column(Text, default="")  # the workflow file at that ref
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # a workflow_dispatch's inputs
    status: Mapped[str] = mapped_column(String(16), default=CiStatus.QUEUED.value, index=True)
    conclusion: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    # ``push:<ref>:<sha>`` for a pushed ref: the same tag pushed twice makes one run
    trigger_key: Mapped[str | None] = mapped_column(String(255), default=None)
    reproducibility_check: Mapped[bool] = mapped_column(Boolean, default=False)
    failure_reason: Mapped[str | None] = mapped_column(String(64), default=None)  # not_reproducible, ...
    failure_detail: Mapped[str | None] = mapped_column(Text, default=None)
    # A run of a Gitea-backed platform: Gitea's run id once found (a dispatch returns none), when a
    # cancel was asked of a Gitea that has no cancel endpoint, and when and how it was last synced
    # (``sync_error``: the Gitea outage the run's state reflects, None once Gitea answers again).
    gitea_run_id: Mapped[int | None] = mapped_column(Integer, default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    synced_at: Mapped[datetime | None] = mapped_column(default=None)
    sync_error: Mapped[str | None] = mapped_column(Text, default=None)
    publication_id: Mapped[int | None] = mapped_column(
        ForeignKey("disk_image_publications.id", ondelete="SET NULL"), default=None
    )

    platform: Mapped[NodePlatform] = relationship(lazy="joined")
    jobs: Mapped[list[CiJob]] = relationship(
        back_populates="run", order_by="CiJob.position", cascade="all, delete-orphan"
    )


class CiRunner(Base):
    """A CI worker registered over Gitea's runner protocol; only its token's SHA-256 is stored."""

    __tablename__ = "ci_runners"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[str] = mapped_column(String(64), default="")
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=CiRunnerStatus.ONLINE.value)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("node_instances.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # The worker's host as its last heartbeat gave it: disk, memory, load (``system_get_instance_stats``)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    stats_at: Mapped[datetime | None] = mapped_column(default=None)


class CiJob(Base):
    """One job of a run: a workflow job, or one combination of its matrix, as Gitea splits them.

    ``payload`` is the one-job workflow handed to the runner; ``needs`` names the workflow job ids it
    waits for; ``labels`` are its ``runs-on`` labels, all of which a runner must have. ``log_length``
    counts the log rows kept (``CiLogRow``); past the cap the rows are dropped (``log_truncated``) but
    still acknowledged. While ``in_progress`` the runner's calls renew ``lease_expires_at``.
    """

    __tablename__ = "ci_jobs"
    __table_args__ = (
        UniqueConstraint("run_id", "name"),
        Index("ix_ci_jobs_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the task id of the runner protocol
    run_id: Mapped[int] = mapped_column(ForeignKey("ci_runs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    matrix: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    needs: Mapped[list[str]] = mapped_column(JSON, default=list)
    payload: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=CiStatus.QUEUED.value)
    conclusion: Mapped[str | None] = mapped_column(String(16), default=None)
    failure_reason: Mapped[str | None] = mapped_column(String(64), default=None)  # ``worker_lost``, ...
    gitea_job_id: Mapped[int | None] = mapped_column(Integer, default=None)  # a Gitea-backed run's job
    runner_id: Mapped[int | None] = mapped_column(
        ForeignKey("ci_runners.id", ondelete="SET NULL"), default=None
    )
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    log_length: Mapped[int] = mapped_column(Integer, default=0)
    log_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    log_complete: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # SHA-256 of the job's runtime token (the task's ``context.token``): it asks for OIDC ID tokens
    runtime_token_hash: Mapped[str | None] = mapped_column(String(128), default=None, index=True)
    # 0, or 1 for the second build of a reproducibility check
    replica: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)

    run: Mapped[CiRun] = relationship(back_populates="jobs")
    runner: Mapped[CiRunner | None] = relationship(lazy="joined")


class CiLogRow(Base):
    """One log row of a job, by its index in the job's log (0, 1, ...; no gaps, no doubles)."""

    __tablename__ = "ci_log_rows"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("ci_jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime | None] = mapped_column(default=None)
    content: Mapped[str] = mapped_column(Text, default="")


class RunnerRegistrationToken(Base):
    """A one-time token a CI worker registers with (only its SHA-256 is stored); spent at ``used_at``."""

    __tablename__ = "runner_registration_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("node_instances.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    runner_id: Mapped[int | None] = mapped_column(
        ForeignKey("ci_runners.id", ondelete="SET NULL"), default=None
    )


class OidcSigningKey(Base):
    """A key the platform signs its CI jobs' OIDC ID tokens with (private key encrypted at rest).

    The newest key without ``retired_at`` signs; every key not retired longer than a token's life is
    served in the JWKS, so a token signed just before a rotation still verifies.
    """

    __tablename__ = "oidc_signing_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    algorithm: Mapped[str] = mapped_column(String(16), default="ES256")
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)
