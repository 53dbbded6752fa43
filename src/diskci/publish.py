"""sign → push → notify, the one sequence CLI, runners and platform call.

Public API: ``publish(PublishRequest(...)) -> PublishResult`` runs the whole sequence; its pieces are
``open_authority(...)`` (the signing backend), ``sign_build(...)``, ``push_build(...)`` and
``notify_image_built(...)``. ``ci_environment(environ)`` reads what a CI job's environment says
(``GITHUB_*``, ``DISKCI_SOURCE_REPO``, ``DISKCI_AUTHORITY_TOKEN``) into a ``CIEnvironment``, so the
functions here take explicit values and never read ``os.environ`` themselves.
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
from diskci.registry.push import PushResult, push_publication
from diskci.supplychain.bundle import SigningBackend, SignResult, Source, sign_publication

__all__ = [
    "CIEnvironment",
    "PublishRequest",
    "PublishResult",
    "ci_environment",
    "notify_image_built",
    "open_authority",
    "publish",
    "push_build",
    "sign_build",
]

SOURCE_REPO_VAR = "DISKCI_SOURCE_REPO"
AUTHORITY_TOKEN_VAR = "DISKCI_AUTHORITY_TOKEN"


@dataclass(frozen=True)
class CIEnvironment:
    """What a CI job's environment says about the build being published (empty strings when unset)."""

    source: Source
    run_id: str
    authority_token: str


def _source_repo(environ: Mapping[str, str]) -> str:
    if environ.get(SOURCE_REPO_VAR):
        return environ[SOURCE_REPO_VAR]
    server, repo = environ.get("GITHUB_SERVER_URL"), environ.get("GITHUB_REPOSITORY")
    return f"{server.rstrip('/')}/{repo}" if server and repo else ""


def ci_environment(environ: Mapping[str, str] | None = None) -> CIEnvironment:
    """Read ``environ`` (default: ``os.environ``): the source repo (``DISKCI_SOURCE_REPO``, else
    ``GITHUB_SERVER_URL``/``GITHUB_REPOSITORY``), ``GITHUB_REF``, ``GITHUB_SHA``, ``GITHUB_RUN_ID`` and
    the signer credential ``DISKCI_AUTHORITY_TOKEN``."""
    env = os.environ if environ is None else environ
    return CIEnvironment(
        source=Source(
            repo=_source_repo(env), ref=env.get("GITHUB_REF", ""), commit=env.get("GITHUB_SHA", "")
        ),
        run_id=env.get("GITHUB_RUN_ID", ""),
        authority_token=env.get(AUTHORITY_TOKEN_VAR, ""),
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
) -> SignResult:
    """Sign ``build_dir``'s index digest and provenance with ``authority`` (see ``open_authority``)."""
    backend = open_authority(authority, credential=credential, credential_file=credential_file)
    with step(f"sign {build_dir}"):
        return sign_publication(
            build_dir, authority=backend, identity=identity, issuer=issuer, source=source, run_id=run_id
        )


def _push(build_dir: Path, to: str, title: str) -> PushResult:
    with step(title) as s:
        return push_publication(build_dir, to, progress=s.update)


def push_build(build_dir: Path, *, to: str) -> PushResult:
    """Push ``build_dir`` (signed or not) to ``to`` (``host/repo[:tag]`` or ``oci-layout:PATH[:tag]``)."""
    return _push(build_dir, to, f"push {build_dir} → {to}")


def _read_secret(secret_file: Path) -> bytes:
    try:
        return secret_file.read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"{secret_file}: cannot read the webhook secret: {exc}") from None


def notify_image_built(
    url: str,
    *,
    ref: str,
    secret_file: Path,
    source: Source | None = None,
    run_id: str = "",
    critical: bool = False,
    digest: str | None = None,
) -> Delivery:
    """POST the HMAC-signed ``disk_image_built`` webhook for the publication pushed at ``ref``.

    ``digest``: the index digest when known (else the one ``ref`` resolves to); platform and version
    come from the index's annotations.
    """
    from diskci.registry import open_registry
    from diskci.registry.reference import Reference

    source = source or Source()
    reference = Reference.parse(ref)
    data, desc = open_registry(reference).get_manifest(digest or reference.target)
    annotations = json.loads(data).get("annotations") or {}
    secret = _read_secret(secret_file)
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
        return send_notification(url, secret, payload)


@dataclass(frozen=True, kw_only=True)
class PublishRequest:
    """Everything ``publish`` needs; no notification when ``notify_url`` is unset."""

    build_dir: Path
    to: str
    identity: str
    authority: str
    issuer: str | None = None
    credential: str = ""
    credential_file: Path | None = None
    source: Source = field(default_factory=Source)
    run_id: str = ""
    notify_url: str | None = None
    secret_file: Path | None = None
    critical: bool = False

    def __post_init__(self) -> None:
        if self.notify_url and self.secret_file is None:
            raise UsageError("--notify-url needs --secret-file")


@dataclass(frozen=True)
class PublishResult:
    signed: SignResult
    pushed: PushResult
    notified: Delivery | None


def publish(request: PublishRequest) -> PublishResult:
    """Sign, push and (when ``request.notify_url`` is set) notify, in that order."""
    signed = sign_build(
        request.build_dir,
        authority=request.authority,
        identity=request.identity,
        issuer=request.issuer,
        credential=request.credential,
        credential_file=request.credential_file,
        source=request.source,
        run_id=request.run_id,
    )
    pushed = _push(request.build_dir, request.to, f"push → {request.to}")
    delivery = None
    if request.notify_url and request.secret_file is not None:
        delivery = notify_image_built(
            request.notify_url,
            ref=pushed.reference,
            secret_file=request.secret_file,
            source=request.source,
            run_id=request.run_id,
            critical=request.critical,
            digest=pushed.digest,
        )
    return PublishResult(signed=signed, pushed=pushed, notified=delivery)
