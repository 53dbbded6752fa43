"""A platform's CI settings: its image-build repository, the workflow's variables, the push-webhook secret.

``system_configure_disk_image_ci`` checks the repository with ``git ls-remote`` before storing it (a
repository the platform cannot read is refused, with git's reason), replaces the variables when given
(names ``[A-Z_][A-Z0-9_]*``, string values, bounded), and on first configuration, or when asked
(``rotate_push_secret``), makes the secret that signs the repository's push webhooks: shown only in
that answer, stored encrypted (``diskci.platform.secrets``, bound to the platform), with the URL the
repository's webhook (or ``diskci ci hook``) posts to.
"""

from __future__ import annotations

import re

from pydantic import Field

from diskci.errors import InvalidRequest
from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import get_platform
from diskci.platform.ci.gitsource import check_repository
from diskci.platform.db.models import NodePlatform, Role
from diskci.platform.secrets import SecretBox, fingerprint, generate_secret

__all__ = [
    "MAX_VARIABLES",
    "PUSH_PATH",
    "InvalidCiVariables",
    "push_secret",
    "push_secret_purpose",
    "push_url",
]

PUSH_PATH = "/api/v1/ci/push/{platform_name}"
MAX_VARIABLES = 64
MAX_VARIABLE_NAME = 128
MAX_VARIABLE_VALUE = 4096
_VARIABLE_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class InvalidCiVariables(InvalidRequest):
    """CI variables with a bad name, a value too long, or too many of them."""


def push_secret_purpose(platform_id: int) -> str:
    return f"ci_push_secret:{platform_id}"


def push_url(base_url: str, platform_name: str) -> str:
    return base_url + PUSH_PATH.format(platform_name=platform_name)


def push_secret(platform: NodePlatform, box: SecretBox) -> str | None:
    """The platform's push-webhook secret in clear (None when it has none)."""
    if platform.push_secret_encrypted is None:
        return None
    return box.decrypt(platform.push_secret_encrypted, purpose=push_secret_purpose(platform.id))


def check_variables(variables: dict[str, str]) -> dict[str, str]:
    if len(variables) > MAX_VARIABLES:
        raise InvalidCiVariables(f"{len(variables)} CI variables: at most {MAX_VARIABLES}")
    for name, value in variables.items():
        if len(name) > MAX_VARIABLE_NAME or not _VARIABLE_NAME.match(name):
            raise InvalidCiVariables(
                f"CI variable name {name[:80]!r}: upper-case letters, digits and _ (not first a digit),"
                f" at most {MAX_VARIABLE_NAME} characters"
            )
        if len(value) > MAX_VARIABLE_VALUE:
            raise InvalidCiVariables(
                f"CI variable {name}: its value has {len(value)} characters, at most {MAX_VARIABLE_VALUE}"
            )
    return dict(sorted(variables.items()))


class ConfigureCiInput(ActionModel):
    node_platform: str = Field(min_length=1, max_length=128, description="The platform's name.")
    image_build_repository: str | None = Field(
        default=None,
        max_length=1024,
        description="Git URL or absolute path of the repository holding platforms/ and .gitea/workflows/"
        " (checked with git ls-remote); unchanged when omitted.",
    )
    ci_variables: dict[str, str] | None = Field(
        default=None,
        description="The workflow's vars (DISKCI_REGISTRY, DISKCI_AUTHORITY, ...): replace them all;"
        " unchanged when omitted.",
    )
    rotate_push_secret: bool = Field(
        default=False, description="Make a new push-webhook secret (the old one stops working at once)."
    )


class ConfigureCiOutput(ActionModel):
    node_platform: str
    image_build_repository: str | None
    ci_variables: dict[str, str]
    push_url: str = Field(description="Where the repository's push webhook (or diskci ci hook) posts.")
    push_secret: str | None = Field(
        description="Shown only now, when made or rotated: the push webhook's HMAC-SHA256 secret."
    )
    push_secret_fingerprint: str | None


@action("system_configure_disk_image_ci", ConfigureCiInput, ConfigureCiOutput, Role.OPERATOR)
def system_configure_disk_image_ci(ctx: ActionContext, data: ConfigureCiInput) -> ConfigureCiOutput:
    """Set a platform's image-build repository, CI variables and push-webhook secret (shown once).

    Example: {"node_platform": "debian-12-amd64", "image_build_repository": "https://git.example/ops/images.git",
    "ci_variables": {"DISKCI_REGISTRY": "127.0.0.1:5000"}}
    """
    variables = check_variables(data.ci_variables) if data.ci_variables is not None else None
    if data.image_build_repository is not None:
        check_repository(data.image_build_repository)  # before the platform's row is touched
    platform = get_platform(ctx.session, data.node_platform)
    changed: list[str] = []
    if data.image_build_repository is not None:
        platform.image_build_repository = data.image_build_repository
        changed.append("image_build_repository")
    if variables is not None:
        platform.ci_variables = variables
        changed.append("ci_variables")
    secret: str | None = None
    if data.rotate_push_secret or platform.push_secret_encrypted is None:
        secret = generate_secret()
        platform.push_secret_encrypted = ctx.box.encrypt(secret, purpose=push_secret_purpose(platform.id))
        changed.append("push_secret")
    platform.updated_at = ctx.now
    ctx.session.flush()
    current = secret if secret is not None else push_secret(platform, ctx.box)
    record_event(
        ctx.session,
        "disk_image_ci_configured",
        platform=platform,
        subject=platform.name,
        payload={
            "actor": ctx.actor,
            "changed": changed,
            "push_secret_fingerprint": fingerprint(current) if current else None,
        },
    )
    return ConfigureCiOutput(
        node_platform=platform.name,
        image_build_repository=platform.image_build_repository,
        ci_variables=dict(platform.ci_variables or {}),
        push_url=push_url(ctx.settings.ci_base_url, platform.name),
        push_secret=secret,
        push_secret_fingerprint=fingerprint(current) if current else None,
    )
