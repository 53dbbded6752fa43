"""Retention: set a platform's periods, and preview what the daily sweep would prune now."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, model_validator

from diskci.errors import PlatformError
from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import get_platform
from diskci.platform.db.models import Role


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
