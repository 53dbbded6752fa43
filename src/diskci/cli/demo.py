"""``diskci demo``: build, sign, publish and netboot a platform image on the embedded defaults."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import typer
from rich.table import Table

from diskci.cli.output import print_json, stdout


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
    fresh: bool = typer.Option(True, "--fresh/--keep", help="Start the platform, registry and node anew."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run the whole path: build the spec, create the embedded signing authority, start the platform,
    configure its NodePlatform and webhook, publish (sign, push, notify), wait for the platform to
    verify the publication, make it the default and netboot a QEMU machine through /boot.ipxe.

    Example: [bold]diskci demo --spec platforms/debian-12-amd64.yaml[/]
    """
    from diskci.demo import DemoConfig, clean_state, run_demo

    state = state_dir or _default_state()
    if fresh:
        clean_state(state)
    result = run_demo(
        DemoConfig(
            spec_path=spec,
            state_dir=state,
            cache_dir=cache,
            build_dir=build_dir,
            source_date_epoch=source_date_epoch,
            boot=boot,
        )
    )
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


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
