"""Retention: set a platform's periods, preview what the daily sweep would prune now, or prune it now
(destructive: confirmed, with the publications it would delete as its preview)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from diskci.errors import PlatformError
from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import get_platform
from diskci.platform.db.models import Role

if TYPE_CHECKING:
    from diskci.platform.services.retention import DiskImageRetentionService


class SetRetentionInput(ActionModel):
    platform: str
    routine_days: int | None = Field(default=None, ge=1, le=36500)
    critical_days: int | None = Field(default=None, ge=1, le=36500)

    @model_validator(mode="after")
    def _something(self) -> SetRetentionInput:
        if self.routine_days is None and self.critical_days is None:
            raise ValueError("give routine_days, critical_days or both")
        return self


class RetentionOut(ActionModel):
    platform: str
    routine_days: int
    critical_days: int


@action("system_set_disk_image_retention", SetRetentionInput, RetentionOut, Role.ADMIN)
def system_set_disk_image_retention(ctx: ActionContext, data: SetRetentionInput) -> RetentionOut:
    """Set how long a platform keeps routine and critical publications (days).

    Example: {"platform": "debian-12-amd64", "routine_days": 30, "critical_days": 365}
    """
    platform = get_platform(ctx.session, data.platform)
    before = (platform.retention_routine_days, platform.retention_critical_days)
    if data.routine_days is not None:
        platform.retention_routine_days = data.routine_days
    if data.critical_days is not None:
        platform.retention_critical_days = data.critical_days
    platform.updated_at = ctx.now
    ctx.session.flush()
    record_event(
        ctx.session,
        "disk_image_retention_changed",
        platform=platform,
        subject=platform.name,
        payload={
            "actor": ctx.actor,
            "before": {"routine_days": before[0], "critical_days": before[1]},
            "after": {
                "routine_days": platform.retention_routine_days,
                "critical_days": platform.retention_critical_days,
            },
        },
    )
    return RetentionOut(
        platform=platform.name,
        routine_days=platform.retention_routine_days,
        critical_days=platform.retention_critical_days,
    )


class PreviewRetentionInput(ActionModel):
    platform: str | None = Field(default=None, description="Only this platform (default: all).")


class RetentionCandidateOut(ActionModel):
    id: int
    platform: str
    version: str
    reference: str
    manifest_digest: str
    critical: bool
    created_at: datetime
    rule: str


class PreviewRetentionOutput(ActionModel):
    candidates: list[RetentionCandidateOut]
    blobs_removable: int
    bytes_freed: int


class PreviewNotAvailable(PlatformError):
    http_status = 500


def _refuse_delete(reference: str, index_digest: str, manifest_digests: list[str]) -> None:
    raise PreviewNotAvailable(f"a retention preview must not delete {reference}@{index_digest}")


@action(
    "system_preview_disk_image_retention",
    PreviewRetentionInput,
    PreviewRetentionOutput,
    Role.VIEWER,
    read_only=True,
)
def system_preview_disk_image_retention(
    ctx: ActionContext, data: PreviewRetentionInput
) -> PreviewRetentionOutput:
    """Show what the retention sweep would prune now (same rules, nothing deleted).

    Example: {"platform": "debian-12-amd64"}
    """
    from diskci.platform.services.blobcache import BlobCache
    from diskci.platform.services.retention import DiskImageRetentionService

    if data.platform is not None:
        get_platform(ctx.session, data.platform)
    if ctx.database is None:
        raise PreviewNotAvailable("the retention preview needs the database handle")
    service = DiskImageRetentionService(
        database=ctx.database, blobs=BlobCache(ctx.settings.blob_dir), deleter=_refuse_delete
    )
    result = service.preview(platform=data.platform)
    return PreviewRetentionOutput(
        candidates=[
            RetentionCandidateOut(
                id=c.id,
                platform=c.platform,
                version=c.version,
                reference=c.reference,
                manifest_digest=c.manifest_digest,
                critical=c.critical,
                created_at=c.created_at,
                rule=c.rule,
            )
            for c in result.candidates
        ],
        blobs_removable=result.blobs_removed,
        bytes_freed=result.bytes_freed,
    )


# prune now (outside the daily sweep)


class PruneRetentionOutput(ActionModel):
    pruned: list[int] = Field(description="The publications pruned (ids).")
    failed: dict[str, str] = Field(description="Publications the registry refused to delete: id -> error.")
    blobs_removed: int
    bytes_freed: int


def _service(ctx: ActionContext, *, dry_run: bool) -> DiskImageRetentionService:
    from diskci.platform.services.blobcache import BlobCache
    from diskci.platform.services.retention import DiskImageRetentionService, delete_publication

    if ctx.database is None:
        raise PreviewNotAvailable("retention needs the database handle")
    return DiskImageRetentionService(
        database=ctx.database,
        blobs=BlobCache(ctx.settings.blob_dir),
        deleter=_refuse_delete if dry_run else delete_publication,
        event_retention_days=ctx.settings.event_retention_days,
    )


def preview_prune_disk_image_publications(ctx: ActionContext, data: PreviewRetentionInput) -> dict[str, Any]:
    """What pruning now would affect: the publications deleted (and their OCI artifacts), the blobs freed."""
    if data.platform is not None:
        get_platform(ctx.session, data.platform)
    result = _service(ctx, dry_run=True).preview(platform=data.platform)
    return {
        "publications_pruned": [
            {k: v for k, v in c.as_dict().items() if k in ("id", "platform", "version", "reference", "rule")}
            for c in result.candidates
        ],
        "blobs_removed": result.blobs_removed,
        "bytes_freed": result.bytes_freed,
        "never_pruned": "the default publication and the newest published one of each platform",
    }


@action(
    "system_prune_disk_image_publications",
    PreviewRetentionInput,
    PruneRetentionOutput,
    Role.ADMIN,
    destructive=True,
    preview=preview_prune_disk_image_publications,
)
def system_prune_disk_image_publications(
    ctx: ActionContext, data: PreviewRetentionInput
) -> PruneRetentionOutput:
    """Prune now what the retention sweep would prune (the same rules as the daily sweep, at once).

    The publications and their OCI artifacts are deleted from the registry; the default publication is
    never pruned. system_preview_disk_image_retention shows the same list without deleting.

    Example: {"platform": "debian-12-amd64"}
    """
    # The sweep writes in its own sessions: nothing is read in the action's (write) session before it,
    # so that no write transaction is held while the registry is called.
    service = _service(ctx, dry_run=False)
    platform_id = None
    if data.platform is not None:
        with service.database.read_session() as session:
            platform_id = get_platform(session, data.platform).id
    result = service.sweep(platform=data.platform)
    record_event(
        ctx.session,
        "disk_image_retention_pruned",
        platform_id=platform_id,
        subject=data.platform or "all platforms",
        payload={
            "actor": ctx.actor,
            "platform": data.platform,
            "pruned": result.pruned,
            "failed": {str(k): v for k, v in result.failed.items()},
        },
    )
    return PruneRetentionOutput(
        pruned=result.pruned,
        failed={str(k): v for k, v in result.failed.items()},
        blobs_removed=result.blobs_removed,
        bytes_freed=result.bytes_freed,
    )
