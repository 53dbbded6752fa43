"""``diskci ci``: the build definition (a platform's workflow file and image-build repository), the
``post-receive`` hook that turns pushes into CI runs, and ``watch``, which follows a run."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import typer

from diskci.cli.output import print_json, stdout
from diskci.errors import UsageError

ci_app = typer.Typer(
    help="The build definition (workflow, image-build repository), push hooks, and watching CI runs.",
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

    It reads repository variables DISKCI_REGISTRY, DISKCI_AUTHORITY, DISKCI_WEBHOOK_URL and the secret
    DISKCI_WEBHOOK_SECRET; it signs with the job's OIDC ID token (no signing secret).

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


@ci_app.command("hook")
def hook_cmd(
    bare_repo: Path = typer.Argument(..., metavar="BARE_REPO", help="A plain bare git repository."),
    url: str = typer.Option(..., "--url", help="The platform's base URL (http://127.0.0.1:8480)."),
    platform: str = typer.Option(..., "--platform", help="The node platform this repository builds."),
    secret_file: Path = typer.Option(
        ..., "--secret-file", help="A 0600 file holding the platform's push secret (never copied)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a post-receive hook diskci did not install."),
    json_out: bool = _JSON,
) -> None:
    """Install a post-receive hook that posts every pushed ref to the platform, signed.

    Each push then reaches the platform as a Gitea push event (X-Gitea-Signature); a pushed tag the
    workflow runs on becomes one CI run, and the pusher sees its run id as "remote:" lines. The push
    secret is shown by system_configure_disk_image_ci; keep it in a file only you can read.

    Example: [bold]diskci ci hook /srv/git/images.git --url http://127.0.0.1:8480 --platform
    debian-12-amd64 --secret-file ~/.config/diskci/push-secret[/]
    """
    from diskci.ci.pushhook import install_hook

    hook = install_hook(bare_repo, url=url, platform=platform, secret_file=secret_file, force=force)
    if json_out:
        print_json({"hook": str(hook), "platform": platform, "url": url, "secret_file": str(secret_file)})
    else:
        stdout.print(f"installed {hook}: pushes to {bare_repo} now reach {url} (platform {platform})")


@ci_app.command("post-receive")
def post_receive_cmd(
    url: str = typer.Option(..., "--url", help="The platform's base URL."),
    platform: str = typer.Option(..., "--platform", help="The node platform."),
    secret_file: Path = typer.Option(..., "--secret-file", help="The 0600 file holding the push secret."),
    repository: Path = typer.Option(
        Path("."), "--repository", help="The bare repository (default: the current directory)."
    ),
    json_out: bool = _JSON,
) -> None:
    """Post the refs git gives on stdin ("<old> <new> <ref>" lines) to the platform (the hook runs this).

    Exit status 1 when the platform refused a ref or could not be reached.

    Example: [bold]echo "$OLD $NEW refs/tags/v0.3.0" | diskci ci post-receive --url http://127.0.0.1:8480
    --platform debian-12-amd64 --secret-file ~/.config/diskci/push-secret[/]
    """
    from diskci.ci.pushhook import post_receive, read_secret_file

    secret = read_secret_file(secret_file)
    posted = post_receive(
        sys.stdin, url=url, platform=platform, secret=secret, repository=repository.resolve()
    )
    if json_out:
        print_json([{"ref": p.ref, "status_code": p.status_code, **p.answer} for p in posted])
    else:
        for p in posted:
            print(p.line(), flush=True)
    if not all(p.ok for p in posted):
        raise typer.Exit(1)


@ci_app.command("watch")
def watch_cmd(
    run_id: int = typer.Argument(..., min=1, metavar="RUN_ID", help="The CI run (bootstrap's run_id)."),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between looks."),
    timeout: float = typer.Option(
        0.0, "--timeout", min=0, help="Give up after this many seconds (0: never)."
    ),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="State directory ($DISKCI_STATE_DIR)."),
    database_url: str | None = typer.Option(None, "--database-url", help="Database ($DISKCI_DATABASE_URL)."),
    json_out: bool = typer.Option(
        False, "--json", help='JSON lines: {"type": "job"|"step"|"log"|"run", ...}, the run last.'
    ),
) -> None:
    """Follow a CI run live: its jobs and steps, and their logs, until it completes.

    Exit status 0 when the run succeeded, 1 otherwise (failed, cancelled, or --timeout passed).
    Reads the platform's database through get_gitea_workflow_run and get_gitea_job_logs.

    Example: [bold]diskci ci watch 12[/]

    Example: [bold]diskci ci watch 12 --json | jq -c 'select(.type == "run")'[/]
    """
    from diskci.cli import ci_watch
    from diskci.platform.actions.catalog import invoke
    from diskci.platform.db.models import Role
    from diskci.platform.db.session import configure
    from diskci.platform.settings import PlatformSettings

    overrides: dict[str, Any] = {"state_dir": state_dir, "database_url": database_url}
    settings = PlatformSettings(**{k: v for k, v in overrides.items() if v is not None})
    database = configure(settings.database_url)
    database.upgrade()

    def call(name: str, data: dict[str, object]) -> dict[str, object]:
        result = invoke(name, data, database=database, settings=settings, actor="cli:watch", role=Role.VIEWER)
        return result.model_dump(mode="json")

    def fetch_run() -> dict[str, object]:
        return call("get_gitea_workflow_run", {"run_id": run_id})

    def fetch_logs(job: str, offset: int) -> dict[str, object]:
        return call("get_gitea_job_logs", {"run_id": run_id, "job_name": job, "offset": offset})

    if json_out:
        run = ci_watch.follow(fetch_run, fetch_logs, ci_watch.JsonLines(), interval=interval, timeout=timeout)
    elif stdout.is_terminal:
        with ci_watch.LiveTable(stdout, run_id) as live:
            run = ci_watch.follow(fetch_run, fetch_logs, live, interval=interval, timeout=timeout)
    else:
        run = ci_watch.follow(
            fetch_run, fetch_logs, ci_watch.PlainLines(stdout), interval=interval, timeout=timeout
        )
    if run is None:
        if not json_out:
            stdout.print(f"run {run_id}: not completed after {timeout:g} s")
        raise typer.Exit(1)
    raise typer.Exit(0 if run.get("conclusion") == "success" else 1)


def register(app: typer.Typer) -> None:
    app.add_typer(ci_app, name="ci")
