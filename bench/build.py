"""Build benchmark: plain mmdebstrap vs. a cold full diskci build vs. rebuilds from the cache (amd64).

In one run, on this machine:
1. plain mmdebstrap for the spec: the very command the rootfs stage runs (same packages, hooks, mirror);
2. a cold full build of every family (``diskci build --no-cache`` with an empty cache);
3. a rebuild with nothing changed, into a new directory with the cache of step 2 (every stage a hit);
4. a rebuild after a kernel command line change (a copy of the spec with another ``kernel_cmdline``):
   only the stages that embed the command line (ipxe, raw, iso, and qcow2 after raw) rerun.
Goals: cold <= 1.35 x mmdebstrap, no-change rebuild < 3 s, command-line rebuild < 10 s. Prints a table
with each stage's time; ``--json`` prints the figures as JSON too. Needs root (mmdebstrap). Figures are
recorded in docs/disk-images.md.

Usage: sudo .venv/bin/python bench/build.py [--spec platforms/debian-12-amd64.yaml] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diskci.image.mirror import resolve_mirror
from diskci.image.pipeline import BuildContext
from diskci.image.rootfs import mmdebstrap_argv
from diskci.manifest import BuildManifest
from diskci.process import tool_env
from diskci.spec import Architecture, load_spec

REPO = Path(__file__).resolve().parents[1]
EPOCH = 1764000000
COLD_RATIO_GOAL = 1.35
NO_CHANGE_GOAL_S = 3.0
CMDLINE_GOAL_S = 10.0
STAGE_DONE = re.compile(r"INFO (\w+) [(\[](\w+)[)\]] done \(([\d.]+)s\)")


def plain_mmdebstrap(spec_path: Path, work: Path) -> float:
    spec = load_spec(spec_path)
    arch = Architecture.amd64
    ctx = BuildContext(
        spec=spec,
        spec_path=spec_path,
        arch=arch,
        build_dir=work,
        cache_dir=work / "unused-cache",
        source_date_epoch=EPOCH,
        use_cache=False,
        manifest=BuildManifest(
            platform=spec.name,
            version=spec.version,
            spec_digest=spec.digest(),
            spec=spec.normalized(),
            source_date_epoch=EPOCH,
        ),
    )
    files = {f.source: spec_path.parent / f.source for f in spec.files}
    argv = mmdebstrap_argv(
        ctx, "mmdebstrap", resolve_mirror(spec, arch), files, work / "plain.tar", work / "plain.packages"
    )
    env = tool_env({"SOURCE_DATE_EPOCH": str(EPOCH), "INITRD": "No"})
    start = time.monotonic()
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"plain mmdebstrap failed:\n{proc.stderr[-3000:]}")
    (work / "plain.tar").unlink()
    return elapsed


def diskci_build(
    spec_path: Path, out: Path, cache: Path, *, no_cache: bool
) -> tuple[float, dict[str, float]]:
    argv = [sys.executable, "-m", "diskci.cli.main", "build", str(spec_path), "--arch", "amd64"]
    argv += ["--out", str(out), "--cache", str(cache), "--source-date-epoch", str(EPOCH)]
    if no_cache:
        argv.append("--no-cache")
    start = time.monotonic()
    proc = subprocess.run(argv, env={**os.environ, "CI": "true"}, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"diskci build failed:\n{proc.stderr[-3000:]}")
    stages = {m.group(1): float(m.group(3)) for m in STAGE_DONE.finditer(proc.stderr)}
    return elapsed, stages


def cmdline_variant(spec_path: Path, work: Path) -> Path:
    """A copy of the spec in ``work`` with another kernel command line (it copies no files in)."""
    data = yaml.safe_load(spec_path.read_text())
    data["kernel_cmdline"] = f"{data.get('kernel_cmdline', '')} diskci.bench=1".strip()
    dest = work / f"{spec_path.stem}-cmdline.yaml"
    dest.write_text(yaml.safe_dump(data))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "platforms" / "debian-12-amd64.yaml")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if load_spec(args.spec).files:
        sys.exit(f"{args.spec} copies files in: the command-line variant could not find them")
    runs: dict[str, tuple[float, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="diskci-bench-", dir="/var/tmp") as w:
        work = Path(w)
        plain = plain_mmdebstrap(args.spec, work)
        print(f"plain mmdebstrap            {plain:7.1f} s", flush=True)
        cache = work / "cache"
        steps = (
            ("cold full build", args.spec, "cold", True),
            ("no-change rebuild", args.spec, "again", False),
            ("cmdline change rebuild", cmdline_variant(args.spec, work), "cmdline", False),
        )
        for label, spec, out, no_cache in steps:
            runs[label] = diskci_build(spec, work / out, cache, no_cache=no_cache)
            took = runs[label][0]
            print(f"{label:<27} {took:7.1f} s  ({took / plain:.2f} x mmdebstrap)", flush=True)
    labels = list(runs)
    print(f"\n{'stage':<16}" + "".join(f"{label.split()[0]:>10}" for label in labels) + "   (s)")
    for name in runs[labels[0]][1]:
        print(f"{name:<16}" + "".join(f"{runs[label][1].get(name, 0.0):10.1f}" for label in labels))
    cold, again, cmdline = (runs[label][0] for label in labels)
    ratio = cold / plain
    goals = {
        "cold": ratio <= COLD_RATIO_GOAL,
        "no_change": again < NO_CHANGE_GOAL_S,
        "cmdline": cmdline < CMDLINE_GOAL_S,
    }
    met = {True: "met", False: "MISSED"}
    print(f"\ngoal cold <= {COLD_RATIO_GOAL} x mmdebstrap: {met[goals['cold']]} ({ratio:.2f} x)")
    print(f"goal no-change rebuild < {NO_CHANGE_GOAL_S:.0f} s: {met[goals['no_change']]} ({again:.1f} s)")
    print(f"goal cmdline change rebuild < {CMDLINE_GOAL_S:.0f} s: {met[goals['cmdline']]} ({cmdline:.1f} s)")
    if args.json:
        figures = {
            "mmdebstrap_s": round(plain, 1),
            "cold_s": round(cold, 1),
            "no_change_s": round(again, 1),
            "cmdline_s": round(cmdline, 1),
            "ratios": {
                "cold": round(ratio, 2),
                "no_change": round(again / plain, 2),
                "cmdline": round(cmdline / plain, 2),
            },
            "stages_s": {label: runs[label][1] for label in labels},
            "goals_met": goals,
        }
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
