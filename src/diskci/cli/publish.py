"""``diskci sign|verify|push|pull|notify|publish``: the steps between a finished build and the platform."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import typer

from diskci.cli.output import print_json, stdout
from diskci.console import step
from diskci.errors import UsageError, VerificationFailed

_GITHUB_REPO = "DISKCI_SOURCE_REPO"


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _default_repo() -> str:
    if os.environ.get(_GITHUB_REPO):
        return os.environ[_GITHUB_REPO]
    server, repo = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
    return f"{server.rstrip('/')}/{repo}" if server and repo else ""


def _authority(spec: str, credential_file: Path | None) -> Any:
    """A local authority directory, or ``diskci authority serve`` at a URL (with a worker credential)."""
    if spec.startswith(("http://", "https://")):
        from diskci.supplychain.authority_http import AuthorityClient

        token = os.environ.get("DISKCI_AUTHORITY_TOKEN", "")
        if credential_file is not None:
            token = credential_file.read_text().strip()
        if not token:
            raise UsageError(
                f"--authority {spec} needs a worker credential",
                hint="pass --credential-file FILE or set DISKCI_AUTHORITY_TOKEN (see diskci authority issue)",
            )
        return AuthorityClient(spec, token)
    from diskci.supplychain.authority import SigningAuthority

    return SigningAuthority.open(Path(spec))


# Options shared by sign and publish
_IDENTITY = typer.Option(..., "--identity", help="Signer identity (SAN URI), e.g. the workflow ref URI.")
_AUTHORITY = typer.Option(
    ..., "--authority", envvar="DISKCI_AUTHORITY", help="Authority directory, or URL of authority serve."
)
_CREDENTIAL = typer.Option(None, "--credential-file", help="Worker credential (for an authority URL).")
_ISSUER = typer.Option(None, "--issuer", help="OIDC issuer (local authority only; default: its own).")
_REPO = typer.Option(None, "--source-repo", help="Source repository URL (default: from CI environment).")
_REF = typer.Option("", "--source-ref", envvar="GITHUB_REF", help="Git ref built.")
_COMMIT = typer.Option("", "--source-commit", envvar="GITHUB_SHA", help="Commit built.")
_RUN = typer.Option("", "--run-id", envvar="GITHUB_RUN_ID", help="CI run id.")
_JSON = typer.Option(False, "--json", help="Print the result as JSON.")
_CRITICAL = typer.Option(False, "--critical", help="Mark as a security-critical update.")


def _sign(
    build_dir: Path,
    authority: str,
    credential_file: Path | None,
    identity: str,
    issuer: str | None,
    source: Any,
    run_id: str,
) -> Any:
    from diskci.supplychain.bundle import sign_publication

    backend = _authority(authority, credential_file)
    with step(f"sign {build_dir}"):
        return sign_publication(
            build_dir, authority=backend, identity=identity, issuer=issuer, source=source, run_id=run_id
        )


def sign(
    build_dir: Path = typer.Argument(..., help="Build directory (with build.json)."),
    identity: str = _IDENTITY,
    authority: str = _AUTHORITY,
    credential_file: Path | None = _CREDENTIAL,
    issuer: str | None = _ISSUER,
    source_repo: str | None = _REPO,
    source_ref: str = _REF,
    source_commit: str = _COMMIT,
    run_id: str = _RUN,
    json_out: bool = _JSON,
) -> None:
    """Sign the publication's OCI index digest and its SLSA provenance (sigstore bundles in signatures/).

    Example: [bold]diskci sign build-out --identity https://git.example.com/ops/img --authority ./authority[/]
    """
    from diskci.supplychain.bundle import Source

    source = Source(repo=source_repo or _default_repo(), ref=source_ref, commit=source_commit)
    result = _sign(build_dir, authority, credential_file, identity, issuer, source, run_id)
    if json_out:
        print_json(_jsonable(result))
    else:
        stdout.print(f"signed {result.index_digest} as {identity}")
        for b in result.bundles:
            stdout.print(f"  {b}")


def verify(
    source: str = typer.Argument(..., help="REF (host/repo:tag, oci-layout:PATH:tag) or a directory."),
    identity_regexp: str = typer.Option(
        ..., "--identity-regexp", help="Regexp the signer SAN must fully match."
    ),
    issuer: str = typer.Option(..., "--issuer", help="OIDC issuer the certificate must name."),
    trusted_root: Path | None = typer.Option(
        None, "--trusted-root", help="trusted_root.json (default: Sigstore's public trusted root)."
    ),
    no_fsverity: bool = typer.Option(False, "--no-fsverity", help="Skip recomputing fs-verity digests."),
    json_out: bool = _JSON,
) -> None:
    """Verify a publication: every digest, the signature (sigstore-python), the signer identity and issuer.

    Exits 1 with a reason (identity_mismatch, issuer_mismatch, signature_invalid, certificate_expired,
    unknown_ca, bundle_malformed, digest_mismatch, manifest_invalid, ...) when it does not verify.

    Example: [bold]diskci verify oci-layout:./oci:1.0 --identity-regexp 'https://git.example.com/ops/.*'
    --issuer https://git.example.com --trusted-root ./authority/trusted_root.json[/]
    """
    from diskci.supplychain.bundle import verify_publication
    from diskci.supplychain.policy import IdentityPolicy

    policy = IdentityPolicy(identity_regexp=identity_regexp, issuer=issuer)
    try:
        with step(f"verify {source}"):
            result = verify_publication(
                source, policy, trusted_root=trusted_root, check_fsverity=not no_fsverity
            )
    except VerificationFailed as exc:
        if json_out:
            print_json({"verified": False, "reason": exc.reason, "message": exc.message})
            raise typer.Exit(1) from None
        raise
    if json_out:
        print_json({"verified": True, **_jsonable(result)})
    else:
        stdout.print(f"verified {result.platform} {result.version} ({result.index_digest})")
        stdout.print(f"  signed by {result.identity} (issuer {result.issuer})")
        stdout.print(f"  {result.artifacts} artifacts, {result.bytes} bytes, {len(result.bundles)} bundles")


def push(
    build_dir: Path = typer.Argument(..., help="Build directory (with build.json, signed or not)."),
    to: str = typer.Option(..., "--to", help="host[:port]/repo[:tag] or oci-layout:PATH[:tag]."),
    json_out: bool = _JSON,
) -> None:
    """Push a build as an OCI index (one artifact manifest per arch) plus its signatures as referrers.

    Example: [bold]diskci push build-out --to 127.0.0.1:5000/ops/disk-images/debian-12[/]
    """
    from diskci.registry.push import push_publication

    with step(f"push {build_dir} → {to}") as s:
        result = push_publication(build_dir, to, progress=s.update)
    if json_out:
        print_json(_jsonable(result))
    else:
        stdout.print(f"pushed {result.reference} ({result.digest})")
        stdout.print(
            f"  {result.blobs_sent} blobs sent ({result.bytes_sent} bytes), {result.blobs_skipped} present"
        )


def pull(
    ref: str = typer.Argument(..., help="host/repo:tag or oci-layout:PATH:tag."),
    dest: Path = typer.Argument(..., help="Directory to write (replaced when the pull succeeds)."),
    json_out: bool = _JSON,
) -> None:
    """Pull a publication, checking every manifest and blob digest while downloading.

    Example: [bold]diskci pull 127.0.0.1:5000/ops/disk-images/debian-12:1.0 ./pulled[/]
    """
    from diskci.registry.pull import pull_publication

    with step(f"pull {ref}") as s:
        result = pull_publication(ref, dest, progress=s.update)
    if json_out:
        print_json({k: v for k, v in _jsonable(result).items() if k != "build"})
    else:
        stdout.print(f"pulled {result.reference} ({result.index_digest}) into {result.directory}")


def _notify(
    url: str, secret_file: Path, ref: str, source: Any, run_id: str, critical: bool, digest: str | None = None
) -> Any:
    import json as _json

    from diskci import mediatypes as mt
    from diskci.notify import DiskImageBuilt, SourceRef, send_notification
    from diskci.registry.client import open_registry
    from diskci.registry.reference import Reference

    reference = Reference.parse(ref)
    data, desc = open_registry(reference).get_manifest(digest or reference.target)
    annotations = _json.loads(data).get("annotations") or {}
    try:
        secret = secret_file.read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"{secret_file}: cannot read the webhook secret: {exc}") from None
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


def notify(
    url: str = typer.Option(..., "--url", help="Webhook URL (…/api/v1/system/webhooks/disk_image_built)."),
    secret_file: Path = typer.Option(..., "--secret-file", help="File holding the webhook's HMAC secret."),
    ref: str = typer.Option(..., "--ref", help="The pushed publication (host/repo:tag)."),
    source_repo: str | None = _REPO,
    source_ref: str = _REF,
    source_commit: str = _COMMIT,
    run_id: str = _RUN,
    critical: bool = _CRITICAL,
    json_out: bool = _JSON,
) -> None:
    """POST the HMAC-signed disk_image_built webhook for a pushed publication (retries 5xx; 4xx fails).

    Example: [bold]diskci notify --url $WEBHOOK_URL --secret-file hook.secret --ref oci-layout:./oci:1.0[/]
    """
    from diskci.supplychain.bundle import Source

    source = Source(repo=source_repo or _default_repo(), ref=source_ref, commit=source_commit)
    delivery = _notify(url, secret_file, ref, source, run_id, critical)
    if json_out:
        print_json(_jsonable(delivery))
    else:
        stdout.print(
            f"delivered {delivery.delivery_id} (HTTP {delivery.status}, {delivery.attempts} attempt(s))"
        )


def publish(
    build_dir: Path = typer.Argument(..., help="Build directory (with build.json)."),
    to: str = typer.Option(..., "--to", help="host[:port]/repo[:tag] or oci-layout:PATH[:tag]."),
    identity: str = _IDENTITY,
    authority: str = _AUTHORITY,
    credential_file: Path | None = _CREDENTIAL,
    issuer: str | None = _ISSUER,
    notify_url: str | None = typer.Option(
        None, "--notify-url", help="Webhook URL; no notification if unset."
    ),
    secret_file: Path | None = typer.Option(None, "--secret-file", help="Webhook HMAC secret file."),
    source_repo: str | None = _REPO,
    source_ref: str = _REF,
    source_commit: str = _COMMIT,
    run_id: str = _RUN,
    critical: bool = _CRITICAL,
    json_out: bool = _JSON,
) -> None:
    """Sign, push and notify in one step (what a CI workflow's last step runs).

    Example: [bold]diskci publish build-out --to oci-layout:./oci --identity $ID --authority ./auth[/]
    """
    from diskci.registry.push import push_publication
    from diskci.supplychain.bundle import Source

    if notify_url and secret_file is None:
        raise UsageError("--notify-url needs --secret-file")
    source = Source(repo=source_repo or _default_repo(), ref=source_ref, commit=source_commit)
    signed = _sign(build_dir, authority, credential_file, identity, issuer, source, run_id)
    with step(f"push → {to}") as s:
        pushed = push_publication(build_dir, to, progress=s.update)
    delivery = None
    if notify_url and secret_file is not None:
        delivery = _notify(notify_url, secret_file, pushed.reference, source, run_id, critical, pushed.digest)
    if json_out:
        print_json(
            {"signed": _jsonable(signed), "pushed": _jsonable(pushed), "notified": _jsonable(delivery)}
        )
    else:
        stdout.print(f"published {pushed.reference} ({pushed.digest})")


def register(app: typer.Typer) -> None:
    for fn in (sign, verify, push, pull, notify, publish):
        app.command(fn.__name__)(fn)
