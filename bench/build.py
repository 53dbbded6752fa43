"""Build benchmark: plain mmdebstrap vs. a cold full diskci build vs. a warm rebuild (amd64).

In one run, on this machine:
1. plain mmdebstrap for the spec: the very command the rootfs stage runs (same packages, hooks, mirror);
2. a cold full build of every family (``diskci build --no-cache`` with an empty cache);
3. a warm rebuild into a new directory with the cache of step 2 (root filesystem cached).
Goals: cold <= 1.6 x mmdebstrap, warm < 60 s. Prints a table with each stage's time; ``--json`` prints
the figures as JSON too. Needs root (mmdebstrap). Figures are recorded in docs/disk-images.md.

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

from diskci.image.mirror import resolve_mirror
from diskci.image.pipeline import BuildContext
from diskci.image.rootfs import mmdebstrap_argv
from diskci.manifest import BuildManifest
from diskci.process import tool_env
from diskci.spec import Architecture, load_spec

REPO = Path(__file__).resolve().parents[1]
EPOCH = 1764000000
COLD_RATIO_GOAL = 1.6
WARM_GOAL_S = 60.0
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "platforms" / "debian-12-amd64.yaml")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diskci-bench-", dir="/var/tmp") as w:
        work = Path(w)
        plain = plain_mmdebstrap(args.spec, work)
        print(f"plain mmdebstrap          {plain:7.1f} s", flush=True)
        cold, cold_stages = diskci_build(args.spec, work / "cold", work / "cache", no_cache=True)
        print(f"cold full build           {cold:7.1f} s  ({cold / plain:.2f} x mmdebstrap)", flush=True)
        warm, warm_stages = diskci_build(args.spec, work / "warm", work / "cache", no_cache=False)
        print(f"warm rebuild              {warm:7.1f} s", flush=True)
    print("\nstage            cold (s)   warm (s)")
    for name in cold_stages:
        print(f"{name:<16} {cold_stages[name]:8.1f} {warm_stages.get(name, 0.0):10.1f}")
    ratio = cold / plain
    cold_ok, warm_ok = ratio <= COLD_RATIO_GOAL, warm < WARM_GOAL_S
    print(f"\ngoal cold <= {COLD_RATIO_GOAL} x mmdebstrap: {'met' if cold_ok else 'MISSED'} ({ratio:.2f} x)")
    print(f"goal warm < {WARM_GOAL_S:.0f} s: {'met' if warm_ok else 'MISSED'} ({warm:.1f} s)")
    if args.json:
        figures = {
            "mmdebstrap_s": round(plain, 1),
            "cold_s": round(cold, 1),
            "warm_s": round(warm, 1),
            "cold_ratio": round(ratio, 2),
            "cold_stages_s": cold_stages,
            "warm_stages_s": warm_stages,
            "goals_met": {"cold": cold_ok, "warm": warm_ok},
        }
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
