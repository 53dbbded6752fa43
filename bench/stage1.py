"""Stage 1 overhead: plain mmdebstrap vs ``diskci build --stages rootfs --no-cache``, in the same run.

The plain run executes the very mmdebstrap command diskci would run for the spec (same options and
hooks), so the ratio is diskci's own cost: the Release fetch, hashing, the cache copy, packages.json and
the SBOM. Goals: ratio at most 1.10, a cache hit under 5 s. Needs root (mmdebstrap root mode).

    sudo .venv/bin/python bench/stage1.py [platforms/debian-12-amd64.yaml]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diskci.image.mirror import resolve_mirror
from diskci.image.pipeline import BuildContext
from diskci.image.rootfs import mmdebstrap_argv
from diskci.manifest import BuildManifest
from diskci.process import require_tool, tool_env
from diskci.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
EPOCH = 1764000000
GOAL_RATIO = 1.10
GOAL_HIT = 5.0


def plain_mmdebstrap(spec_path: Path, work: Path) -> float:
    spec = load_spec(spec_path)
    arch = spec.architectures[0]
    manifest = BuildManifest(
        platform=spec.name,
        version=spec.version,
        spec_digest=spec.digest(),
        spec=spec.normalized(),
        source_date_epoch=EPOCH,
    )
    ctx = BuildContext(spec, spec_path, arch, work, work / "cache", EPOCH, False, manifest)
    files = {f.source: spec_path.parent / f.source for f in spec.files}
    argv = mmdebstrap_argv(
        ctx,
        require_tool("mmdebstrap", "mmdebstrap"),
        resolve_mirror(spec, arch),
        files,
        work / "plain.tar",
        work / "plain-packages.tsv",
    )
    env = tool_env({"SOURCE_DATE_EPOCH": str(EPOCH), "INITRD": "No"})
    started = time.monotonic()
    with open(work / "plain.log", "wb") as log:
        subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True
        )
    return time.monotonic() - started


def diskci_build(spec_path: Path, out: Path, cache: Path, *extra: str) -> float:
    argv = [sys.executable, "-m", "diskci.cli.main", "build", str(spec_path), "--stages", "rootfs"]
    argv += ["--out", str(out), "--cache", str(cache), "--source-date-epoch", str(EPOCH), *extra]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"diskci build failed:\n{proc.stderr[-3000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", nargs="?", type=Path, default=REPO / "platforms" / "debian-12-amd64.yaml")
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/diskci rounds (median kept)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="diskci-bench-stage1-"))
    plain: list[float] = []
    built: list[float] = []
    try:
        for i in range(args.rounds):
            # alternate the order so network and page-cache warmth favour neither side
            first_plain = i % 2 == 0
            if first_plain:
                plain.append(plain_mmdebstrap(args.spec.resolve(), work))
            built.append(diskci_build(args.spec, work / f"out{i}", work / f"cache{i}", "--no-cache"))
            if not first_plain:
                plain.append(plain_mmdebstrap(args.spec.resolve(), work))
            (work / "plain.tar").unlink()
        t_hit = diskci_build(args.spec, work / "out-hit", work / "cache0")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t_plain, t_diskci = statistics.median(plain), statistics.median(built)
    ratio = t_diskci / t_plain
    ok_ratio = "ok" if ratio <= GOAL_RATIO else "MISSED"
    ok_hit = "ok" if t_hit < GOAL_HIT else "MISSED"
    rows = [
        ("plain mmdebstrap (median)", f"{t_plain:8.1f} s", " ".join(f"{t:.1f}" for t in plain)),
        (
            "diskci build --stages rootfs --no-cache",
            f"{t_diskci:8.1f} s",
            " ".join(f"{t:.1f}" for t in built),
        ),
        ("ratio diskci / mmdebstrap", f"{ratio:8.2f}", f"goal <= {GOAL_RATIO:.2f}: {ok_ratio}"),
        ("diskci build (cache hit)", f"{t_hit:8.1f} s", f"goal < {GOAL_HIT:.0f} s: {ok_hit}"),
    ]
    print(f"Stage 1 benchmark: {args.spec.name}, {args.rounds} round(s)")
    for name, value, note in rows:
        print(f"  {name:<42} {value:>10}  {note}")


if __name__ == "__main__":
    main()
