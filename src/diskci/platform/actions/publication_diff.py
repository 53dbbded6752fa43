"""What changes between two publications of a platform: the diff of their composefs listings.

The listings are the ones the publication processor stored when it verified each publication
(``DiskImageListing``); the diff is ``diskci.formats.composefs_diff.diff``, the same as ``diskci composefs
diff`` prints for the two images, in the same JSON shape, a page at a time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from diskci import mediatypes as mt
from diskci.errors import InvalidRequest, NotFound
from diskci.formats import composefs_diff
from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.actions.platforms import get_platform
from diskci.platform.actions.publications import get_publication
from diskci.platform.db.models import DiskImageListing, DiskImagePublication, NodePlatform, Role


class NoDefaultPublication(InvalidRequest):
    """No ``from_publication`` was given and the platform has no default to diff from."""


class PublicationOfAnotherPlatform(InvalidRequest):
    """A publication named for the diff belongs to another platform."""


class ListingUnavailable(NotFound):
    """A publication has no usable listing for an architecture (the message says why)."""


class DiffPublicationsInput(ActionModel):
    platform: str
    to_publication: int = Field(description="The publication that would become the default.")
    from_publication: int | None = Field(
        default=None, description="The publication to compare with; default: the platform's default."
    )
    architecture: str | None = Field(
        default=None, description="One architecture; default: every architecture of either publication."
    )
    under: str | None = Field(default=None, description="Only paths at or below this one (e.g. /etc).")
    limit: int = Field(default=200, ge=1, le=5000, description="At most this many changes per architecture.")
    offset: int = Field(default=0, ge=0, description="Skip this many changes of each architecture.")


class ListingEntryOut(ActionModel):
    """One path of a composefs listing (docs/composefs.md)."""

    type: str
    mode: str
    uid: int
    gid: int
    size: int | None
    content: str | None
    target: str | None
    rdev: str | None
    xattrs: dict[str, str] | None


class ChangeOut(ActionModel):
    path: str
    change: Literal["added", "removed", "changed"]
    fields: list[str]
    old: ListingEntryOut | None
    new: ListingEntryOut | None


class DiffCounts(ActionModel):
    added: int
    removed: int
    changed: int
    unchanged: int


class ArchitectureDiffOut(ActionModel):
    architecture: str
    counts: DiffCounts = Field(description="Over every change, not only this page.")
    entries: list[ChangeOut]
    offset: int
    next_offset: int | None
    truncated: bool = Field(description="More changes follow this page (ask again from next_offset).")


class PublicationSide(ActionModel):
    id: int
    version: str
    status: str
    is_default: bool


class DiffPublicationsOutput(ActionModel):
    platform: str
    from_publication: PublicationSide
    to_publication: PublicationSide
    architectures: list[ArchitectureDiffOut]


def _side(platform: NodePlatform, pub: DiskImagePublication) -> PublicationSide:
    is_default = platform.default_publication_id == pub.id
    return PublicationSide(id=pub.id, version=pub.version, status=pub.status, is_default=is_default)


def _of_platform(session: Session, platform: NodePlatform, publication_id: int) -> DiskImagePublication:
    pub = get_publication(session, publication_id)
    if pub.platform_id != platform.id:
        raise PublicationOfAnotherPlatform(
            f"publication {pub.id} belongs to platform {pub.platform.name!r}, not {platform.name!r}"
        )
    return pub


def publication_listing(session: Session, pub: DiskImagePublication, arch: str) -> composefs_diff.Listing:
    """The stored listing of ``arch`` of ``pub``; empty when ``pub`` has no such architecture at all."""
    files = pub.verified_artifacts.arch(arch)
    if files is None:
        return {}
    row = session.scalar(
        select(DiskImageListing).where(
            DiskImageListing.publication_id == pub.id, DiskImageListing.architecture == arch
        )
    )
    name = f"publication {pub.id} ({pub.version}) {arch}"
    if row is None:
        if not any(f.media_type == mt.COMPOSEFS_IMAGE for f in files.artifacts):
            raise ListingUnavailable(f"{name}: the build has no composefs image to list")
        raise ListingUnavailable(
            f"{name}: no listing was stored (verified before listings were kept, or not published)"
        )
    if row.data is None:
        raise ListingUnavailable(f"{name}: its composefs image could not be listed: {row.error}")
    return composefs_diff.decode(row.data)


@action(
    "system_diff_disk_image_publications",
    DiffPublicationsInput,
    DiffPublicationsOutput,
    Role.VIEWER,
    read_only=True,
)
def system_diff_disk_image_publications(
    ctx: ActionContext, data: DiffPublicationsInput
) -> DiffPublicationsOutput:
    """Show what changes from one publication to another: paths added, removed and changed.

    Compares the composefs listings (file type, mode, owner, size, content digest, symlink target,
    device number, xattrs; not modification times) per architecture, a page of changes at a time:
    "what changes if I make this the default?" (from_publication defaults to the current default).

    Example: {"platform": "debian-12-amd64", "to_publication": 13, "under": "/etc", "limit": 100}
    """
    platform = get_platform(ctx.session, data.platform)
    from_id = data.from_publication
    if from_id is None:
        from_id = platform.default_publication_id
        if from_id is None:
            raise NoDefaultPublication(
                f"platform {platform.name!r} has no default publication to compare with",
                hint="Name one with from_publication.",
            )
    old = _of_platform(ctx.session, platform, from_id)
    new = _of_platform(ctx.session, platform, data.to_publication)
    if data.architecture is not None:
        arches = [data.architecture]
        if all(p.verified_artifacts.arch(data.architecture) is None for p in (old, new)):
            raise ListingUnavailable(
                f"neither publication {old.id} nor {new.id} has the architecture {data.architecture!r}"
            )
    else:
        arches = sorted(set(old.verified_artifacts.architectures) | set(new.verified_artifacts.architectures))
    out: list[ArchitectureDiffOut] = []
    for arch in arches:
        result = composefs_diff.diff(
            publication_listing(ctx.session, old, arch),
            publication_listing(ctx.session, new, arch),
            under=data.under,
        )
        page = result.to_json(offset=data.offset, limit=data.limit)
        out.append(ArchitectureDiffOut.model_validate({"architecture": arch, **page}))
    return DiffPublicationsOutput(
        platform=platform.name,
        from_publication=_side(platform, old),
        to_publication=_side(platform, new),
        architectures=out,
    )
