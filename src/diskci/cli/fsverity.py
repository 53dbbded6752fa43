"""``diskci fsverity``: fs-verity digests of files, printed exactly as ``fsverity digest`` prints them."""

from __future__ import annotations

from pathlib import Path

import typer

from diskci.cli.output import print_json
from diskci.errors import DiskciError
from diskci.formats import fsverity

fsverity_app = typer.Typer(
    help="fs-verity digests (SHA-256, 4096-byte blocks, no salt).", no_args_is_help=True
)


@fsverity_app.command("digest")
def digest(
    files: list[Path] = typer.Argument(..., help="Files to digest."),
    json_out: bool = typer.Option(False, "--json", help="Print [{path, digest}] as JSON."),
) -> None:
    """Print ``sha256:<hex> FILE`` for each file, like Debian's ``fsverity digest``.

    Example: [bold]diskci fsverity digest out/debian-12/amd64/rootfs.cfs[/]
    """
    results = []
    for path in files:
        try:
            value = fsverity.digest_file(path)
        except IsADirectoryError:
            raise DiskciError(f"reading from '{path}': Is a directory") from None
        except OSError as exc:
            raise DiskciError(f"can't open '{path}' for reading: {exc.strerror}") from None
        if json_out:
            results.append({"path": str(path), "digest": f"sha256:{value.hex()}"})
        else:
            print(fsverity.format_digest(path, value), flush=True)
    if json_out:
        print_json(results)


def register(app: typer.Typer) -> None:
    app.add_typer(fsverity_app, name="fsverity")
