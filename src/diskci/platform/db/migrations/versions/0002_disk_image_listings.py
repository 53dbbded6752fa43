"""disk image listings: each publication's composefs listing per architecture (issue 19)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 12:00:00.000000

Publications verified before this revision have no listing: ``system_diff_disk_image_publications``
says so for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "disk_image_listings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("publication_id", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.String(length=32), nullable=False),
        sa.Column("composefs_sha256", sa.String(length=64), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["publication_id"],
            ["disk_image_publications.id"],
            name=op.f("fk_disk_image_listings_publication_id_disk_image_publications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disk_image_listings")),
        sa.UniqueConstraint(
            "publication_id",
            "architecture",
            name=op.f("uq_disk_image_listings_publication_id_architecture"),
        ),
    )


def downgrade() -> None:
    op.drop_table("disk_image_listings")
