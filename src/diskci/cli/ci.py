"""``diskci ci``: the build definition: a platform's workflow file and its image-build repository."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import typer

from diskci.cli.output import print_json, stdout
from diskci.errors import UsageError

ci_app = typer.Typer(
    help="The build definition: a platform's workflow file and image-build repository.",
    no_args_is_help=True,
)

_JSON = typer.Option(False, "--json", help="Print the result as JSON.")


@ci_app.command("workflow")
def workflow_cmd(
    spec_file: Path = typer.Argument(..., metavar="SPEC", help="Platform spec (platforms/<name>.yaml)."),
    out: str = typer.Option(
        ".gitea/workflows/build.yaml", "--out", "-o", help="File to write, or - for stdout."
    ),
    spec_path: str | None = typer.Option(
        None,
        "--spec-path",
        help="Where the spec lies in the repository (default: platforms/<name>.yaml).",
    ),
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 when --out differs from what would be written."
    ),
    json_out: bool = _JSON,
) -> None:
    """Write a platform's build workflow (.gitea/workflows/build.yaml) from its spec.

    A pushed v* tag or a dispatch (input arches) builds each architecture on a worker with that label
    and pushes its part; then one job joins the parts, signs, pushes and notifies.

    It reads repository variables DISKCI_REGISTRY, DISKCI_AUTHORITY, DISKCI_WEBHOOK_URL and secrets
    DISKCI_AUTHORITY_TOKEN, DISKCI_WEBHOOK_SECRET.

    Example: [bold]diskci ci workflow platforms/debian-12-amd64.yaml[/]

    Example: [bold]diskci ci workflow platforms/debian-12-amd64.yaml --check[/] (in CI: is it current?)
    """
    from diskci.ci.repo import spec_path as default_spec_path
    from diskci.ci.workflow import SECRETS, VARIABLES, render, workflow
    from diskci.spec import load_spec

    spec = load_spec(spec_file)
    where = spec_path or default_spec_path(spec.name)
    text = render(workflow(spec, where), source=where)
    if check:
        if out == "-":
            raise UsageError("--check compares with a file: give --out FILE")
        current = Path(out).read_text() if Path(out).is_file() else None
        if current != text:
            stdout.print(
                f"{out}: {'differs from' if current else 'missing; expected'} the workflow of {spec_file}"
            )
            raise typer.Exit(1)
        stdout.print(f"{out}: up to date")
        return
    if out == "-":
        sys.stdout.write(text)
        return
    from diskci.atomic import write_text

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text(Path(out), text)
    if json_out:
        print_json(
            {
                "path": out,
                "platform": spec.name,
                "spec_path": where,
                "arches": [a.value for a in spec.architectures],
                "variables": sorted(VARIABLES),
                "secrets": sorted(SECRETS),
            }
        )
    else:
        stdout.print(
            f"wrote {out} (platform {spec.name}, arches {', '.join(a.value for a in spec.architectures)})"
        )


@ci_app.command("init-repo")
def init_repo_cmd(
    directory: Path = typer.Argument(..., metavar="DIR", help="New (or empty) directory."),
    spec_file: Path = typer.Option(..., "--spec", help="Platform spec to build in it."),
    message: str | None = typer.Option(None, "--message", "-m", help="First commit's message."),
    json_out: bool = _JSON,
) -> None:
    """Create a platform's image-build repository: the spec, its workflow, a first commit.

    git init, platforms/<name>.yaml, .gitea/workflows/build.yaml, one commit on main. Refuses a
    directory that is not empty; a failure leaves nothing behind.

    Example: [bold]diskci ci init-repo ./images --spec platforms/debian-12-amd64.yaml[/]
    then [bold]git -C images remote add origin URL && git -C images push origin main[/]
    """
    from diskci.ci.repo import init_repo

    repo = init_repo(directory, spec_file, message=message)
    if json_out:
        print_json({k: str(v) for k, v in dataclasses.asdict(repo).items()})
    else:
        stdout.print(f"created {repo.directory} ({repo.branch} at {repo.commit[:12]})")
        stdout.print(f"  {repo.spec}")
        stdout.print(f"  {repo.workflow}")


def register(app: typer.Typer) -> None:
    app.add_typer(ci_app, name="ci")
