"""``diskci sign|verify|push|pull|notify|publish``: the steps between a finished build and the platform.

``verify`` and ``pull`` of a reference show the download's bytes on a terminal (``_download``)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from diskci.cli.output import print_json, stdout
from diskci.console import interactive, stderr, step
from diskci.errors import UsageError, VerificationFailed

if TYPE_CHECKING:
    from diskci.publish import CIEnvironment, PublishResult
    from diskci.supplychain.bundle import Source


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


def _source(ci: CIEnvironment, repo: str | None, ref: str, commit: str) -> Source:
    """The ``Source`` the options name, the repository defaulting to the CI environment's."""
    from diskci.supplychain.bundle import Source

    return Source(repo=repo or ci.source.repo, ref=ref, commit=commit)


@dataclasses.dataclass
class _Download:
    """What a download reports: ``say`` the file at hand, ``on_bytes(received, expected)`` (None: no
    byte progress is drawn, off a terminal)."""

    say: Callable[[str], None]
    on_bytes: Callable[[int, int], None] | None


@contextlib.contextmanager
def _download(title: str) -> Iterator[_Download]:
    """``step(title)`` for a download: on a terminal a rich progress line with the bytes received, the
    bytes expected so far and the speed; elsewhere the step's log lines, nothing more."""
    if not interactive():
        with step(title) as s:
            yield _Download(say=s.update, on_bytes=None)
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    started = time.monotonic()
    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn())
    speed = (DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, *speed, console=stderr, transient=True) as progress:
        task = progress.add_task(title, total=None)

        def on_bytes(received: int, expected: int) -> None:
            progress.update(task, completed=received, total=max(expected, received) or None)

        def say(detail: str) -> None:
            progress.update(task, description=f"{title}: {detail}")

        yield _Download(say=say, on_bytes=on_bytes)
    stderr.print(f"[green]✓[/] {escape(title)} [dim]({time.monotonic() - started:.1f}s)[/]")


# Options shared by sign and publish
_IDENTITY = typer.Option(
    None,
    "--identity",
    help="Signer identity (SAN URI), e.g. the workflow ref URI. An authority URL signs as the ID "
    "token's identity (this must then be it); in a CI job it defaults to the workflow's.",
)
_AUTHORITY = typer.Option(
    ..., "--authority", envvar="DISKCI_AUTHORITY", help="Authority directory, or URL of authority serve."
)
_ID_TOKEN = typer.Option(
    "",
    "--id-token",
    help="OIDC ID token for an authority URL (else $DISKCI_ID_TOKEN, else asked of the CI job's "
    "platform through ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN).",
    show_default=False,
)
_ISSUER = typer.Option(None, "--issuer", help="OIDC issuer (local authority only; default: its own).")
_REPO = typer.Option(None, "--source-repo", help="Source repository URL (default: from CI environment).")
_REF = typer.Option("", "--source-ref", envvar="GITHUB_REF", help="Git ref built.")
_COMMIT = typer.Option("", "--source-commit", envvar="GITHUB_SHA", help="Commit built.")
_RUN = typer.Option("", "--run-id", envvar="GITHUB_RUN_ID", help="CI run id.")
_JSON = typer.Option(False, "--json", help="Print the result as JSON.")
_CRITICAL = typer.Option(False, "--critical", help="Mark as a security-critical update.")


def sign(
    build_dir: Path = typer.Argument(..., help="Build directory (with build.json)."),
    identity: str | None = _IDENTITY,
    authority: str = _AUTHORITY,
    id_token: str = _ID_TOKEN,
    issuer: str | None = _ISSUER,
    source_repo: str | None = _REPO,
    source_ref: str = _REF,
    source_commit: str = _COMMIT,
    run_id: str = _RUN,
    json_out: bool = _JSON,
) -> None:
    """Sign the publication's OCI index digest and its SLSA provenance (sigstore bundles in signatures/).

    Example: [bold]diskci sign build-out --identity https://git.example.com/ops/img --authority ./authority[/]

    In a CI job, with the platform's authority: [bold]diskci sign build-out --authority http://127.0.0.1:8300[/]
    """
    from diskci.publish import ci_environment, default_identity, sign_build

    ci = ci_environment()
    result = sign_build(
        build_dir,
        authority=authority,
        identity=identity or default_identity(authority, ci),
        issuer=issuer,
        id_token=id_token or ci.id_token,
        id_token_request=ci.id_token_request,
        source=_source(ci, source_repo, source_ref, source_commit),
        run_id=run_id,
    )
    if json_out:
        print_json(_jsonable(result))
    else:
        stdout.print(f"signed {result.index_digest} as {result.identity}")
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
    from diskci.supplychain.policy import IdentityPolicy
    from diskci.supplychain.verifier import verify_publication

    policy = IdentityPolicy(identity_regexp=identity_regexp, issuer=issuer)
    try:
        with _download(f"verify {source}") as download:
            result = verify_publication(
                source,
                policy,
                trusted_root=trusted_root,
                check_fsverity=not no_fsverity,
                on_bytes=download.on_bytes,
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
    arch: str | None = typer.Option(
        None,
        "--arch",
        help="Push only this architecture's part, tagged <tag>-<arch>, unsigned (a CI build job's "
        "step; diskci publish --from-registry joins the parts).",
    ),
    json_out: bool = _JSON,
) -> None:
    """Push a build as an OCI index (one artifact manifest per arch) plus its signatures as referrers.

    Example: [bold]diskci push build-out --to 127.0.0.1:5000/ops/disk-images/debian-12[/]

    One architecture of it, from the CI job that built it:
    [bold]diskci push build-out --arch arm64 --to 127.0.0.1:5000/ops/disk-images/debian-12[/]
    """
    from diskci.publish import push_build

    result = push_build(build_dir, to=to, arch=arch)
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

    with _download(f"pull {ref}") as download:
        result = pull_publication(ref, dest, progress=download.say, on_bytes=download.on_bytes)
    if json_out:
        print_json({k: v for k, v in _jsonable(result).items() if k != "build"})
    else:
        stdout.print(f"pulled {result.reference} ({result.index_digest}) into {result.directory}")


def notify(
    url: str = typer.Option(..., "--url", help="Webhook URL (…/api/v1/system/webhooks/disk_image_built)."),
    secret_file: Path | None = typer.Option(
        None, "--secret-file", help="File holding the webhook's HMAC secret (else $DISKCI_WEBHOOK_SECRET)."
    ),
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
    from diskci.publish import ci_environment, notify_image_built

    ci = ci_environment()
    delivery = notify_image_built(
        url,
        ref=ref,
        secret_file=secret_file,
        secret=ci.webhook_secret,
        source=_source(ci, source_repo, source_ref, source_commit),
        run_id=run_id,
        critical=critical,
    )
    if json_out:
        print_json(_jsonable(delivery))
    else:
        stdout.print(
            f"delivered {delivery.delivery_id} (HTTP {delivery.status}, {delivery.attempts} attempt(s))"
        )


def publish(
    build_dir: Path | None = typer.Argument(
        None, help="Build directory (with build.json); not with --from-registry."
    ),
    to: str | None = typer.Option(
        None, "--to", help="host[:port]/repo[:tag] or oci-layout:PATH[:tag] (with BUILD_DIR)."
    ),
    from_registry: str | None = typer.Option(
        None,
        "--from-registry",
        help="host/repo[:VERSION] holding the parts <VERSION>-<arch> that `diskci push --arch` sent: "
        "join them into the index there, then sign, push and notify.",
    ),
    arch: list[str] | None = typer.Option(
        None, "--arch", help="With --from-registry: the parts to join (repeatable or comma-separated)."
    ),
    spec: Path | None = typer.Option(
        None,
        "--spec",
        help="With --from-registry: platform spec giving the default VERSION and architectures.",
    ),
    work_dir: Path | None = typer.Option(
        None,
        "--work-dir",
        help="With --from-registry: where the joined build.json and signatures go (default: temporary).",
    ),
    identity: str | None = _IDENTITY,
    authority: str = _AUTHORITY,
    id_token: str = _ID_TOKEN,
    issuer: str | None = _ISSUER,
    notify_url: str | None = typer.Option(
        None, "--notify-url", help="Webhook URL; no notification if unset."
    ),
    secret_file: Path | None = typer.Option(
        None, "--secret-file", help="Webhook HMAC secret file (else $DISKCI_WEBHOOK_SECRET)."
    ),
    source_repo: str | None = _REPO,
    source_ref: str = _REF,
    source_commit: str = _COMMIT,
    run_id: str = _RUN,
    critical: bool = _CRITICAL,
    json_out: bool = _JSON,
) -> None:
    """Sign, push and notify in one step (what a CI workflow's last step runs).

    Example: [bold]diskci publish build-out --to oci-layout:./oci --identity $ID --authority ./auth[/]

    After one CI job per architecture ran [bold]diskci push build-out --arch A --to REPO[/]:
    [bold]diskci publish --from-registry 127.0.0.1:5000/ops/disk-images/debian-12 --spec
    platforms/debian-12-amd64.yaml --authority $AUTHORITY_URL[/] (in a CI job: it signs as the job)
    """
    from diskci.publish import ci_environment, default_identity

    ci = ci_environment()
    common: dict[str, Any] = {
        "identity": identity or default_identity(authority, ci),
        "authority": authority,
        "issuer": issuer,
        "id_token": id_token or ci.id_token,
        "id_token_request": ci.id_token_request,
        "source": _source(ci, source_repo, source_ref, source_commit),
        "run_id": run_id,
        "notify_url": notify_url or None,
        "secret_file": secret_file,
        "secret": ci.webhook_secret,
        "critical": critical,
    }
    if from_registry is not None:
        if build_dir is not None or to is not None:
            raise UsageError("--from-registry publishes where the parts are: give no BUILD_DIR or --to")
        result = _publish_assembled(from_registry, _split(arch), spec, work_dir, common)
    else:
        if build_dir is None or to is None:
            raise UsageError("name a BUILD_DIR and --to (or --from-registry REF)")
        if arch or spec or work_dir:
            raise UsageError("--arch, --spec and --work-dir go with --from-registry")
        from diskci.publish import PublishRequest
        from diskci.publish import publish as run_publish

        result = run_publish(PublishRequest(build_dir=build_dir, to=to, **common))
    if json_out:
        print_json(_jsonable(result))  # {"signed": ..., "pushed": ..., "notified": ... or null}
    else:
        stdout.print(f"published {result.pushed.reference} ({result.pushed.digest})")


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.replace(" ", ",").split(",") if v.strip()]


def _publish_assembled(
    ref: str, arches: list[str], spec_file: Path | None, work_dir: Path | None, common: dict[str, Any]
) -> PublishResult:
    import tempfile

    from diskci.publish import AssembleRequest, publish_from_registry
    from diskci.registry.reference import Reference

    reference = Reference.parse(ref)
    if spec_file is not None:
        from diskci.spec import load_spec

        spec = load_spec(spec_file)
        if not reference.tag and not reference.digest:
            reference = reference.with_tag(spec.version)
        arches = arches or [a.value for a in spec.architectures]
    with tempfile.TemporaryDirectory(prefix="diskci-assemble-") as tmp:
        request = AssembleRequest(
            ref=str(reference), arches=tuple(arches), work_dir=work_dir or Path(tmp), **common
        )
        return publish_from_registry(request)


def register(app: typer.Typer) -> None:
    for fn in (sign, verify, push, pull, notify, publish):
        app.command(fn.__name__)(fn)
