"""``diskci authority``: create, serve and hand out credentials for the embedded signing authority."""

from __future__ import annotations

from pathlib import Path

import typer

from diskci.cli.output import print_json, stdout

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


@authority_app.command("issue")
def issue(
    directory: Path = typer.Argument(..., help="The authority directory."),
    signer: str = typer.Option(..., "--signer", help="Name of the signer the credential is for."),
    issuer: str | None = typer.Option(None, help="OIDC issuer put in this signer's certificates."),
    identity_prefix: str = typer.Option(
        "",
        help="Identities this signer may sign as must start with this (e.g. https://git.example.com/ops/).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the credential as JSON."),
) -> None:
    """Issue (or replace) a signer credential for `authority serve`; the token is printed once.

    Example: [bold]diskci authority issue /var/lib/diskci/authority --signer ops-images --identity-prefix https://git.example.com/ops/[/]
    """
    from diskci.supplychain.authority import SigningAuthority

    token = SigningAuthority.open(directory).add_credential(
        signer, issuer=issuer, identity_prefix=identity_prefix
    )
    if json_out:
        print_json({"signer": signer, "token": token})
    else:
        print(token)


@authority_app.command("serve")
def serve(
    directory: Path = typer.Argument(..., help="The authority directory."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8300, help="Port to listen on."),
) -> None:
    """Serve the authority over HTTP (signing-certificate and log endpoints, signer credentials).

    Example: [bold]diskci authority serve /var/lib/diskci/authority --port 8300[/]
    """
    import uvicorn

    from diskci.supplychain.authority_http import create_app

    uvicorn.run(create_app(directory), host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.add_typer(authority_app, name="authority")
