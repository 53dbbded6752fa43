"""The Gitea CI backend: a platform's backend, Gitea server, repository and encrypted token; Gitea's
run, job and runner ids; a run's cancel request and sync state (issue 17)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 16:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("node_platforms", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("ci_backend", sa.String(length=16), nullable=False, server_default="embedded")
        )
        batch_op.add_column(sa.Column("gitea_url", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("gitea_repository", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("gitea_token_encrypted", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("gitea_webhook_secret_encrypted", sa.Text(), nullable=True))
    with op.batch_alter_table("node_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gitea_runner_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("ci_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gitea_run_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sync_error", sa.Text(), nullable=True))
    with op.batch_alter_table("ci_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gitea_job_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ci_jobs", schema=None) as batch_op:
        batch_op.drop_column("gitea_job_id")
    with op.batch_alter_table("ci_runs", schema=None) as batch_op:
        batch_op.drop_column("sync_error")
        batch_op.drop_column("synced_at")
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("gitea_run_id")
    with op.batch_alter_table("node_instances", schema=None) as batch_op:
        batch_op.drop_column("gitea_runner_id")
    with op.batch_alter_table("node_platforms", schema=None) as batch_op:
        batch_op.drop_column("gitea_webhook_secret_encrypted")
        batch_op.drop_column("gitea_token_encrypted")
        batch_op.drop_column("gitea_repository")
        batch_op.drop_column("gitea_url")
        batch_op.drop_column("ci_backend")
