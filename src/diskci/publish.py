"""sign → push → notify, the one sequence CLI, runners and platform call.

Public API: ``publish(PublishRequest(...)) -> PublishResult`` runs the whole sequence for a build
directory; ``publish_from_registry(AssembleRequest(...))`` runs it for a publication whose
architectures were built by separate CI jobs, each of which pushed its part (``push_build(...,
arch=A)``): it joins the parts already in the registry into the index, then signs, pushes and
notifies the same way. The pieces are ``open_authority(...)`` (the signing backend), ``sign_build(...)``,
``push_build(...)`` and ``notify_image_built(...)``. ``ci_environment(environ)`` reads what a CI job's
environment says (``GITHUB_*``, ``DISKCI_SOURCE_REPO``, ``DISKCI_AUTHORITY_TOKEN``,
``DISKCI_WEBHOOK_SECRET``) into a ``CIEnvironment``, so the functions here take explicit values and
never read ``os.environ`` themselves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from diskci import mediatypes as mt
from diskci.console import step
from diskci.errors import UsageError
from diskci.notify import Delivery, DiskImageBuilt, SourceRef, send_notification
from diskci.registry.publication import Publication
from diskci.registry.push import PushResult, push_planned, push_publication, signature_bundles
from diskci.supplychain.bundle import SigningBackend, SignResult, Source, sign_publication

__all__ = [
    "AssembleRequest",
    "CIEnvironment",
    "PublishRequest",
    "PublishResult",
    "ci_environment",
    "notify_image_built",
    "open_authority",
    "publish",
    "publish_from_registry",
    "push_build",
    "sign_build",
]

SOURCE_REPO_VAR = "DISKCI_SOURCE_REPO"
AUTHORITY_TOKEN_VAR = "DISKCI_AUTHORITY_TOKEN"
WEBHOOK_SECRET_VAR = "DISKCI_WEBHOOK_SECRET"


@dataclass(frozen=True)
class CIEnvironment:
    """What a CI job's environment says about the build being published (empty strings when unset)."""

    source: Source
    run_id: str
    authority_token: str
    webhook_secret: str = ""


def _source_repo(environ: Mapping[str, str]) -> str:
    if environ.get(SOURCE_REPO_VAR):
        return environ[SOURCE_REPO_VAR]
    server, repo = environ.get("GITHUB_SERVER_URL"), environ.get("GITHUB_REPOSITORY")
    return f"{server.rstrip('/')}/{repo}" if server and repo else ""


def ci_environment(environ: Mapping[str, str] | None = None) -> CIEnvironment:
    """Read ``environ`` (default: ``os.environ``): the source repo (``DISKCI_SOURCE_REPO``, else
    ``GITHUB_SERVER_URL``/``GITHUB_REPOSITORY``), ``GITHUB_REF``, ``GITHUB_SHA``, ``GITHUB_RUN_ID``,
    the signer credential ``DISKCI_AUTHORITY_TOKEN`` and the webhook secret ``DISKCI_WEBHOOK_SECRET``."""
    env = os.environ if environ is None else environ
    return CIEnvironment(
        source=Source(
            repo=_source_repo(env), ref=env.get("GITHUB_REF", ""), commit=env.get("GITHUB_SHA", "")
        ),
        run_id=env.get("GITHUB_RUN_ID", ""),
        authority_token=env.get(AUTHORITY_TOKEN_VAR, ""),
        webhook_secret=env.get(WEBHOOK_SECRET_VAR, ""),
    )


def open_authority(
    authority: str, *, credential: str = "", credential_file: Path | None = None
) -> SigningBackend:
    """A local authority directory, or ``diskci authority serve`` at a URL (with a signer credential).

    For a URL the credential is ``credential_file``'s content when given, else ``credential``.
    """
    if authority.startswith(("http://", "https://")):
        from diskci.supplychain.authority_http import AuthorityClient

        token = credential
        if credential_file is not None:
            token = credential_file.read_text().strip()
        if not token:
            raise UsageError(
                f"--authority {authority} needs a signer credential",
                hint="pass --credential-file FILE or set DISKCI_AUTHORITY_TOKEN (see diskci authority issue)",
            )
        return AuthorityClient(authority, token)
    from diskci.supplychain.authority import SigningAuthority

    return SigningAuthority.open(Path(authority))


def sign_build(
    build_dir: Path,
    *,
    authority: str,
    identity: str,
    issuer: str | None = None,
    credential: str = "",
    credential_file: Path | None = None,
    source: Source | None = None,
    run_id: str = "",
    planned: Publication | None = None,
) -> SignResult:
    """Sign ``build_dir``'s index digest and provenance with ``authority`` (see ``open_authority``).

    ``planned``: sign that publication instead (one assembled from a registry), writing the
    signatures into ``build_dir``."""
    backend = open_authority(authority, credential=credential, credential_file=credential_file)
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
    from diskci.registry import open_registry
    from diskci.registry.reference import Reference

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


@dataclass(frozen=True, kw_only=True)
class _Publishing:
    """What signing and notifying need, whatever is published; no notification when ``notify_url``
    is unset."""

    identity: str
    authority: str
    issuer: str | None = None
    credential: str = ""
    credential_file: Path | None = None
    source: Source = field(default_factory=Source)
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
        credential=request.credential,
        credential_file=request.credential_file,
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
