"""``diskci platform secureboot``: the fleet's Secure Boot key: show it, export it for enrolment, rotate it.

The key pair lives in the files the settings name (``DISKCI_SECUREBOOT_KEY_FILE``/``_CERT_FILE``,
default ``<state dir>/secureboot/db.key`` and ``db.crt``), never in the database. ``rotate`` makes a new
pair (retiring the old one) and signs every platform's default publication with it. ``export --ipxe``
signs iPXE's EFI binary with the fleet key (the signer the settings name), so a Secure Boot machine's
firmware starts it and it chains the platform's signed UKI.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from diskci.cli.output import print_json, stdout

if TYPE_CHECKING:
    from diskci.platform.settings import PlatformSettings

secureboot_app = typer.Typer(
    help="The fleet's Secure Boot key: show, export (DER/PEM, OVMF/AAVMF variables, signed iPXE), rotate.",
    no_args_is_help=True,
)

StateDirOption = typer.Option(None, "--state-dir", help="State directory (default: $DISKCI_STATE_DIR).")
JsonOption = typer.Option(False, "--json", help="Print the result as JSON.")


class CertFormat(StrEnum):
    pem = "pem"
    der = "der"


def _settings(state_dir: Path | None) -> PlatformSettings:
    from diskci.platform.settings import PlatformSettings

    return PlatformSettings() if state_dir is None else PlatformSettings(state_dir=state_dir)


@secureboot_app.command("show")
def show(state_dir: Path = StateDirOption, json_out: bool = JsonOption) -> None:
    """Show the fleet certificate (and retired ones): subject, SHA-256 fingerprint, validity, files.

    Example: [bold]diskci platform secureboot show --json[/]
    """
    from diskci.platform.secureboot.keys import FleetKey

    key = FleetKey.from_settings(_settings(state_dir))
    certs = [key.certificate(), *key.retired()]
    data = {"key_file": str(key.key_file), "certificates": [c.describe() for c in certs]}
    if json_out:
        print_json(data)
        return
    for c in data["certificates"]:
        assert isinstance(c, dict)
        state = "current" if c["current"] else "retired"
        stdout.print(f"[bold]{c['subject']}[/] ({state}, {c['key']})")
        stdout.print(f"  sha256 {c['sha256_fingerprint']}  valid {c['not_before']} .. {c['not_after']}")
        stdout.print(f"  {c['path']}")


@secureboot_app.command("export")
def export(
    out: Path = typer.Option(
        ..., "--out", help="Where to write the certificate (the variable store, the signed iPXE)."
    ),
    fmt: CertFormat = typer.Option(
        CertFormat.pem, "--format", help="pem or der (ignored with --vars, --ipxe)."
    ),
    vars_for: str = typer.Option(
        "", "--vars", help="Write a UEFI variable store instead, for amd64 (OVMF) or arm64 (AAVMF)."
    ),
    with_retired: bool = typer.Option(False, "--with-retired", help="Also enrol retired certificates in db."),
    ipxe_for: str = typer.Option(
        "", "--ipxe", help="Write iPXE (EFI) signed by the fleet key instead, for amd64 or arm64."
    ),
    ipxe_source: Path | None = typer.Option(
        None, "--ipxe-source", help="The unsigned iPXE EFI binary to sign (default: Debian's ipxe.efi)."
    ),
    state_dir: Path = StateDirOption,
    json_out: bool = JsonOption,
) -> None:
    """Export the certificate for enrolment in firmware (DER or PEM), a ready VM variable store
    with it enrolled as PK, KEK and db and Secure Boot on, or iPXE signed by the fleet key (the boot
    loader a Secure Boot machine's firmware starts; it chains the platform's signed UKI).

    Example: [bold]diskci platform secureboot export --out fleet.der --format der[/]
    Example: [bold]diskci platform secureboot export --vars amd64 --out OVMF_VARS_fleet.fd[/]
    Example: [bold]diskci platform secureboot export --ipxe amd64 --out ipxe.signed.efi[/]
    """
    from diskci.errors import UsageError
    from diskci.platform.secureboot.keys import FleetKey
    from diskci.platform.secureboot.varstore import write_varstore

    if vars_for and ipxe_for:
        raise UsageError("--vars and --ipxe each write one file: give one of them")
    if ipxe_source is not None and not ipxe_for:
        raise UsageError("--ipxe-source names the binary --ipxe signs: give --ipxe ARCH too")
    settings = _settings(state_dir)
    key = FleetKey.from_settings(settings)
    if ipxe_for:
        from diskci import atomic
        from diskci.platform.secureboot.ipxe import default_ipxe, signed_ipxe
        from diskci.platform.secureboot.signer import load_signer

        signer = load_signer(settings)
        cert = signer.certificate()
        source = ipxe_source or default_ipxe(ipxe_for)
        atomic.write_bytes(out, signed_ipxe(signer, ipxe_for, source))
        what = f"{ipxe_for} iPXE signed by the fleet key (from {source})"
    elif vars_for:
        cert = key.certificate()
        write_varstore(out, vars_for, cert, also_db=key.retired() if with_retired else ())
        what = f"{vars_for} variable store"
    else:
        cert = key.certificate()
        out.write_bytes(cert.der if fmt is CertFormat.der else cert.pem)
        what = f"certificate ({fmt.value})"
    result = {"written": str(out), "what": what, "sha256_fingerprint": cert.fingerprint}
    if json_out:
        print_json(result)
    else:
        stdout.print(f"wrote the {what} to {out} (certificate sha256 {cert.fingerprint})")


@secureboot_app.command("rotate")
def rotate(
    yes: bool = typer.Option(False, "--yes", help="Confirm: nodes must enrol the new certificate."),
    resign: bool = typer.Option(True, "--resign/--no-resign", help="Sign the default publications anew."),
    state_dir: Path = StateDirOption,
    json_out: bool = JsonOption,
) -> None:
    """Make a new fleet key pair (the current one is retired), then sign every platform's default
    publication with it. The first run creates the key. Machines that have only the old certificate
    enrolled stop booting the new signatures: enrol the new one first (export --with-retired).

    Example: [bold]diskci platform secureboot rotate --yes --json[/]
    """
    from diskci.errors import UsageError
    from diskci.platform.secureboot.keys import FleetKey

    settings = _settings(state_dir)
    key = FleetKey.from_settings(settings)
    if key.exists() and not yes:
        raise UsageError(
            "rotating the Secure Boot key retires the current one: nodes enrolled with it only will stop"
            " booting new signatures",
            hint="Run again with --yes.",
        )
    cert = key.rotate()
    result: dict[str, object] = {"certificate": cert.describe()}
    if resign:
        from diskci.platform.db.session import configure
        from diskci.platform.secureboot.signing import resign_defaults_if_configured

        database = configure(settings.database_url)
        database.upgrade()
        result["resigned"] = resign_defaults_if_configured(settings, database)
    if json_out:
        print_json(result)
    else:
        stdout.print(f"new Secure Boot key: sha256 {cert.fingerprint} ({key.cert_file})")
        if resign:
            stdout.print(f"signed again: {result['resigned']}")
