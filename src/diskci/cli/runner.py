"""``diskci runner``: the CI worker's agent: register with a platform, run jobs, show the state."""

from __future__ import annotations

import signal
import socket
from datetime import UTC, datetime
from pathlib import Path

import typer

from diskci.cli.output import print_json, stdout
from diskci.errors import UsageError

runner_app = typer.Typer(
    help="The CI worker's agent: registers with a platform and runs its jobs with act (host mode).",
    no_args_is_help=True,
)

_STATE_DIR = typer.Option(..., "--state-dir", help="The runner's directory (runner.json, work/).")
_JSON = typer.Option(False, "--json", help="Print the result as JSON.")


@runner_app.command("register")
def register_cmd(
    url: str = typer.Option(..., "--url", help="The platform's URL (http://host:port)."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="DISKCI_RUNNER_TOKEN",
        show_envvar=True,
        help="One-time registration token (system_provision_ci_worker gives one).",
    ),
    name: str = typer.Option(socket.gethostname(), "--name", help="The runner's name (default: host name)."),
    labels: str = typer.Option(
        "", "--labels", help="Comma-separated labels, e.g. amd64,arm64 (default: the token's labels)."
    ),
    state_dir: Path = _STATE_DIR,
    json_out: bool = _JSON,
) -> None:
    """Register this machine as a runner of the platform; writes DIR/runner.json (mode 0600).

    A registration token works once. An already registered state directory is left as it is.

    Example: [bold]DISKCI_RUNNER_TOKEN=... diskci runner register --url http://127.0.0.1:8480
    --name worker-1 --labels amd64,arm64 --state-dir /var/lib/diskci-runner[/]
    """
    from diskci import __version__
    from diskci.runner import state as runner_state
    from diskci.runner.client import RunnerClient

    if runner_state.is_registered(state_dir):
        current = runner_state.load(state_dir)
        if json_out:
            print_json({"registered": False, "already": True, **current.public()})
        else:
            stdout.print(
                f"{runner_state.state_path(state_dir)}: already registered as {current.name} "
                f"({current.uuid}) with {current.url}; left as it is"
            )
        return
    if not token:
        raise UsageError("no registration token: give --token TOKEN or set DISKCI_RUNNER_TOKEN")
    wanted = [label.strip() for label in labels.split(",") if label.strip()]
    with RunnerClient(url) as client:
        answer = client.register(token=token, name=name, labels=wanted, version=__version__)
        saved = runner_state.RunnerState(
            url=client.base_url,
            name=str(answer.get("name") or name),
            uuid=str(answer["uuid"]),
            token=str(answer["token"]),
            id=str(answer.get("id", "")),
            labels=[str(label) for label in answer.get("labels") or wanted],
            registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    path = runner_state.save(state_dir, saved)
    if json_out:
        print_json({"registered": True, "already": False, **saved.public()})
    else:
        stdout.print(
            f"registered {saved.name} ({saved.uuid}) with {saved.url}; labels {','.join(saved.labels)}"
        )
        stdout.print(f"  state: {path}")


@runner_app.command("run")
def run_cmd(
    state_dir: Path = _STATE_DIR,
    drain_timeout: float = typer.Option(
        600.0, "--drain-timeout", min=0, help="On SIGTERM, seconds the current job may still run."
    ),
) -> None:
    """Run jobs from the platform, one at a time, with act in host mode (a daemon).

    SIGTERM or SIGINT: stop fetching, let the current job finish within --drain-timeout seconds (else
    cancel it), exit 0; a second signal cancels the job at once. Exit status 3: the platform refused
    the runner's credentials (revoked): do not restart it.

    Example: [bold]diskci runner run --state-dir /var/lib/diskci-runner[/]
    """
    from diskci.runner import state as runner_state
    from diskci.runner.agent import Agent

    agent = Agent(runner_state.load(state_dir), state_dir, drain_timeout=drain_timeout)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.request_stop())
    raise typer.Exit(agent.run())


@runner_app.command("status")
def status_cmd(state_dir: Path = _STATE_DIR, json_out: bool = _JSON) -> None:
    """What the state file says: platform, runner name, uuid, labels (the token hidden).

    Example: [bold]diskci runner status --state-dir /var/lib/diskci-runner --json[/]
    """
    from diskci.runner import state as runner_state

    current = runner_state.load(state_dir)
    info = {**current.public(), "state_file": str(runner_state.state_path(state_dir))}
    if json_out:
        print_json(info)
        return
    for key, value in info.items():
        shown = ",".join(value) if isinstance(value, list) else value
        stdout.print(f"{key}: {shown}")


def register(app: typer.Typer) -> None:
    app.add_typer(runner_app, name="runner")
