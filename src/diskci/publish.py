"""sign → push → notify, the one sequence CLI, runners and platform call.

Public API: ``publish(PublishRequest(...)) -> PublishResult`` runs the whole sequence for a build
directory; ``publish_from_registry(AssembleRequest(...))`` runs it for a publication whose
architectures were built by separate CI jobs, each of which pushed its part (``push_build(...,
arch=A)``): it joins the parts already in the registry into the index, then signs, pushes and
notifies the same way. The pieces are ``open_authority(...)`` (the signing backend), ``sign_build(...)``,
``push_build(...)`` and ``notify_image_built(...)``. ``ci_environment(environ)`` reads what a CI job's
environment says (``GITHUB_*``, ``DISKCI_SOURCE_REPO``, ``ACTIONS_ID_TOKEN_REQUEST_URL`` and
``_TOKEN``, ``DISKCI_ID_TOKEN``, ``DISKCI_WEBHOOK_SECRET``) into a ``CIEnvironment``, so the functions
here take explicit values and never read ``os.environ`` themselves.

Who signs: with an authority directory, ``identity`` (or, in a CI job, the workflow's identity the
environment gives: ``default_identity``). With an authority URL (``diskci authority serve``), the CI
job's OIDC ID token: an explicit one, else one asked of the job's platform (audience ``sigstore``);
the certificate names the token's identity, and an ``identity`` that differs is an error before
anything is signed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from diskci import mediatypes as mt
from diskci.ci.workflow import WORKFLOW_PATH
from diskci.console import step
from diskci.errors import UsageError
from diskci.registry.publication import Publication
from diskci.registry.push import PushResult, push_planned, push_publication, signature_bundles

if TYPE_CHECKING:  # signing (sigstore) and notifying (httpx) are imported where they run: a CI job's
    # ``diskci push --arch`` step does neither, and would pay a second of imports for them
    from diskci.notify import Delivery
    from diskci.supplychain.bundle import SigningBackend, SignResult, Source, StatementSigner

__all__ = [
    "AssembleRequest",
    "CIEnvironment",
    "IdTokenRequest",
    "PublishRequest",
    "PublishResult",
    "ci_environment",
    "default_identity",
    "is_authority_url",
    "notify_image_built",
    "open_authority",
    "publish",
    "publish_from_registry",
    "push_build",
    "sign_build",
]

SOURCE_REPO_VAR = "DISKCI_SOURCE_REPO"
ID_TOKEN_VAR = "DISKCI_ID_TOKEN"
ID_TOKEN_REQUEST_URL_VAR = "ACTIONS_ID_TOKEN_REQUEST_URL"
ID_TOKEN_REQUEST_TOKEN_VAR = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
WEBHOOK_SECRET_VAR = "DISKCI_WEBHOOK_SECRET"
SIGSTORE_AUDIENCE = "sigstore"


@dataclass(frozen=True)
class IdTokenRequest:
    """Where a CI job asks its platform for ID tokens, and the job's runtime token that pays."""

    url: str
    runtime_token: str = field(repr=False)


@dataclass(frozen=True)
class CIEnvironment:
    """What a CI job's environment says about the build being published (empty strings when unset)."""

    source: Source
    run_id: str
    id_token: str = field(default="", repr=False)
    id_token_request: IdTokenRequest | None = None
    webhook_secret: str = field(default="", repr=False)


def _source_repo(environ: Mapping[str, str]) -> str:
    if environ.get(SOURCE_REPO_VAR):
        return environ[SOURCE_REPO_VAR]
    server, repo = environ.get("GITHUB_SERVER_URL"), environ.get("GITHUB_REPOSITORY")
    return f"{server.rstrip('/')}/{repo}" if server and repo else ""


def ci_environment(environ: Mapping[str, str] | None = None) -> CIEnvironment:
    """Read ``environ`` (default: ``os.environ``): the source repo (``DISKCI_SOURCE_REPO``, else
    ``GITHUB_SERVER_URL``/``GITHUB_REPOSITORY``), ``GITHUB_REF``, ``GITHUB_SHA``, ``GITHUB_RUN_ID``,
    an ID token ``DISKCI_ID_TOKEN``, where to ask for one (``ACTIONS_ID_TOKEN_REQUEST_URL`` and
    ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``, both set) and the webhook secret ``DISKCI_WEBHOOK_SECRET``."""
    from diskci.supplychain.bundle import Source

    env = os.environ if environ is None else environ
    request_url = env.get(ID_TOKEN_REQUEST_URL_VAR, "")
    request_token = env.get(ID_TOKEN_REQUEST_TOKEN_VAR, "")
    return CIEnvironment(
        source=Source(
            repo=_source_repo(env), ref=env.get("GITHUB_REF", ""), commit=env.get("GITHUB_SHA", "")
        ),
        run_id=env.get("GITHUB_RUN_ID", ""),
        id_token=env.get(ID_TOKEN_VAR, "").strip(),
        id_token_request=(
            IdTokenRequest(request_url, request_token) if request_url and request_token else None
        ),
        webhook_secret=env.get(WEBHOOK_SECRET_VAR, ""),
    )


def is_authority_url(authority: str) -> bool:
    return authority.startswith(("http://", "https://"))


def default_identity(authority: str, ci: CIEnvironment) -> str:
    """The identity to sign as when none is named: none for an authority URL (the ID token's), else
    the CI workflow's ``<repo URL>/.gitea/workflows/build.yaml@<ref>`` when the environment says."""
    if is_authority_url(authority) or not (ci.source.repo and ci.source.ref):
        return ""
    return f"{ci.source.repo}/{WORKFLOW_PATH}@{ci.source.ref}"


def open_authority(
    authority: str, *, id_token: str = "", id_token_request: IdTokenRequest | None = None
) -> SigningBackend | StatementSigner:
    """A local authority directory, or a Sigstore instance (``diskci authority serve``) at a URL,
    signed against with sigstore-python's signer and a CI job's ID token:
    ``id_token``, else one asked for at ``id_token_request`` (audience ``sigstore``)."""
    if is_authority_url(authority):
        from diskci.supplychain.sigstore_signer import SigstoreSigner

        token = id_token
        if not token and id_token_request is not None:
            from diskci.supplychain.id_token import request_id_token

            with step(f"ID token from {id_token_request.url}"):
                token = request_id_token(
                    id_token_request.url, id_token_request.runtime_token, audience=SIGSTORE_AUDIENCE
                )
        if not token:
            raise UsageError(
                f"--authority {authority} needs the CI job's OIDC ID token",
                hint=(
                    "run inside a CI job of the platform (ACTIONS_ID_TOKEN_REQUEST_URL and "
                    "ACTIONS_ID_TOKEN_REQUEST_TOKEN set), or pass --id-token / set DISKCI_ID_TOKEN"
                ),
            )
        return SigstoreSigner(authority, token)
    from diskci.supplychain.authority import SigningAuthority

    return SigningAuthority.open(Path(authority))


def _signing_identity(backend: SigningBackend | StatementSigner, identity: str, issuer: str | None) -> str:
    """The identity the certificate will name, checked against ``identity`` before anything is signed."""
    from diskci.supplychain.sigstore_signer import SigstoreSigner

    if isinstance(backend, SigstoreSigner):
        if identity and identity != backend.identity:
            raise UsageError(
                f"--identity {identity} is not the CI job's identity {backend.identity}: the "
                "certificate names the ID token's identity",
                hint="drop --identity, or give the one the job's token carries",
            )
        if issuer and issuer != backend.issuer:
            raise UsageError(
                f"--issuer {issuer} is not the ID token's issuer {backend.issuer}",
                hint="--issuer is for a local authority directory; drop it",
            )
        return backend.identity
    if not identity:
        raise UsageError(
            "signing with an authority directory needs --identity (the SAN the certificate names)"
        )
    return identity


def sign_build(
    build_dir: Path,
    *,
    authority: str,
    identity: str = "",
    issuer: str | None = None,
    id_token: str = "",
    id_token_request: IdTokenRequest | None = None,
    source: Source | None = None,
    run_id: str = "",
    planned: Publication | None = None,
) -> SignResult:
    """Sign ``build_dir``'s index digest and provenance with ``authority`` (see ``open_authority``)
    as ``identity`` (for an authority URL: the ID token's, which ``identity`` must be when given).

    ``planned``: sign that publication instead (one assembled from a registry), writing the
    signatures into ``build_dir``."""
    from diskci.supplychain.bundle import sign_publication

    backend = open_authority(authority, id_token=id_token, id_token_request=id_token_request)
    identity = _signing_identity(backend, identity, issuer)
    with step(f"sign {build_dir}"):
        return sign_publication(
            build_dir,
            authority=backend,
            identity=identity,
            issuer=issuer,
            source=source,
            run_id=run_id,
            planned=planned,
        )


def _push(build_dir: Path, to: str, title: str, arch: str | None = None) -> PushResult:
    with step(title) as s:
        return push_publication(build_dir, to, arch=arch, progress=s.update)


def push_build(build_dir: Path, *, to: str, arch: str | None = None) -> PushResult:
    """Push ``build_dir`` (signed or not) to ``to`` (``host/repo[:tag]`` or ``oci-layout:PATH[:tag]``).

    ``arch``: push only that architecture's part (tagged ``<tag>-<arch>``, unsigned), for the job that
    built it; ``publish_from_registry`` joins the parts into the publication.
    """
    where = f"{build_dir} ({arch})" if arch else str(build_dir)
    return _push(build_dir, to, f"push {where} → {to}", arch=arch)


_NEEDS_SECRET = "--notify-url needs --secret-file (or DISKCI_WEBHOOK_SECRET)"


def _read_secret(secret_file: Path) -> bytes:
    try:
        return secret_file.read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"{secret_file}: cannot read the webhook secret: {exc}") from None


def notify_image_built(
    url: str,
    *,
    ref: str,
    secret_file: Path | None = None,
    secret: str = "",
    source: Source | None = None,
    run_id: str = "",
    critical: bool = False,
    digest: str | None = None,
) -> Delivery:
    """POST the HMAC-signed ``disk_image_built`` webhook for the publication pushed at ``ref``.

    The HMAC secret is ``secret_file``'s content, else ``secret``. ``digest``: the index digest when
    known (else the one ``ref`` resolves to); platform and version come from the index's annotations.
    """
    if secret_file is None and not secret:
        raise UsageError(_NEEDS_SECRET)
    from diskci.notify import DiskImageBuilt, SourceRef, send_notification
    from diskci.registry import open_registry
    from diskci.registry.reference import Reference
    from diskci.supplychain.bundle import Source

    source = source or Source()
    reference = Reference.parse(ref)
    data, desc = open_registry(reference).get_manifest(digest or reference.target)
    annotations = json.loads(data).get("annotations") or {}
    key = _read_secret(secret_file) if secret_file is not None else secret.strip().encode()
    payload = DiskImageBuilt(
        node_platform=annotations.get(mt.ANNOTATION_PLATFORM, ""),
        version=annotations.get(mt.ANNOTATION_VERSION, reference.tag or ""),
        reference=str(reference),
        manifest_digest=desc.digest,
        source=SourceRef(repo=source.repo, ref=source.ref, commit=source.commit),
        run_id=run_id,
        critical=critical,
    )
    with step(f"notify {url}"):
        return send_notification(url, key, payload)


def _empty_source() -> Source:
    from diskci.supplychain.bundle import Source

    return Source()


@dataclass(frozen=True, kw_only=True)
class _Publishing:
    """What signing and notifying need, whatever is published; no notification when ``notify_url``
    is unset."""

    authority: str
    identity: str = ""
    issuer: str | None = None
    id_token: str = field(default="", repr=False)
    id_token_request: IdTokenRequest | None = None
    source: Source = field(default_factory=_empty_source)
    run_id: str = ""
    notify_url: str | None = None
    secret_file: Path | None = None
    secret: str = ""
    critical: bool = False

    def __post_init__(self) -> None:
        if self.notify_url and self.secret_file is None and not self.secret:
            raise UsageError(_NEEDS_SECRET)


@dataclass(frozen=True, kw_only=True)
class PublishRequest(_Publishing):
    """Everything ``publish`` needs: a build directory holding every architecture, and where to."""

    build_dir: Path
    to: str


@dataclass(frozen=True, kw_only=True)
class AssembleRequest(_Publishing):
    """Everything ``publish_from_registry`` needs: the publication ``ref`` (``host/repo:VERSION``)
    whose parts ``<VERSION>-<arch>`` the build jobs pushed, the ``arches`` to join, and ``work_dir``
    (receives the joined build.json and the signatures)."""

    ref: str
    arches: tuple[str, ...]
    work_dir: Path


@dataclass(frozen=True)
class PublishResult:
    signed: SignResult
    pushed: PushResult
    notified: Delivery | None


def _notify(request: _Publishing, pushed: PushResult) -> Delivery | None:
    if not request.notify_url:
        return None
    return notify_image_built(
        request.notify_url,
        ref=pushed.reference,
        secret_file=request.secret_file,
        secret=request.secret,
        source=request.source,
        run_id=request.run_id,
        critical=request.critical,
        digest=pushed.digest,
    )


def _sign(request: _Publishing, build_dir: Path, planned: Publication | None = None) -> SignResult:
    return sign_build(
        build_dir,
        authority=request.authority,
        identity=request.identity,
        issuer=request.issuer,
        id_token=request.id_token,
        id_token_request=request.id_token_request,
        source=request.source,
        run_id=request.run_id,
        planned=planned,
    )


def publish(request: PublishRequest) -> PublishResult:
    """Sign, push and (when ``request.notify_url`` is set) notify, in that order."""
    signed = _sign(request, request.build_dir)
    pushed = _push(request.build_dir, request.to, f"push → {request.to}")
    return PublishResult(signed=signed, pushed=pushed, notified=_notify(request, pushed))


def publish_from_registry(request: AssembleRequest) -> PublishResult:
    """Join the parts at ``request.ref`` into the publication, then sign, push it (its index and the
    joined build.json: the artifacts are there already) and notify, in that order."""
    from diskci.registry.assemble import plan_assembled

    with step(f"assemble {request.ref} from {', '.join(request.arches)}"):
        planned = plan_assembled(request.ref, list(request.arches), request.work_dir)
    signed = _sign(request, request.work_dir, planned)
    with step(f"push → {request.ref}") as s:
        pushed = push_planned(planned, request.ref, bundles=signature_bundles(planned), progress=s.update)
    return PublishResult(signed=signed, pushed=pushed, notified=_notify(request, pushed))
