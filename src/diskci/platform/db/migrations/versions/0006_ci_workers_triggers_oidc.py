"""CI workers as NodeInstances, a platform's image-build repository, tag-push dedupe, reproducibility
checks, job runtime tokens and the OIDC signing keys of job ID tokens (issue 12)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 12:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("node_platforms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_build_repository", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("ci_variables", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("push_secret_encrypted", sa.Text(), nullable=True))
    with op.batch_alter_table("node_instances", schema=None) as batch_op:
        batch_op.alter_column("platform_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("provider_region", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("instance_type", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("build_targets", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("terminated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("ci_runners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stats", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("stats_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("ci_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trigger_key", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column("reproducibility_check", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("failure_reason", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("failure_detail", sa.Text(), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_ci_runs_platform_id_trigger_key"), ["platform_id", "trigger_key"]
        )
    with op.batch_alter_table("ci_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runtime_token_hash", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("replica", sa.Integer(), nullable=False, server_default="0"))
        batch_op.create_index(
            batch_op.f("ix_ci_jobs_runtime_token_hash"), ["runtime_token_hash"], unique=False
        )
    op.create_table(
        "oidc_signing_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=16), nullable=False),
        sa.Column("private_key_encrypted", sa.Text(), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_signing_keys")),
        sa.UniqueConstraint("kid", name=op.f("uq_oidc_signing_keys_kid")),
    )


def downgrade() -> None:
    op.drop_table("oidc_signing_keys")
    with op.batch_alter_table("ci_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ci_jobs_runtime_token_hash"))
        batch_op.drop_column("replica")
        batch_op.drop_column("runtime_token_hash")
    with op.batch_alter_table("ci_runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_ci_runs_platform_id_trigger_key"), type_="unique")
        batch_op.drop_column("failure_detail")
        batch_op.drop_column("failure_reason")
        batch_op.drop_column("reproducibility_check")
        batch_op.drop_column("trigger_key")
    with op.batch_alter_table("ci_runners", schema=None) as batch_op:
        batch_op.drop_column("stats_at")
        batch_op.drop_column("stats")
    with op.batch_alter_table("node_instances", schema=None) as batch_op:
        batch_op.drop_column("terminated_at")
        batch_op.drop_column("status_reason")
        batch_op.drop_column("build_targets")
        batch_op.drop_column("instance_type")
        batch_op.drop_column("provider_region")
        batch_op.alter_column("platform_id", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("node_platforms", schema=None) as batch_op:
        batch_op.drop_column("push_secret_encrypted")
        batch_op.drop_column("ci_variables")
        batch_op.drop_column("image_build_repository")
