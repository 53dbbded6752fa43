"""``diskci demo``: the operator runbook on the embedded defaults (CI worker, tag push, run, verified
publication, netboot, decommission), or the by-hand path (build, sign, publish, netboot)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from diskci.cli.output import print_json, stdout
from diskci.errors import UsageError

if TYPE_CHECKING:
    from diskci.demo import DemoConfig


def _default_state() -> Path:
    return Path(os.environ.get("DISKCI_DEMO_DIR", "/var/lib/diskci-demo"))


def demo(
    spec: Path = typer.Option(
        Path("platforms/debian-12-amd64.yaml"), "--spec", help="Platform spec to build."
    ),
    state_dir: Path = typer.Option(
        None, "--state-dir", help="Where the build, authority, registry and platform state go."
    ),
    cache: Path = typer.Option(
        Path("/var/cache/diskci"), "--cache", help="Build cache (reused across runs)."
    ),
    build_dir: Path = typer.Option(
        None, "--build-dir", help="Publish this existing build instead of building (must match --spec)."
    ),
    source_date_epoch: int = typer.Option(
        None, "--source-date-epoch", help="Fixed build time (reproducible)."
    ),
    boot: bool = typer.Option(True, "--boot/--no-boot", help="Netboot a QEMU machine at the end."),
    by_hand: bool = typer.Option(
        False, "--by-hand", help="Build, sign and publish by hand on this machine instead of through CI."
    ),
    fresh: bool = typer.Option(True, "--fresh/--keep", help="Start the platform, registry and node anew."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Walk the operator runbook on this machine: start the signing authority and the platform,
    create the NodePlatform and its webhook, the image-build repository with its push hook, provision a
    local CI worker, push a tag, watch the run (jobs, steps, logs), wait for the platform to verify the
    run's publication, make it the default, netboot a QEMU machine through /boot.ipxe, decommission
    the worker, and print the run's timeline. With --by-hand: build, sign and publish on this machine
    instead of through CI (the path a CI job takes, run by hand).

    Example: [bold]diskci demo --spec platforms/debian-12-amd64.yaml[/]
    """
    from diskci.demo import DemoConfig, clean_state, run_demo

    state = state_dir or _default_state()
    config = DemoConfig(
        spec_path=spec,
        state_dir=state,
        cache_dir=cache,
        build_dir=build_dir,
        source_date_epoch=source_date_epoch,
        boot=boot,
    )
    if not by_hand:
        if build_dir is not None:
            raise UsageError("--build-dir goes with --by-hand: through CI the worker builds")
        _runbook(config, fresh=fresh, json_out=json_out)
        return
    if fresh:
        clean_state(state)
    result = run_demo(config)
    if json_out:
        print_json({k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()})
        return
    table = Table(title=f"diskci demo: {result.platform} {result.version}", show_header=False)
    table.add_row("build", str(result.build_dir))
    table.add_row(
        "publication", f"{result.reference} ({result.manifest_digest[:19]}…), id {result.publication_id}"
    )
    table.add_row("platform", result.base_url)
    if result.booted_line:
        table.add_row("node", f"{result.booted_line.strip()} after {result.boot_seconds:.0f} s")
        table.add_row("node reports", " → ".join(result.reports))
    for name, secs in result.timings.items():
        table.add_row(f"time: {name}", f"{secs:.1f} s")
    stdout.print(table)


def _runbook(config: DemoConfig, *, fresh: bool, json_out: bool) -> None:
    from diskci.demo_runbook import clean_runbook_state, run_runbook_demo

    if fresh:
        clean_runbook_state(config.state_dir)
    result = run_runbook_demo(config)
    if json_out:
        print_json(dataclasses.asdict(result))
        return
    table = Table(title=f"diskci demo (runbook): {result.platform} {result.version}", show_header=False)
    table.add_row("CI worker", f"{result.worker}, finally {result.worker_final_status}")
    table.add_row("CI run", f"{result.run_id} ({result.tag}): {result.conclusion}")
    for job in result.jobs:
        table.add_row(f"  job {job['name']}", f"{job['conclusion']} on {job['runner']}")
    table.add_row("publication", f"id {result.publication_id}, {result.manifest_digest[:19]}…")
    table.add_row("signed as", result.signer_identity)
    table.add_row("platform", result.base_url)
    if result.booted_line:
        table.add_row("node", f"{result.booted_line.strip()} after {result.boot_seconds:.0f} s")
        table.add_row("node reports", " → ".join(result.reports))
    for name, secs in result.timings.items():
        table.add_row(f"time: {name}", f"{secs:.1f} s")
    stdout.print(table)
    stdout.print("[bold]Run timeline[/] (seconds since the push)")
    for seconds, line in result.timeline:
        stdout.print(f"  +{seconds:6.1f} s  {line}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
