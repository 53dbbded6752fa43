"""``diskci spec``: validate and show platform specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from diskci.cli.output import print_json, stdout
from diskci.errors import SpecError
from diskci.spec import load_spec

spec_app = typer.Typer(help="Validate and show platform specs (platforms/*.yaml).", no_args_is_help=True)


@spec_app.command("validate")
def validate(
    files: list[Path] = typer.Argument(..., help="Spec files to check."),
    json_out: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Check specs; print OK, or every problem with its field path. Exit 0 when all are valid, else 2.

    Example: [bold]diskci spec validate platforms/debian-12-amd64.yaml[/]
    """
    results: list[dict[str, Any]] = []
    for f in files:
        try:
            load_spec(f)
            results.append({"file": str(f), "valid": True, "problems": []})
        except SpecError as exc:
            results.append(
                {
                    "file": str(f),
                    "valid": False,
                    "problems": [{"field": loc, "error": msg} for loc, msg in exc.problems],
                }
            )
    if json_out:
        print_json(results)
    else:
        for r in results:
            if r["valid"]:
                stdout.print(f"{r['file']}: OK")
            else:
                stdout.print(f"{r['file']}: invalid")
                for p in r["problems"]:
                    stdout.print(f"  {p['field']}: {p['error']}")
    if not all(r["valid"] for r in results):
        raise typer.Exit(2)


@spec_app.command("show")
def show(
    file: Path = typer.Argument(..., help="Spec file."),
    json_out: bool = typer.Option(False, "--json", help="Print the normalized spec as JSON."),
) -> None:
    """Print the normalized spec (every default filled in) and its digest.

    Example: [bold]diskci spec show platforms/debian-12-amd64.yaml --json[/]
    """
    spec = load_spec(file)
    if json_out:
        print_json({"digest": spec.digest(), "spec": spec.normalized()})
        return
    import yaml

    stdout.print(f"# digest: sha256:{spec.digest()}")
    stdout.print(yaml.safe_dump(spec.normalized(), sort_keys=False).rstrip())


def register(app: typer.Typer) -> None:
    app.add_typer(spec_app, name="spec")
