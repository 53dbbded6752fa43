"""CI runs, jobs, log rows, runners and runner registration tokens: the embedded CI backend (issue 12)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:52:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "ci_runners",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["node_instances.id"],
            name=op.f("fk_ci_runners_instance_id_node_instances"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ci_runners")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_ci_runners_token_hash")),
        sa.UniqueConstraint("uuid", name=op.f("uq_ci_runners_uuid")),
    )
    op.create_table(
        "ci_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform_id", sa.Integer(), nullable=False),
        sa.Column("ref", sa.String(length=255), nullable=False),
        sa.Column("sha", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("workflow", sa.Text(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("conclusion", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("publication_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["platform_id"],
            ["node_platforms.id"],
            name=op.f("fk_ci_runs_platform_id_node_platforms"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["publication_id"],
            ["disk_image_publications.id"],
            name=op.f("fk_ci_runs_publication_id_disk_image_publications"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ci_runs")),
    )
    with op.batch_alter_table("ci_runs", schema=None) as batch_op:
        batch_op.create_index("ix_ci_runs_platform_created", ["platform_id", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_ci_runs_status"), ["status"], unique=False)

    op.create_table(
        "ci_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("matrix", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("needs", sa.JSON(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("conclusion", sa.String(length=16), nullable=True),
        sa.Column("failure_reason", sa.String(length=64), nullable=True),
        sa.Column("runner_id", sa.Integer(), nullable=True),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("log_length", sa.Integer(), nullable=False),
        sa.Column("log_truncated", sa.Boolean(), nullable=False),
        sa.Column("log_complete", sa.Boolean(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["ci_runs.id"], name=op.f("fk_ci_jobs_run_id_ci_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["runner_id"],
            ["ci_runners.id"],
            name=op.f("fk_ci_jobs_runner_id_ci_runners"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ci_jobs")),
        sa.UniqueConstraint("run_id", "name", name=op.f("uq_ci_jobs_run_id_name")),
    )
    with op.batch_alter_table("ci_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ci_jobs_lease_expires_at"), ["lease_expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_ci_jobs_run_id"), ["run_id"], unique=False)
        batch_op.create_index("ix_ci_jobs_status_created", ["status", "created_at"], unique=False)

    op.create_table(
        "runner_registration_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("runner_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["node_instances.id"],
            name=op.f("fk_runner_registration_tokens_instance_id_node_instances"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["runner_id"],
            ["ci_runners.id"],
            name=op.f("fk_runner_registration_tokens_runner_id_ci_runners"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runner_registration_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_runner_registration_tokens_token_hash")),
    )
    op.create_table(
        "ci_log_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["ci_jobs.id"], name=op.f("fk_ci_log_rows_job_id_ci_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ci_log_rows")),
        sa.UniqueConstraint("job_id", "index", name=op.f("uq_ci_log_rows_job_id_index")),
    )


def downgrade() -> None:

    op.drop_table("ci_log_rows")
    op.drop_table("runner_registration_tokens")
    with op.batch_alter_table("ci_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_ci_jobs_status_created")
        batch_op.drop_index(batch_op.f("ix_ci_jobs_run_id"))
        batch_op.drop_index(batch_op.f("ix_ci_jobs_lease_expires_at"))

    op.drop_table("ci_jobs")
    with op.batch_alter_table("ci_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ci_runs_status"))
        batch_op.drop_index("ix_ci_runs_platform_created")

    op.drop_table("ci_runs")
    op.drop_table("ci_runners")
