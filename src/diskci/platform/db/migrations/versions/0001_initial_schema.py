"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 07:10:53.241242
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "node_platforms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("architectures", sa.JSON(), nullable=False),
        sa.Column("registry_repository", sa.String(length=1024), nullable=False),
        sa.Column("cosign_identity_regexp", sa.Text(), nullable=False),
        sa.Column("cosign_oidc_issuer", sa.String(length=1024), nullable=False),
        sa.Column("trusted_root", sa.Text(), nullable=True),
        sa.Column("default_publication_id", sa.Integer(), nullable=True),
        sa.Column("retention_routine_days", sa.Integer(), nullable=False),
        sa.Column("retention_critical_days", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_platforms")),
        sa.UniqueConstraint("name", name=op.f("uq_node_platforms_name")),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("task_id", name=op.f("uq_tasks_task_id")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_kind"), ["kind"], unique=False)

    op.create_table(
        "disk_image_publications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("reference", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_reason", sa.String(length=64), nullable=True),
        sa.Column("failure_detail", sa.Text(), nullable=True),
        sa.Column("manifest_digest", sa.String(length=128), nullable=False),
        sa.Column("composefs_digest", sa.String(length=128), nullable=True),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        sa.Column("signer_identity", sa.String(length=1024), nullable=True),
        sa.Column("signer_issuer", sa.String(length=1024), nullable=True),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=True),
        sa.Column("delivery_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["platform_id"],
            ["node_platforms.id"],
            name=op.f("fk_disk_image_publications_platform_id_node_platforms"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disk_image_publications")),
        sa.UniqueConstraint(
            "platform_id",
            "manifest_digest",
            name=op.f("uq_disk_image_publications_platform_id_manifest_digest"),
        ),
    )
    with op.batch_alter_table("disk_image_publications", schema=None) as batch_op:
        batch_op.create_index(
            "ix_disk_image_publications_platform_status_created",
            ["platform_id", "status", "created_at"],
            unique=False,
        )

    # node_platforms and disk_image_publications refer to each other: this foreign key comes last.
    with op.batch_alter_table("node_platforms", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_node_platforms_default_publication_id_disk_image_publications"),
            "disk_image_publications",
            ["default_publication_id"],
            ["id"],
            ondelete="SET NULL",
        )

    op.create_table(
        "disk_image_webhooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=1024), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("secret_fingerprint", sa.String(length=128), nullable=False),
        sa.Column("previous_secret_encrypted", sa.Text(), nullable=True),
        sa.Column("previous_valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["platform_id"],
            ["node_platforms.id"],
            name=op.f("fk_disk_image_webhooks_platform_id_node_platforms"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disk_image_webhooks")),
        sa.UniqueConstraint("platform_id", name=op.f("uq_disk_image_webhooks_platform_id")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("platform_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["platform_id"],
            ["node_platforms.id"],
            name=op.f("fk_events_platform_id_node_platforms"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_created_at"), ["created_at"], unique=False)
        batch_op.create_index("ix_events_platform_created", ["platform_id", "created_at"], unique=False)
        batch_op.create_index("ix_events_type_created", ["type", "created_at"], unique=False)

    op.create_table(
        "node_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("mac_addresses", sa.JSON(), nullable=False),
        sa.Column("platform_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("provider_id", sa.String(length=255), nullable=True),
        sa.Column("modules", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("last_report", sa.JSON(), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["platform_id"],
            ["node_platforms.id"],
            name=op.f("fk_node_instances_platform_id_node_platforms"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_instances")),
    )
    with op.batch_alter_table("node_instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_instances_platform_id"), ["platform_id"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.String(length=64), nullable=False),
        sa.Column("platform_id", sa.Integer(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("publication_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["platform_id"],
            ["node_platforms.id"],
            name=op.f("fk_webhook_deliveries_platform_id_node_platforms"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["publication_id"],
            ["disk_image_publications.id"],
            name=op.f("fk_webhook_deliveries_publication_id_disk_image_publications"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("delivery_id", name=op.f("uq_webhook_deliveries_delivery_id")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_platform_id"), ["platform_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_platform_id"))

    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("node_instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_instances_platform_id"))

    op.drop_table("node_instances")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_type_created")
        batch_op.drop_index("ix_events_platform_created")
        batch_op.drop_index(batch_op.f("ix_events_created_at"))

    op.drop_table("events")
    op.drop_table("disk_image_webhooks")
    with op.batch_alter_table("disk_image_publications", schema=None) as batch_op:
        batch_op.drop_index("ix_disk_image_publications_platform_status_created")

    with op.batch_alter_table("node_platforms", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_node_platforms_default_publication_id_disk_image_publications"), type_="foreignkey"
        )
    op.drop_table("disk_image_publications")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_kind"))

    op.drop_table("tasks")
    op.drop_table("node_platforms")
    op.drop_table("api_tokens")
