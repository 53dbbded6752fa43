"""Benchmark: ``diskci composefs build`` on the Stage-1 root filesystem tarball against ``mkfs.erofs``
(and ``mkcomposefs`` where installed) on the same tree extracted, in the same run.

diskci reads the tarball directly (no extraction), hashes every file (fs-verity) and fills the object
store; mkfs.erofs packs the extracted tree with its data. Best of N rounds each; goal: diskci / mkfs.erofs
<= 3. Usage: ``python bench/composefs.py [TARBALL]`` (default: a build's amd64/rootfs.tar or the dev one).
Needs root (extracting device nodes and ownership).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 3.0
CANDIDATES = (Path("out/debian-12-amd64/amd64/rootfs.tar"), Path("/var/cache/diskci-dev/amd64-rootfs.tar"))


# the same build timed inside Python, without the CLI's start-up (importing every command group)
_LIBRARY = """
import sys, time
from pathlib import Path
from diskci.formats import composefs
start = time.perf_counter()
composefs.build(Path(sys.argv[1]), Path(sys.argv[2]), digest_store=Path(sys.argv[3]))
print(time.perf_counter() - start)
"""


def run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tarball", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp"),
        help="Where the extracted tree and every output go (e.g. a tmpfs, to leave the disk out).",
    )
    args = parser.parse_args()
    tarball = args.tarball or next((p for p in CANDIDATES if p.is_file()), None)
    if tarball is None:
        print("no rootfs tarball: pass one (e.g. out/<platform>/amd64/rootfs.tar)", file=sys.stderr)
        return 2
    mkfs = shutil.which("mkfs.erofs")
    if mkfs is None:
        print("mkfs.erofs (Debian package 'erofs-utils') is not installed", file=sys.stderr)
        return 2
    mkcomposefs = shutil.which("mkcomposefs")
    diskci = [sys.executable, "-m", "diskci.cli.main", "composefs", "build"]
    with tempfile.TemporaryDirectory(prefix="bench-composefs-", dir=args.workdir) as tmp:
        base = Path(tmp)
        tree = base / "tree"
        tree.mkdir()
        subprocess.run(
            [
                "tar",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-p",
                "-xf",
                str(tarball),
                "-C",
                str(tree),
            ],
            check=True,
        )
        subprocess.run(["cat", str(tarball)], check=True, stdout=subprocess.DEVNULL)  # page cache
        times: dict[str, list[float]] = {
            "diskci": [],
            "diskci (library)": [],
            "mkfs.erofs": [],
            "mkcomposefs": [],
        }
        library = [sys.executable, "-c", _LIBRARY]
        for i in range(args.rounds):
            out = base / f"round{i}"
            out.mkdir()
            times["diskci"].append(
                run([*diskci, str(tarball), str(out / "d.cfs"), "--digest-store", str(out / "d-objects")])
            )
            times["diskci (library)"].append(
                float(subprocess.run([*library, str(tarball), str(out / "l.cfs"), str(out / "l-objects")],
                                     check=True, capture_output=True, text=True).stdout)
            )  # fmt: skip
            times["mkfs.erofs"].append(run([mkfs, "--quiet", str(out / "m.erofs"), str(tree)]))
            if mkcomposefs:
                times["mkcomposefs"].append(
                    run([mkcomposefs, f"--digest-store={out / 'c-objects'}", str(tree), str(out / "c.cfs")])
                )
            shutil.rmtree(out)
    best = {k: min(v) for k, v in times.items() if v}
    print(f"tarball: {tarball} ({tarball.stat().st_size / 1e6:.0f} MB), best of {args.rounds}")
    for name, t in best.items():
        print(f"{name:18s} {t:6.2f} s")
    if not mkcomposefs:
        print("mkcomposefs: not installed (Debian 13: apt-get install composefs)")
    ratio = best["diskci"] / best["mkfs.erofs"]
    print(f"ratio diskci/mkfs.erofs: {ratio:.2f} (goal <= {GOAL})")
    print(f"ratio diskci (library)/mkfs.erofs: {best['diskci (library)'] / best['mkfs.erofs']:.2f}")
    if "mkcomposefs" in best:
        print(f"ratio diskci/mkcomposefs: {best['diskci'] / best['mkcomposefs']:.2f}")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
