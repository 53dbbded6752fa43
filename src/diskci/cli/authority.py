"""``diskci authority``: create, serve and audit the embedded signing authority, show and rotate its
keys, and print the trusted root verifiers need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from diskci.cli.output import print_json, stdout
from diskci.errors import UsageError

authority_app = typer.Typer(
    help="The embedded signing authority (CA + CT log key + transparency log).", no_args_is_help=True
)
keys_app = typer.Typer(help="The authority's keys: show them, rotate one.", no_args_is_help=True)
log_app = typer.Typer(help="The authority's transparency log.", no_args_is_help=True)
authority_app.add_typer(keys_app, name="keys")
authority_app.add_typer(log_app, name="log")


@authority_app.command("init")
def init(
    directory: Path = typer.Argument(..., help="New (or empty) directory for the authority's state."),
    name: str = typer.Option("diskci", help="Organization name in the CA certificates."),
    issuer: str = typer.Option(
        "https://authority.diskci.invalid", help="Default OIDC issuer put in certificates issued in-process."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create a root and intermediate CA, a CT log key, a transparency log key and trusted_root.json.

    Example: [bold]diskci authority init /var/lib/diskci/authority[/]
    """
    from diskci.supplychain.authority import SigningAuthority

    auth = SigningAuthority.init(directory, name=name, default_issuer=issuer)
    result = {
        "directory": str(auth.directory),
        "trusted_root": str(auth.directory / "trusted_root.json"),
        "origin": auth.config["origin"],
    }
    if json_out:
        print_json(result)
    else:
        stdout.print(f"authority created in {auth.directory}")
        stdout.print(f"verifiers need: {result['trusted_root']}")


@authority_app.command("serve")
def serve(
    directory: Path = typer.Argument(..., help="The authority directory."),
    oidc_issuer: list[str] = typer.Option(
        [],
        "--oidc-issuer",
        help="OIDC issuer whose CI jobs' ID tokens it accepts, e.g. the platform's URL (repeatable).",
    ),
    oidc_audience: str = typer.Option(
        "sigstore", "--oidc-audience", help="Audience the ID tokens must be for."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8300, help="Port to listen on."),
) -> None:
    """Serve the authority over HTTP: a certificate only for a CI job's valid OIDC ID token.

    The certificate names the token's workflow (<issuer>/<repository>/.gitea/workflows/build.yaml@<ref>)
    and the token's issuer; the issuer's keys are found through its /.well-known/openid-configuration.

    Example: [bold]diskci authority serve /var/lib/diskci/authority --port 8300 --oidc-issuer http://127.0.0.1:8480[/]
    """
    import uvicorn

    from diskci.supplychain.authority_http import create_app

    if not oidc_issuer:
        raise UsageError(
            "authority serve needs --oidc-issuer URL: the CI platform whose jobs' ID tokens it accepts",
            hint="e.g. --oidc-issuer http://127.0.0.1:8480 (the platform's public URL)",
        )
    app = create_app(directory, oidc_issuers=oidc_issuer, audience=oidc_audience)
    uvicorn.run(app, host=host, port=port, log_level="info")


@authority_app.command("trusted-root")
def trusted_root(
    directory: Path = typer.Argument(..., help="The authority directory."),
    out: Path | None = typer.Option(None, "--out", help="Write it to this file instead of stdout."),
) -> None:
    """Print the trusted_root.json verifiers (and a node platform's trusted_root field) must trust.

    It lists every intermediate CA and CT log key the authority has had, each with its validFor window.

    Example: [bold]diskci authority trusted-root /var/lib/diskci/authority --out trusted_root.json[/]
    """
    import sys

    from diskci.atomic import write_bytes
    from diskci.supplychain.authority import SigningAuthority

    data = SigningAuthority.open(directory).trusted_root_json()
    if out is None:
        sys.stdout.write(data.decode())
    else:
        write_bytes(out, data)
        stdout.print(f"trusted root written to {out}")


@keys_app.command("show")
def keys_show(
    directory: Path = typer.Argument(..., help="The authority directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Each key: kind, id (SHA-256 of its public key; a log's log ID), validity window, current or retired.

    Example: [bold]diskci authority keys show /var/lib/diskci/authority[/]
    """
    from diskci.supplychain.authority import SigningAuthority
    from diskci.supplychain.authority_keys import KIND_LABELS

    ring = SigningAuthority.open(directory).ring
    rows: list[dict[str, Any]] = [
        {
            "kind": key.kind,
            "label": KIND_LABELS[key.kind],
            "id": key.key_id,
            "valid_from": key.valid_for()["start"],
            "valid_until": key.valid_for().get("end"),
            "status": "current" if key.current else "retired",
        }
        for kind in KIND_LABELS
        for key in ring.of_kind(kind)
    ]
    if json_out:
        print_json({"directory": str(directory), "keys": rows})
        return
    for row in rows:
        until = row["valid_until"] or "(open)"
        stdout.print(
            f"{row['label']:<17} {row['id'][:16]}  {row['valid_from']} .. {until:<20}  {row['status']}",
            soft_wrap=True,
        )


@keys_app.command("rotate")
def keys_rotate(
    directory: Path = typer.Argument(..., help="The authority directory."),
    kind: str = typer.Option(..., "--kind", help="intermediate (the issuing CA) or ctlog (the CT log key)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make a new key of KIND; the old one's validity window ends now, and it stays in trusted_root.json
    so bundles signed before keep verifying. A running `authority serve` uses the new key from its next
    request (no restart). The transparency log key is not rotated: a new log key is a new log.

    Example: [bold]diskci authority keys rotate /var/lib/diskci/authority --kind intermediate[/]
    """
    from diskci.supplychain.authority import SigningAuthority

    auth = SigningAuthority.open(directory)
    retired, new = auth.rotate_key(kind)
    result = {
        "kind": kind,
        "retired": {"id": retired.key_id, **retired.valid_for()},
        "current": {"id": new.key_id, **new.valid_for()},
        "trusted_root": str(auth.directory / "trusted_root.json"),
    }
    if json_out:
        print_json(result)
        return
    stdout.print(f"{kind} key {retired.key_id[:16]} retired (valid until {retired.valid_for()['end']})")
    stdout.print(f"{kind} key {new.key_id[:16]} current from {new.valid_for()['start']}")
    stdout.print(f"verifiers need the new {result['trusted_root']} (it lists both)")


@log_app.command("verify")
def log_verify(
    directory: Path = typer.Argument(..., help="The authority directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Audit the whole transparency log: every leaf, every acknowledged checkpoint consistent with the next.

    Exits 0 with a summary, 1 naming the first inconsistency (which entry or checkpoint, what was expected).

    Example: [bold]diskci authority log verify /var/lib/diskci/authority[/]
    """
    from diskci.supplychain.authority import SigningAuthority
    from diskci.supplychain.log_audit import LogInconsistent, audit_log

    auth = SigningAuthority.open(directory)
    try:
        audit = audit_log(auth.log)
    except LogInconsistent as exc:
        if json_out:
            print_json({"ok": False, "entry": exc.entry, "error": exc.message, "expected": exc.expected})
            raise typer.Exit(1) from None
        raise
    if json_out:
        print_json({"log": str(auth.log.path), **audit.to_json()})
        return
    stdout.print(
        f"{auth.log.path}: {audit.size} entries, {audit.tree_heads_checked} checkpoints checked, "
        f"consistent; tree size {audit.size}, root {audit.root_hash}",
        soft_wrap=True,
    )
    if audit.partial_tail_bytes:
        stdout.print(
            f"a partial last line ({audit.partial_tail_bytes} bytes, an append cut short and never "
            "acknowledged) is dropped at the next append"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(authority_app, name="authority")
