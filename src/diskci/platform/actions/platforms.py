"""Node platforms: create, update (the signer policy checked at configuration time), list, get."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from diskci.errors import Conflict, InvalidRequest, NotFound
from diskci.platform.actions.catalog import ActionContext, ActionModel, Empty, action
from diskci.platform.actions.events import record_event
from diskci.platform.db.models import NodePlatform, Role
from diskci.spec import Architecture

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
# OCI distribution spec: repository path components, optionally after host[:port].
_REPO_PATH = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
_REGISTRY_REPOSITORY = re.compile(rf"^(?P<host>[A-Za-z0-9.-]+(?::[0-9]+)?)/(?P<path>{_REPO_PATH})$")
# Identities a signer policy must never accept (deny by default): a policy matching these matches anyone.
_FOREIGN_IDENTITIES = (
    "",
    "attacker@evil.invalid",
    "https://evil.invalid/attacker/repo/.forgejo/workflows/build.yml@refs/heads/main",
)


class PlatformNotFound(NotFound):
    pass


class PlatformExists(Conflict):
    pass


class InvalidPlatform(InvalidRequest):
    pass


def get_platform(session: Session, name: str) -> NodePlatform:
    platform = session.scalar(select(NodePlatform).where(NodePlatform.name == name))
    if platform is None:
        raise PlatformNotFound(f"no node platform named {name!r}")
    return platform


def check_identity_regexp(pattern: str) -> str:
    """Compile the signer identity regexp and refuse one that is unanchored or matches anyone."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise InvalidPlatform(f"cosign_identity_regexp {pattern!r} does not compile: {exc}") from exc
    if not pattern.startswith("^") or not (pattern.endswith("$") or pattern.endswith(r"\Z")):
        raise InvalidPlatform(
            f"cosign_identity_regexp {pattern!r} must be anchored with ^ and $",
            hint="An unanchored pattern accepts any identity that merely contains it.",
        )
    for identity in _FOREIGN_IDENTITIES:
        if compiled.fullmatch(identity) or compiled.search(identity):
            raise InvalidPlatform(
                f"cosign_identity_regexp {pattern!r} accepts the foreign identity {identity!r}: too broad"
            )
    return pattern


def check_issuer(issuer: str) -> str:
    if not re.match(r"^https?://[^\s/]+", issuer):
        raise InvalidPlatform(f"cosign_oidc_issuer {issuer!r} must be an http(s) URL")
    return issuer


def check_registry_repository(reference: str) -> str:
    if reference.startswith("oci-layout:"):
        path = reference.removeprefix("oci-layout:")
        if not path.startswith("/"):
            raise InvalidPlatform(f"registry_repository {reference!r}: an OCI layout needs an absolute path")
        return reference
    if not _REGISTRY_REPOSITORY.match(reference):
        raise InvalidPlatform(
            f"registry_repository {reference!r} is not host[:port]/path/name (lower-case, no tag or digest)"
            " nor oci-layout:/absolute/path"
        )
    return reference


def check_trusted_root(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidPlatform(f"trusted_root is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidPlatform("trusted_root must be a JSON object (a sigstore TrustedRoot)")
    return text


def _field_rule(check: Callable[[str], str]) -> AfterValidator:
    """``check`` as a field validator: its refusal becomes the field's validation error, so one call
    with several bad fields hears of every one of them (pydantic collects them all)."""

    def run(value: str) -> str:
        try:
            return check(value)
        except InvalidPlatform as exc:
            raise ValueError(exc.diagnostics().replace("\n", " ")) from None

    return AfterValidator(run)


RegistryRepository = Annotated[str, _field_rule(check_registry_repository)]
IdentityRegexp = Annotated[str, _field_rule(check_identity_regexp)]
OidcIssuer = Annotated[str, _field_rule(check_issuer)]
TrustedRootText = Annotated[str, _field_rule(lambda text: check_trusted_root(text) or text)]


class NodePlatformOut(ActionModel):
    name: str
    description: str
    architectures: list[str]
    registry_repository: str
    cosign_identity_regexp: str
    cosign_oidc_issuer: str
    has_trusted_root: bool
    default_publication_id: int | None
    retention_routine_days: int
    retention_critical_days: int
    created_at: datetime
    updated_at: datetime
    image_build_repository: str | None = None
    ci_variables: dict[str, str] = Field(default_factory=dict)
    has_push_secret: bool = False

    @classmethod
    def of(cls, p: NodePlatform) -> NodePlatformOut:
        return cls(
            name=p.name,
            description=p.description,
            architectures=list(p.architectures),
            registry_repository=p.registry_repository,
            cosign_identity_regexp=p.cosign_identity_regexp,
            cosign_oidc_issuer=p.cosign_oidc_issuer,
            has_trusted_root=p.trusted_root is not None,
            default_publication_id=p.default_publication_id,
            retention_routine_days=p.retention_routine_days,
            retention_critical_days=p.retention_critical_days,
            created_at=p.created_at,
            updated_at=p.updated_at,
            image_build_repository=p.image_build_repository,
            ci_variables=dict(p.ci_variables or {}),
            has_push_secret=p.push_secret_encrypted is not None,
        )


class CreateNodePlatformInput(ActionModel):
    name: str = Field(pattern=NAME_PATTERN, description="e.g. debian-12-amd64")
    architectures: list[Architecture] = Field(min_length=1)
    registry_repository: RegistryRepository = Field(
        description="Reference prefix: 127.0.0.1:5000/ops/disk-images/debian-12-amd64 or oci-layout:/path"
    )
    cosign_identity_regexp: IdentityRegexp = Field(
        description="Anchored regexp the signer's identity must match."
    )
    cosign_oidc_issuer: OidcIssuer = Field(description="The OIDC issuer the signing certificate must name.")
    trusted_root: TrustedRootText | None = Field(
        default=None, description="sigstore TrustedRoot JSON (text)."
    )
    description: str = ""
    retention_routine_days: int = Field(default=90, ge=1, le=36500)
    retention_critical_days: int = Field(default=365, ge=1, le=36500)


@action("system_create_node_platform", CreateNodePlatformInput, NodePlatformOut, Role.ADMIN)
def system_create_node_platform(ctx: ActionContext, data: CreateNodePlatformInput) -> NodePlatformOut:
    """Create a node platform with its registry repository and signer policy.

    Example: {"name": "debian-12-amd64", "architectures": ["amd64"],
    "registry_repository": "127.0.0.1:5000/ops/disk-images/debian-12-amd64",
    "cosign_identity_regexp": "^https://ci\\.example/ops/images/.+$", "cosign_oidc_issuer": "https://ci.example"}
    """
    if ctx.session.scalar(select(NodePlatform.id).where(NodePlatform.name == data.name)) is not None:
        raise PlatformExists(f"a node platform named {data.name!r} already exists")
    platform = NodePlatform(
        name=data.name,
        description=data.description,
        architectures=sorted({a.value for a in data.architectures}),
        registry_repository=data.registry_repository,  # each checked by its field's type
        cosign_identity_regexp=data.cosign_identity_regexp,
        cosign_oidc_issuer=data.cosign_oidc_issuer,
        trusted_root=data.trusted_root,
        retention_routine_days=data.retention_routine_days,
        retention_critical_days=data.retention_critical_days,
        created_at=ctx.now,
        updated_at=ctx.now,
    )
    ctx.session.add(platform)
    ctx.session.flush()
    record_event(
        ctx.session,
        "node_platform_created",
        platform=platform,
        subject=platform.name,
        payload={"actor": ctx.actor},
    )
    return NodePlatformOut.of(platform)


class UpdateNodePlatformInput(ActionModel):
    name: str = Field(description="The platform to change.")
    architectures: list[Architecture] | None = Field(default=None, min_length=1)
    registry_repository: RegistryRepository | None = None
    cosign_identity_regexp: IdentityRegexp | None = None
    cosign_oidc_issuer: OidcIssuer | None = None
    trusted_root: TrustedRootText | None = None
    clear_trusted_root: bool = Field(default=False, description="Use the embedded authority's root again.")
    description: str | None = None


@action("system_update_node_platform", UpdateNodePlatformInput, NodePlatformOut, Role.ADMIN)
def system_update_node_platform(ctx: ActionContext, data: UpdateNodePlatformInput) -> NodePlatformOut:
    """Change a node platform; a new identity regexp is compiled and checked before it is stored.

    Example: {"name": "debian-12-amd64", "cosign_identity_regexp": "^https://ci\\.example/ops/.+$"}
    """
    platform = get_platform(ctx.session, data.name)
    changed: list[str] = []
    if data.architectures is not None:
        platform.architectures = sorted({a.value for a in data.architectures})
        changed.append("architectures")
    if data.registry_repository is not None:
        platform.registry_repository = data.registry_repository
        changed.append("registry_repository")
    if data.cosign_identity_regexp is not None:
        platform.cosign_identity_regexp = data.cosign_identity_regexp
        changed.append("cosign_identity_regexp")
    if data.cosign_oidc_issuer is not None:
        platform.cosign_oidc_issuer = data.cosign_oidc_issuer
        changed.append("cosign_oidc_issuer")
    if data.clear_trusted_root and data.trusted_root is not None:
        raise InvalidPlatform("give either trusted_root or clear_trusted_root, not both")
    if data.trusted_root is not None or data.clear_trusted_root:
        platform.trusted_root = data.trusted_root
        changed.append("trusted_root")
    if data.description is not None:
        platform.description = data.description
        changed.append("description")
    platform.updated_at = ctx.now
    ctx.session.flush()
    record_event(
        ctx.session,
        "node_platform_updated",
        platform=platform,
        subject=platform.name,
        payload={"actor": ctx.actor, "changed": changed},
    )
    return NodePlatformOut.of(platform)


class ListNodePlatformsOutput(ActionModel):
    platforms: list[NodePlatformOut]


@action("system_list_node_platforms", Empty, ListNodePlatformsOutput, Role.VIEWER, read_only=True)
def system_list_node_platforms(ctx: ActionContext, data: Empty) -> ListNodePlatformsOutput:
    """List every node platform, by name.

    Example: {}
    """
    rows = ctx.session.scalars(select(NodePlatform).order_by(NodePlatform.name))
    return ListNodePlatformsOutput(platforms=[NodePlatformOut.of(p) for p in rows])


class GetNodePlatformInput(ActionModel):
    name: str


@action("system_get_node_platform", GetNodePlatformInput, NodePlatformOut, Role.VIEWER, read_only=True)
def system_get_node_platform(ctx: ActionContext, data: GetNodePlatformInput) -> NodePlatformOut:
    """Show one node platform.

    Example: {"name": "debian-12-amd64"}
    """
    return NodePlatformOut.of(get_platform(ctx.session, data.name))
