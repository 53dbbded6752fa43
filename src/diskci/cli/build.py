"""``diskci build``: run the image pipeline for a platform spec and write build.json.

With ``--github-output`` (in a CI job) it also appends ``digests=<{artifact path: sha256}, compact
JSON>`` to the file ``$GITHUB_OUTPUT`` names: the build job's output the platform compares between the
two builds of a reproducibility check.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from diskci.ci.workflow import DIGESTS_OUTPUT
from diskci.cli.output import print_json, stdout
from diskci.errors import UsageError
from diskci.image.cache import DEFAULT_MAX_SIZE, default_cache_dir, parse_size
from diskci.image.pipeline import STAGE_NAMES, resolve_stages, run_build
from diskci.manifest import BuildManifest
from diskci.spec import load_spec


def _split(values: list[str] | None) -> list[str]:
    """Accept repeated flags and comma-separated lists alike."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def build(
    spec: Path = typer.Argument(..., help="Platform spec (platforms/<name>.yaml)."),
    arch: list[str] | None = typer.Option(
        None, "--arch", "-a", help="Architecture to build (repeatable; default: all of the spec's)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Build directory (default: ./out/<platform>)."),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help="Cache directory (default: $DISKCI_CACHE, $XDG_CACHE_HOME/diskci, /var/cache/diskci as root).",
    ),
    source_date_epoch: int | None = typer.Option(
        None,
        "--source-date-epoch",
        min=0,
        help="Reproducible timestamp (default: $SOURCE_DATE_EPOCH, the spec's, its git commit time).",
    ),
    stages: list[str] | None = typer.Option(
        None,
        "--stages",
        help=f"Stages to run, with what they need (comma-separated): {', '.join(STAGE_NAMES)}.",
    ),
    formats: list[str] | None = typer.Option(
        None, "--formats", help="Artifact families to produce (stage names; combined with --stages)."
    ),
    no_cache: bool = typer.Option(
        False,
        "--no-cache",
        envvar="DISKCI_NO_CACHE",
        help="Rebuild even when cached (refreshes the cache).",
    ),
    jobs: int | None = typer.Option(
        None, "--jobs", "-j", min=1, help="Stages run at once, where they can (default: the CPU count)."
    ),
    cache_max_size: str = typer.Option(
        DEFAULT_MAX_SIZE,
        "--cache-max-size",
        envvar="DISKCI_CACHE_MAX_SIZE",
        help="After the build, prune the cache to this size, least recently used first (0: no limit).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print build.json to stdout when done."),
    github_output: bool = typer.Option(
        False,
        "--github-output",
        help=f"In a CI job: append {DIGESTS_OUTPUT}=<artifact digests, JSON> to the file $GITHUB_OUTPUT.",
    ),
) -> None:
    """Build a platform's images: Stage 1 root filesystem (mmdebstrap), then the stages after it.

    Writes DIR/<arch>/rootfs.tar, packages.json, sbom.spdx.json, the later stages' artifacts and
    DIR/build.json (see docs/build-json.md). Needs root for mmdebstrap. Every stage is cached by its
    inputs: a rebuild reruns only the stages whose inputs changed (see diskci cache).

    Example: [bold]sudo diskci build platforms/debian-12-amd64.yaml --stages rootfs[/]
    """
    output_file = _github_output_file() if github_output else None
    limit = parse_size(cache_max_size)
    chosen = _split(stages) + [f for f in _split(formats) if f not in _split(stages)]
    resolve_stages(chosen)  # unknown names fail here (UsageError), before the spec is read
    platform = load_spec(spec).name
    out_dir = out if out is not None else Path("out") / platform
    started = time.monotonic()
    manifest = run_build(
        spec,
        _split(arch) or None,
        out_dir,
        cache if cache is not None else default_cache_dir(),
        source_date_epoch,
        chosen or None,
        use_cache=not no_cache,
        jobs=jobs,
        cache_max_size=limit or None,
    )
    elapsed = time.monotonic() - started
    if output_file is not None:
        with output_file.open("a", encoding="utf-8") as sink:
            sink.write(f"{DIGESTS_OUTPUT}={artifact_digests(manifest)}\n")
    if json_out:
        print_json(manifest)
        return
    stdout.print(
        f"[bold]{manifest.platform}[/] {manifest.version} built in {elapsed:.1f}s → {out_dir}/build.json"
    )
    for name, ab in manifest.architectures.items():
        for stage, info in ab.cache.items():
            state = "cache hit" if info.get("hit") else "built"
            stdout.print(f"  {name} {stage}: {state} (key {str(info.get('key', ''))[:16]})")
        for art in ab.artifacts:
            stdout.print(f"  {art.path}  {art.size:>12,d} B  sha256:{art.sha256[:16]}…")


def artifact_digests(manifest: BuildManifest) -> str:
    """``{artifact path: sha256}`` of every artifact of the build, as compact JSON (keys sorted)."""
    digests = {art.path: art.sha256 for art in manifest.all_artifacts()}
    return json.dumps(digests, sort_keys=True, separators=(",", ":"))


def _github_output_file() -> Path:
    name = os.environ.get("GITHUB_OUTPUT", "")
    if not name:
        raise UsageError("--github-output: GITHUB_OUTPUT is not set (it is, in a CI job's step)")
    return Path(name)


def register(app: typer.Typer) -> None:
    app.command("build")(build)
