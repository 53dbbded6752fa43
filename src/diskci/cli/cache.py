"""``diskci cache``: what the build cache holds, and pruning it to a size (least recently used first)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from diskci.cli.output import print_json, stdout
from diskci.image import cache
from diskci.image.cache import default_cache_dir

cache_app = typer.Typer(
    help="The build cache: every stage's outputs, kept by the digest of their inputs.", no_args_is_help=True
)

_CACHE_HELP = (
    "Cache directory (default: as diskci build: $DISKCI_CACHE, $XDG_CACHE_HOME/diskci,"
    " /var/cache/diskci as root)."
)


def _when(epoch: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch is not None else "-"


@cache_app.command("stats")
def stats(
    cache_dir: Path | None = typer.Option(None, "--cache", help=_CACHE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Show the cache's entries and bytes, per stage and in all, and its oldest and newest use.

    Example: [bold]diskci cache stats --cache /var/cache/diskci[/]
    """
    figures = cache.stats(cache_dir if cache_dir is not None else default_cache_dir())
    if json_out:
        print_json(figures)
        return
    total = cache.format_size(figures["bytes"])
    stdout.print(f"[bold]{figures['path']}[/]: {figures['entries']} entries, {total}")
    for stage, s in figures["stages"].items():
        stdout.print(f"  {stage:<10} {s['entries']:>4} entries  {cache.format_size(s['bytes']):>10}")
    oldest, newest = _when(figures["oldest_use"]), _when(figures["newest_use"])
    stdout.print(f"  least recently used {oldest}, most recently {newest}")


@cache_app.command("prune")
def prune(
    max_size: str = typer.Option(..., "--max-size", help="Size to prune down to: 20G, 512M, 0 (empty it)."),
    cache_dir: Path | None = typer.Option(None, "--cache", help=_CACHE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print what was removed as JSON."),
) -> None:
    """Remove the least recently used entries until the cache holds at most --max-size.

    Entries another build is using right now are kept. Example:
    [bold]diskci cache prune --max-size 20G[/]
    """
    limit = cache.parse_size(max_size)
    result = cache.prune(cache_dir if cache_dir is not None else default_cache_dir(), limit)
    if json_out:
        print_json(result)
        return
    stdout.print(
        f"removed {len(result['removed'])} entries ({cache.format_size(result['removed_bytes'])}); "
        f"{result['entries']} left, {cache.format_size(result['bytes'])} (limit {cache.format_size(limit)})"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
