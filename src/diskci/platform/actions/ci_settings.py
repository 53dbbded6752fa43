"""A platform's CI settings: its image-build repository, the workflow's variables, the push-webhook secret.

``system_configure_disk_image_ci`` checks the repository with ``git ls-remote`` before storing it (a
repository the platform cannot read is refused, with git's reason), replaces the variables when given
(names ``[A-Z_][A-Z0-9_]*``, string values, bounded), and on first configuration, or when asked
(``rotate_push_secret``), makes the secret that signs the repository's push webhooks: shown only in
that answer, stored encrypted (``diskci.platform.secrets``, bound to the platform), with the URL the
repository's webhook (or ``diskci ci hook``) posts to.

The CI backend: ``ci_backend`` ``embedded`` (the default: this platform schedules runs on its own
workers) or ``gitea`` (Gitea Actions at ``gitea_url``, repository ``gitea_repository`` "owner/name",
through an access token ``gitea_token``: write-only, stored encrypted, answered as ``has_gitea_token``).
Before a Gitea setting is stored, Gitea is asked its version and for the repository's Actions runs
with that token (1.25 or later is needed): an unknown repository or a refused token is a 400 naming
the field, an unreachable Gitea a 503, and nothing is stored. Switching to gitea makes the secret
Gitea's own webhooks (``workflow_run``, ``workflow_job``, ``push``) are signed with, shown once, with the
URL to configure in Gitea (``<ci_base_url>/api/v1/ci/gitea/<platform>``; ``rotate_gitea_webhook_secret``
makes a new one).
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from diskci.errors import InvalidRequest
from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.actions.events import record_event
from diskci.platform.actions.platforms import get_platform
from diskci.platform.ci import gitea_runs
from diskci.platform.ci.gitsource import check_repository
from diskci.platform.db.models import NodePlatform, Role
from diskci.platform.gitea.answers import GiteaNotFound, GiteaTokenRefused, GiteaUnsupported
from diskci.platform.gitea.platform_client import (
    client_for,
    repository_of,
    token_purpose,
    webhook_secret_of,
    webhook_secret_purpose,
)
from diskci.platform.secrets import SecretBox, fingerprint, generate_secret

__all__ = [
    "GITEA_HOOK_PATH",
    "MAX_VARIABLES",
    "PUSH_PATH",
    "InvalidCiVariables",
    "gitea_hook_url",
    "push_secret",
    "push_secret_purpose",
    "push_url",
]

PUSH_PATH = "/api/v1/ci/push/{platform_name}"
GITEA_HOOK_PATH = "/api/v1/ci/gitea/{platform_name}"
_GITEA_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
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


def gitea_hook_url(base_url: str, platform_name: str) -> str:
    return base_url + GITEA_HOOK_PATH.format(platform_name=platform_name)


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
    ci_backend: Literal["embedded", "gitea"] | None = Field(
        default=None,
        description="Where runs go: embedded (the default: this platform's own workers) or gitea (Gitea"
        " Actions through its REST API); unchanged when omitted.",
    )
    gitea_url: str | None = Field(
        default=None, max_length=1024, description="The Gitea server's root URL (http or https)."
    )
    gitea_repository: str | None = Field(
        default=None, max_length=255, description='The Gitea repository runs are dispatched in: "owner/name".'
    )
    gitea_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="A Gitea access token (write:repository): stored encrypted, never shown.",
    )
    rotate_gitea_webhook_secret: bool = Field(
        default=False, description="Make a new secret for Gitea's own webhooks (the old one stops working)."
    )

    @field_validator("gitea_url")
    @classmethod
    def _gitea_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value[:80]!r} is not an http(s) URL of a Gitea server")
        return value.strip().rstrip("/")

    @field_validator("gitea_repository")
    @classmethod
    def _gitea_repository(cls, value: str | None) -> str | None:
        if value is not None and not _GITEA_REPOSITORY.match(value):
            raise ValueError(f"{value[:80]!r} is not a Gitea repository as owner/name")
        return value

    @field_validator("gitea_token")
    @classmethod
    def _gitea_token(cls, value: str | None) -> str | None:
        if value is not None and (not value.isascii() or any(c.isspace() for c in value)):
            raise ValueError("a Gitea token is one word of printable ASCII")
        return value


class ConfigureCiOutput(ActionModel):
    node_platform: str
    image_build_repository: str | None
    ci_variables: dict[str, str]
    push_url: str = Field(description="Where the repository's push webhook (or diskci ci hook) posts.")
    push_secret: str | None = Field(
        description="Shown only now, when made or rotated: the push webhook's HMAC-SHA256 secret."
    )
    push_secret_fingerprint: str | None
    ci_backend: str = Field(description="embedded or gitea")
    gitea_url: str | None = None
    gitea_repository: str | None = None
    has_gitea_token: bool = Field(default=False, description="a Gitea token is stored (it is never shown)")
    gitea_webhook_url: str | None = Field(
        default=None, description="gitea: where Gitea's webhooks (workflow_run, workflow_job, push) post."
    )
    gitea_webhook_secret: str | None = Field(
        default=None, description="Shown only now, when made or rotated: the Gitea webhooks' secret."
    )
    gitea_webhook_secret_fingerprint: str | None = None


@action("system_configure_disk_image_ci", ConfigureCiInput, ConfigureCiOutput, Role.OPERATOR)
def system_configure_disk_image_ci(ctx: ActionContext, data: ConfigureCiInput) -> ConfigureCiOutput:
    """Set a platform's image-build repository, CI variables, push-webhook secret (shown once) and CI backend.

    ci_backend gitea needs gitea_url, gitea_repository and gitea_token (write-only); Gitea is asked
    before anything is stored, and the secret of Gitea's own webhooks is shown once.

    Example: {"node_platform": "debian-12-amd64", "image_build_repository": "https://git.example/ops/images.git",
    "ci_variables": {"DISKCI_REGISTRY": "127.0.0.1:5000"}}
    Example: {"node_platform": "debian-12-amd64", "ci_backend": "gitea", "gitea_url": "https://gitea.example",
    "gitea_repository": "ops/images", "gitea_token": "..."}
    """
    variables = check_variables(data.ci_variables) if data.ci_variables is not None else None
    if data.image_build_repository is not None:
        check_repository(data.image_build_repository)  # before the platform's row is touched
    _check_backend(ctx, data)  # Gitea is asked before the write transaction begins
    platform = get_platform(ctx.session, data.node_platform)
    changed = _set_backend(ctx, platform, data)
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
    hook_secret: str | None = None
    gitea = platform.ci_backend == "gitea"
    if gitea and (data.rotate_gitea_webhook_secret or platform.gitea_webhook_secret_encrypted is None):
        hook_secret = generate_secret()
        purpose = webhook_secret_purpose(platform.id)
        platform.gitea_webhook_secret_encrypted = ctx.box.encrypt(hook_secret, purpose=purpose)
        changed.append("gitea_webhook_secret")
    platform.updated_at = ctx.now
    ctx.session.flush()
    current = secret if secret is not None else push_secret(platform, ctx.box)
    current_hook = (
        hook_secret if hook_secret is not None else (webhook_secret_of(platform, ctx.box) if gitea else None)
    )
    record_event(
        ctx.session,
        "disk_image_ci_configured",
        platform=platform,
        subject=platform.name,
        payload={
            "actor": ctx.actor,
            "changed": changed,
            "push_secret_fingerprint": fingerprint(current) if current else None,
            "ci_backend": platform.ci_backend,
            "gitea_webhook_secret_fingerprint": fingerprint(current_hook) if current_hook else None,
        },
    )
    return ConfigureCiOutput(
        node_platform=platform.name,
        image_build_repository=platform.image_build_repository,
        ci_variables=dict(platform.ci_variables or {}),
        push_url=push_url(ctx.settings.ci_base_url, platform.name),
        push_secret=secret,
        push_secret_fingerprint=fingerprint(current) if current else None,
        ci_backend=platform.ci_backend,
        gitea_url=platform.gitea_url,
        gitea_repository=platform.gitea_repository,
        has_gitea_token=platform.gitea_token_encrypted is not None,
        gitea_webhook_url=gitea_hook_url(ctx.settings.ci_base_url, platform.name) if gitea else None,
        gitea_webhook_secret=hook_secret,
        gitea_webhook_secret_fingerprint=fingerprint(current_hook) if current_hook else None,
    )


def _check_backend(ctx: ActionContext, data: ConfigureCiInput) -> None:
    """The backend fields applied to the platform as a read session has it (never stored), and a Gitea
    setting checked against Gitea there: before the action's write transaction begins, so no database
    lock is held while Gitea answers."""
    if ctx.database is None:
        return
    with ctx.database.read_session() as session:
        platform = get_platform(session, data.node_platform)
        if _set_backend(ctx, platform, data) and platform.ci_backend == "gitea":
            _check_gitea(platform, ctx.box)


def _set_backend(ctx: ActionContext, platform: NodePlatform, data: ConfigureCiInput) -> list[str]:
    """Apply the CI backend fields to ``platform``; which changed. A gitea backend needs a URL, a
    repository and a token, given or stored."""
    changed: list[str] = []
    for name in ("ci_backend", "gitea_url", "gitea_repository"):
        value = getattr(data, name)
        if value is not None and getattr(platform, name) != value:
            setattr(platform, name, value)
            changed.append(name)
    if data.gitea_token is not None:
        platform.gitea_token_encrypted = ctx.box.encrypt(data.gitea_token, purpose=token_purpose(platform.id))
        changed.append("gitea_token")
    if platform.ci_backend != "gitea":
        return changed
    missing = [name for name in ("gitea_url", "gitea_repository") if not getattr(platform, name)]
    if platform.gitea_token_encrypted is None:
        missing.append("gitea_token")
    if missing:
        raise InvalidRequest(
            f"ci_backend gitea needs {', '.join(missing)} (not given, and none stored)",
            hint='e.g. {"ci_backend": "gitea", "gitea_url": "https://gitea.example", '
            '"gitea_repository": "ops/images", "gitea_token": "..."}',
        )
    return changed


def _check_gitea(platform: NodePlatform, box: SecretBox) -> None:
    """Gitea answers with the platform's token: its version, and the repository's Actions runs."""
    owner, name = repository_of(platform)
    where = f"Gitea at {platform.gitea_url}"
    with client_for(platform, box, timeout=gitea_runs.CALLS.timeout) as gitea:
        gitea.retry = gitea_runs.CALLS.retry
        try:
            gitea.version()
            gitea.list_runs(owner, name, max_runs=1)
        except GiteaTokenRefused as exc:
            raise InvalidRequest(f"gitea_token: {where} refused it: {exc.gitea_message}") from exc
        except GiteaNotFound as exc:
            raise InvalidRequest(
                f"gitea_repository {platform.gitea_repository!r}: {where} has no such repository"
                f" visible to this token ({exc.gitea_message})"
            ) from exc
        except GiteaUnsupported as exc:
            raise InvalidRequest(
                f"gitea_url: {where} is Gitea {gitea.version()}, without the Actions runs API;"
                " the gitea backend needs 1.25 or later"
            ) from exc
