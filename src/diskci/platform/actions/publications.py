"""Disk image publications: list (filtered, paginated), show, choose the default, mark critical."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from diskci.errors import Conflict, NotFound
from diskci.platform.actions.catalog import ActionContext, ActionModel, OneOrMany, UtcDatetime, action
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import get_platform
from diskci.platform.db.models import DiskImagePublication, NodePlatform, PublicationStatus, Role
from diskci.supplychain.verified import PublicationArtifacts

StatusName = Literal["processing", "published", "failed", "pruned"]


class PublicationNotFound(NotFound):
    pass


class PublicationNotPublishable(Conflict):
    """The publication cannot become the default (not published, pruned, or another platform's)."""


def get_publication(session: Session, publication_id: int) -> DiskImagePublication:
    pub = session.get(DiskImagePublication, publication_id)
    if pub is None:
        raise PublicationNotFound(f"no disk image publication with id {publication_id}")
    return pub


class PublicationOut(ActionModel):
    id: int
    platform: str
    version: str
    reference: str
    status: str
    failure_reason: str | None
    failure_detail: str | None
    manifest_digest: str
    composefs_digest: str | None
    artifacts: PublicationArtifacts
    signer_identity: str | None
    signer_issuer: str | None
    signed_at: datetime | None
    critical: bool
    is_default: bool
    created_at: datetime
    pruned_at: datetime | None

    @classmethod
    def of(cls, pub: DiskImagePublication) -> PublicationOut:
        return cls(
            id=pub.id,
            platform=pub.platform.name,
            version=pub.version,
            reference=pub.reference,
            status=pub.status,
            failure_reason=pub.failure_reason,
            failure_detail=pub.failure_detail,
            manifest_digest=pub.manifest_digest,
            composefs_digest=pub.composefs_digest,
            artifacts=pub.verified_artifacts,
            signer_identity=pub.signer_identity,
            signer_issuer=pub.signer_issuer,
            signed_at=pub.signed_at,
            critical=pub.critical,
            is_default=pub.platform.default_publication_id == pub.id,
            created_at=pub.created_at,
            pruned_at=pub.pruned_at,
        )


class ListPublicationsInput(ActionModel):
    platform: str | None = None
    status: OneOrMany[StatusName] | None = None
    critical: bool | None = None
    version: str | None = None
    created_after: UtcDatetime | None = None
    created_before: UtcDatetime | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class ListPublicationsOutput(ActionModel):
    publications: list[PublicationOut]
    total: int = Field(description="How many match the filters, over all pages.")
    limit: int
    offset: int
    next_offset: int | None


@action(
    "system_list_disk_image_publications",
    ListPublicationsInput,
    ListPublicationsOutput,
    Role.VIEWER,
    read_only=True,
)
def system_list_disk_image_publications(
    ctx: ActionContext, data: ListPublicationsInput
) -> ListPublicationsOutput:
    """List disk image publications, newest first, filtered and paginated.

    Example: {"platform": "debian-12-amd64", "status": ["published"], "limit": 20, "offset": 0}
    """
    conditions: list[Any] = []
    if data.platform:
        conditions.append(DiskImagePublication.platform_id == get_platform(ctx.session, data.platform).id)
    if data.status:
        conditions.append(DiskImagePublication.status.in_(data.status))
    if data.critical is not None:
        conditions.append(DiskImagePublication.critical.is_(data.critical))
    if data.version:
        conditions.append(DiskImagePublication.version == data.version)
    if data.created_after:
        conditions.append(DiskImagePublication.created_at >= data.created_after)
    if data.created_before:
        conditions.append(DiskImagePublication.created_at < data.created_before)
    total = ctx.session.scalar(select(func.count()).select_from(DiskImagePublication).where(*conditions)) or 0
    rows = ctx.session.scalars(
        select(DiskImagePublication)
        .where(*conditions)
        .order_by(DiskImagePublication.created_at.desc(), DiskImagePublication.id.desc())
        .limit(data.limit)
        .offset(data.offset)
    ).unique()
    pubs = [PublicationOut.of(p) for p in rows]
    following = data.offset + len(pubs)
    return ListPublicationsOutput(
        publications=pubs,
        total=total,
        limit=data.limit,
        offset=data.offset,
        next_offset=following if following < total else None,
    )


class GetPublicationInput(ActionModel):
    id: int


@action("system_get_disk_image_publication", GetPublicationInput, PublicationOut, Role.VIEWER, read_only=True)
def system_get_disk_image_publication(ctx: ActionContext, data: GetPublicationInput) -> PublicationOut:
    """Show one disk image publication with its verified artifacts.

    Example: {"id": 12}
    """
    return PublicationOut.of(get_publication(ctx.session, data.id))


class SetDefaultInput(ActionModel):
    platform: str
    publication_id: int


class SetDefaultOutput(ActionModel):
    platform: str
    default_publication: PublicationOut
    previous_default_id: int | None


@action("system_set_default_disk_image_publication", SetDefaultInput, SetDefaultOutput, Role.OPERATOR)
def system_set_default_disk_image_publication(ctx: ActionContext, data: SetDefaultInput) -> SetDefaultOutput:
    """Make a published publication the one its platform's nodes netboot.

    Example: {"platform": "debian-12-amd64", "publication_id": 12}
    """
    platform = get_platform(ctx.session, data.platform)
    # Lock the platform row (PostgreSQL) so two operators do not race each other.
    ctx.session.execute(select(NodePlatform.id).where(NodePlatform.id == platform.id).with_for_update())
    pub = get_publication(ctx.session, data.publication_id)
    if pub.platform_id != platform.id:
        raise PublicationNotPublishable(
            f"publication {pub.id} belongs to platform {pub.platform.name!r}, not {platform.name!r}"
        )
    if pub.status != PublicationStatus.PUBLISHED or pub.pruned_at is not None:
        raise PublicationNotPublishable(
            f"publication {pub.id} is {pub.status}: only a published publication can be the default"
        )
    previous = platform.default_publication_id
    platform.default_publication_id = pub.id
    platform.updated_at = ctx.now
    ctx.session.flush()
    record_event(
        ctx.session,
        "disk_image_default_changed",
        platform=platform,
        subject=f"publication:{pub.id}",
        payload={"actor": ctx.actor, "publication_id": pub.id, "version": pub.version, "previous": previous},
    )
    return SetDefaultOutput(
        platform=platform.name, default_publication=PublicationOut.of(pub), previous_default_id=previous
    )


class MarkCriticalInput(ActionModel):
    publication_id: int
    critical: bool = True


@action("system_mark_disk_image_publication_critical", MarkCriticalInput, PublicationOut, Role.OPERATOR)
def system_mark_disk_image_publication_critical(
    ctx: ActionContext, data: MarkCriticalInput
) -> PublicationOut:
    """Mark a publication critical (kept for the longer critical retention) or routine again.

    Example: {"publication_id": 12, "critical": true}
    """
    pub = get_publication(ctx.session, data.publication_id)
    pub.critical = data.critical
    ctx.session.flush()
    record_event(
        ctx.session,
        "disk_image_publication_critical" if data.critical else "disk_image_publication_routine",
        platform=pub.platform,
        subject=f"publication:{pub.id}",
        payload={"actor": ctx.actor, "publication_id": pub.id, "version": pub.version},
    )
    return PublicationOut.of(pub)
