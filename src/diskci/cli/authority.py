"""``diskci authority``: create and serve the embedded signing authority."""

from __future__ import annotations

from pathlib import Path

import typer

from diskci.cli.output import print_json, stdout
from diskci.errors import UsageError

authority_app = typer.Typer(
    help="The embedded signing authority (CA + CT log key + transparency log).", no_args_is_help=True
)


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


def register(app: typer.Typer) -> None:
    app.add_typer(authority_app, name="authority")
