"""task leases: ``tasks.lease_expires_at``, renewed while a task runs, so crashed work is recovered (issue 18)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_tasks_lease_expires_at"), ["lease_expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_lease_expires_at"))
        batch_op.drop_column("lease_expires_at")
