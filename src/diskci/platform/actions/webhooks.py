"""Disk image webhooks: the per-platform HMAC secret, provisioned (and rotated) and listed.

The secret is shown once, when provisioned; the database keeps it encrypted (``diskci.platform.secrets``)
with a public fingerprint. Provisioning again rotates it: the previous secret stays valid for
``settings.webhook_grace_seconds`` so deliveries signed just before the rotation still arrive. Rotating
again inside that window is destructive (the previous secret stops working at once): it is confirmed
like any destructive action, its preview naming the secret that would stop working.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import get_platform
from diskci.platform.db.models import DiskImageWebhook, NodePlatform, Role
from diskci.platform.secrets import SecretBox, fingerprint, generate_secret

WEBHOOK_PATH = "/api/v1/system/webhooks/disk_image_built"
MIN_SECRET_LENGTH = 32


def secret_purpose(platform_id: int) -> str:
    return f"disk_image_webhook:{platform_id}"


def valid_secrets(webhook: DiskImageWebhook, box: SecretBox, now: datetime) -> list[str]:
    """The secrets a delivery may be signed with now: the current one, and the previous in its grace."""
    purpose = secret_purpose(webhook.platform_id)
    secrets = [box.decrypt(webhook.secret_encrypted, purpose=purpose)]
    if (
        webhook.previous_secret_encrypted is not None
        and webhook.previous_valid_until is not None
        and now < webhook.previous_valid_until
    ):
        secrets.append(box.decrypt(webhook.previous_secret_encrypted, purpose=purpose))
    return secrets


def webhook_for(session: Session, platform_name: str) -> DiskImageWebhook | None:
    return session.scalar(
        select(DiskImageWebhook)
        .join(NodePlatform, DiskImageWebhook.platform_id == NodePlatform.id)
        .where(NodePlatform.name == platform_name)
    )


class ProvisionWebhookInput(ActionModel):
    platform: str
    url: str | None = Field(default=None, description="Where CI posts; default: this platform's receiver.")
    secret: str | None = Field(
        default=None, min_length=MIN_SECRET_LENGTH, description="Use this secret instead of generating one."
    )


class ProvisionWebhookOutput(ActionModel):
    platform: str
    url: str
    secret: str = Field(description="Shown only now: give it to CI as DISKCI_WEBHOOK_SECRET.")
    secret_fingerprint: str
    rotated: bool
    previous_fingerprint: str | None
    previous_valid_until: datetime | None


def _in_grace(ctx: ActionContext, webhook: DiskImageWebhook | None) -> bool:
    return (
        webhook is not None
        and webhook.previous_secret_encrypted is not None
        and webhook.previous_valid_until is not None
        and ctx.now < webhook.previous_valid_until
    )


def rotation_drops_a_secret(ctx: ActionContext, data: ProvisionWebhookInput) -> bool:
    """A rotation while the previous secret is still in its grace window ends that secret at once."""
    return _in_grace(ctx, webhook_for(ctx.session, get_platform(ctx.session, data.platform).name))


def preview_provision_disk_image_webhook(ctx: ActionContext, data: ProvisionWebhookInput) -> dict[str, Any]:
    """What provisioning would change: the secret that becomes previous, and the one that stops working."""
    platform = get_platform(ctx.session, data.platform)
    webhook = webhook_for(ctx.session, platform.name)
    if webhook is None:
        return {"platform": platform.name, "creates": "the platform's first webhook secret"}
    out: dict[str, Any] = {
        "platform": platform.name,
        "becomes_previous": {
            "fingerprint": webhook.secret_fingerprint,
            "valid_until": (ctx.now + timedelta(seconds=ctx.settings.webhook_grace_seconds)).isoformat(),
        },
    }
    if _in_grace(ctx, webhook):
        assert webhook.previous_valid_until is not None
        out["stops_working_now"] = {
            "fingerprint": fingerprint(
                ctx.box.decrypt(webhook.previous_secret_encrypted or "", purpose=secret_purpose(platform.id))
            ),
            "was_valid_until": webhook.previous_valid_until.isoformat(),
            "why": "it is the previous secret, still in its grace window: deliveries signed with it "
            "are refused from now on",
        }
    return out


@action(
    "provision_disk_image_webhook",
    ProvisionWebhookInput,
    ProvisionWebhookOutput,
    Role.ADMIN,
    preview=preview_provision_disk_image_webhook,
    destructive_when=rotation_drops_a_secret,
    destructive_note="when it rotates a secret whose previous one is still in its grace window "
    "(that one stops working at once)",
)
def provision_disk_image_webhook(ctx: ActionContext, data: ProvisionWebhookInput) -> ProvisionWebhookOutput:
    """Create a platform's webhook secret, or rotate it (the previous one stays valid for a grace window).

    Example: {"platform": "debian-12-amd64"}
    """
    platform = get_platform(ctx.session, data.platform)
    secret = data.secret or generate_secret()
    purpose = secret_purpose(platform.id)
    url = data.url or f"{ctx.settings.ci_base_url}{WEBHOOK_PATH}"
    webhook = ctx.session.scalar(select(DiskImageWebhook).where(DiskImageWebhook.platform_id == platform.id))
    previous_fp: str | None = None
    if webhook is None:
        webhook = DiskImageWebhook(
            platform_id=platform.id,
            url=url,
            secret_encrypted=ctx.box.encrypt(secret, purpose=purpose),
            secret_fingerprint=fingerprint(secret),
            created_at=ctx.now,
        )
        ctx.session.add(webhook)
        rotated = False
    else:
        previous_fp = webhook.secret_fingerprint
        webhook.previous_secret_encrypted = webhook.secret_encrypted
        webhook.previous_valid_until = ctx.now + timedelta(seconds=ctx.settings.webhook_grace_seconds)
        webhook.secret_encrypted = ctx.box.encrypt(secret, purpose=purpose)
        webhook.secret_fingerprint = fingerprint(secret)
        webhook.rotated_at = ctx.now
        if data.url is not None:
            webhook.url = url
        rotated = True
    ctx.session.flush()
    record_event(
        ctx.session,
        "disk_image_webhook_rotated" if rotated else "disk_image_webhook_provisioned",
        platform=platform,
        subject=platform.name,
        payload={"actor": ctx.actor, "fingerprint": webhook.secret_fingerprint, "previous": previous_fp},
    )
    return ProvisionWebhookOutput(
        platform=platform.name,
        url=webhook.url,
        secret=secret,
        secret_fingerprint=webhook.secret_fingerprint,
        rotated=rotated,
        previous_fingerprint=previous_fp,
        previous_valid_until=webhook.previous_valid_until if rotated else None,
    )


class WebhookOut(ActionModel):
    platform: str
    url: str
    secret_fingerprint: str
    created_at: datetime
    rotated_at: datetime | None
    previous_valid_until: datetime | None


class ListWebhooksInput(ActionModel):
    platform: str | None = None


class ListWebhooksOutput(ActionModel):
    webhooks: list[WebhookOut]


@action(
    "system_list_disk_image_webhooks", ListWebhooksInput, ListWebhooksOutput, Role.OPERATOR, read_only=True
)
def system_list_disk_image_webhooks(ctx: ActionContext, data: ListWebhooksInput) -> ListWebhooksOutput:
    """List the platforms' webhooks with their secret fingerprints (never the secrets).

    Example: {"platform": "debian-12-amd64"}
    """
    query = select(DiskImageWebhook).join(NodePlatform, DiskImageWebhook.platform_id == NodePlatform.id)
    if data.platform:
        query = query.where(NodePlatform.id == get_platform(ctx.session, data.platform).id)
    rows = ctx.session.scalars(query.order_by(NodePlatform.name)).unique()
    return ListWebhooksOutput(
        webhooks=[
            WebhookOut(
                platform=w.platform.name,
                url=w.url,
                secret_fingerprint=w.secret_fingerprint,
                created_at=w.created_at,
                rotated_at=w.rotated_at,
                previous_valid_until=w.previous_valid_until,
            )
            for w in rows
        ]
    )
