"""A Gitea-backed NodePlatform's Gitea: its client (the server URL and the access token, decrypted only
here), its repository as owner and name, and the secret its Gitea webhooks are signed with.

The token and the webhook secret are kept encrypted in the platform's row (``SecretBox``, a purpose per
platform, as the push and disk image webhook secrets are); nothing else decrypts them.
"""

from __future__ import annotations

from diskci.errors import InvalidRequest
from diskci.platform.db.models import NodePlatform
from diskci.platform.gitea.client import GiteaClient
from diskci.platform.gitea.models import RunnerScope
from diskci.platform.secrets import SecretBox

CI_BACKENDS = ("embedded", "gitea")


class NotGiteaBacked(InvalidRequest):
    """A Gitea call for a platform whose CI backend is not Gitea (or whose Gitea is not configured)."""


def token_purpose(platform_id: int) -> str:
    return f"gitea_token:{platform_id}"


def webhook_secret_purpose(platform_id: int) -> str:
    return f"gitea_webhook:{platform_id}"


def is_gitea_backed(platform: NodePlatform) -> bool:
    return platform.ci_backend == "gitea"


def repository_of(platform: NodePlatform) -> tuple[str, str]:
    """The platform's Gitea repository as (owner, name)."""
    _check(platform)
    assert platform.gitea_repository is not None
    owner, _, name = platform.gitea_repository.partition("/")
    return owner, name


def runner_scope(platform: NodePlatform) -> RunnerScope:
    """Where the platform's CI workers register: its repository's runners."""
    return RunnerScope.repository(*repository_of(platform))


def client_for(platform: NodePlatform, box: SecretBox, *, timeout: float = 15.0) -> GiteaClient:
    """A client of the platform's Gitea, authenticated with its access token (close it after use)."""
    _check(platform)
    assert platform.gitea_url is not None and platform.gitea_token_encrypted is not None
    token = box.decrypt(platform.gitea_token_encrypted, purpose=token_purpose(platform.id))
    return GiteaClient(platform.gitea_url, token, timeout=timeout)


def webhook_secret_of(platform: NodePlatform, box: SecretBox) -> str:
    """The secret the platform's Gitea webhooks are signed with (``X-Gitea-Signature``)."""
    _check(platform)
    if platform.gitea_webhook_secret_encrypted is None:
        raise NotGiteaBacked(f"node platform {platform.name!r} has no Gitea webhook secret")
    return box.decrypt(platform.gitea_webhook_secret_encrypted, purpose=webhook_secret_purpose(platform.id))


def _check(platform: NodePlatform) -> None:
    if not is_gitea_backed(platform):
        raise NotGiteaBacked(
            f"node platform {platform.name!r} uses the {platform.ci_backend} CI backend, not gitea",
            hint="system_configure_disk_image_ci: ci_backend gitea, gitea_url, gitea_repository, gitea_token",
        )
    if not (platform.gitea_url and platform.gitea_repository and platform.gitea_token_encrypted):
        raise NotGiteaBacked(f"node platform {platform.name!r} has no Gitea server, repository or token")
