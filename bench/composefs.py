"""Benchmark: ``diskci composefs build`` on the Stage-1 root filesystem tarball against ``mkfs.erofs``
(and ``mkcomposefs`` where installed) on the same tree extracted, in the same run.

diskci reads the tarball directly (no extraction), hashes every file (fs-verity) and fills the object
store; mkfs.erofs packs the extracted tree with its data. Best of N rounds each; goal: diskci / mkfs.erofs
<= 3. Usage: ``python bench/composefs.py [TARBALL]`` (default: a build's amd64/rootfs.tar or the dev one).
Needs root (extracting device nodes and ownership).

``--from-file``: ``diskci composefs build --from-file`` on a large dump (the dump of the tarball's image,
or of a generated tree of ``--files`` files when no tarball is around) against ``mkcomposefs --from-file``
where installed; goal: diskci / mkcomposefs <= 1.0. Needs no root.
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


FROM_FILE_GOAL = 1.0

_LIBRARY_FROM_FILE = """
import sys, time
from pathlib import Path
from diskci.formats import composefs, composefs_dump
start = time.perf_counter()
composefs.build_described(composefs_dump.read(sys.argv[1]), Path(sys.argv[2]))
print(time.perf_counter() - start)
"""


def _generated_tree(files: int) -> object:
    import os
    import stat

    from diskci.formats.fstree import Node

    root = Node.directory(0o755, mtime=1_700_000_000)
    per_dir = 200
    for d in range(-(-files // per_dir)):
        sub = root.add(b"dir-%05d" % d, Node.directory(0o755, mtime=1_700_000_000 + d))
        for i in range(min(per_dir, files - d * per_dir)):
            n = d * per_dir + i
            name = b"file-%07d.so" % n
            if n % 10 == 0:
                sub.add(name, Node.symlink(b"../dir-00000/" + name))
            elif n % 97 == 0:
                sub.add(name, Node(mode=stat.S_IFCHR | 0o600, rdev=os.makedev(1, n % 256)))
            else:
                data = os.urandom(n % 50) if n % 3 == 0 else os.urandom(100 + n % 5000)
                sub.add(
                    name, Node.file(data, 0o644, xattrs={b"security.selinux": b"system_u:object_r:lib_t:s0"})
                )
    return root


def bench_from_file(args: argparse.Namespace, tarball: Path | None) -> int:
    from diskci.formats import composefs, composefs_dump, fstree

    mkcomposefs = shutil.which("mkcomposefs")
    with tempfile.TemporaryDirectory(prefix="bench-composefs-dump-", dir=args.workdir) as tmp:
        base = Path(tmp)
        tree = fstree.from_tar(tarball) if tarball is not None else _generated_tree(args.files)
        described, _, _ = composefs.describe(tree)  # type: ignore[arg-type]
        dump = base / "tree.dump"
        with open(dump, "wb") as f:
            composefs_dump.write(described, f)
        times: dict[str, list[float]] = {"diskci": [], "diskci (library)": [], "mkcomposefs": []}
        diskci = [sys.executable, "-m", "diskci.cli.main", "composefs", "build", "--from-file"]
        for i in range(args.rounds):
            times["diskci"].append(run([*diskci, str(dump), str(base / f"d{i}.cfs")]))
            library = [sys.executable, "-c", _LIBRARY_FROM_FILE, str(dump), str(base / f"l{i}.cfs")]
            out = subprocess.run(library, check=True, capture_output=True, text=True).stdout
            times["diskci (library)"].append(float(out))
            if mkcomposefs:
                times["mkcomposefs"].append(
                    run([mkcomposefs, "--from-file", str(dump), str(base / f"c{i}.cfs")])
                )
        identical = mkcomposefs is None or (base / "d0.cfs").read_bytes() == (base / "c0.cfs").read_bytes()
        lines = dump.read_bytes().count(b"\n")
        size = dump.stat().st_size
    best = {k: min(v) for k, v in times.items() if v}
    print(f"dump: {lines} lines ({size / 1e6:.0f} MB), best of {args.rounds}")
    for name, t in best.items():
        print(f"{name:18s} {t:6.2f} s")
    if "mkcomposefs" not in best:
        print("mkcomposefs: not installed (Debian 13: apt-get install composefs)")
        return 0
    print(f"images byte-identical: {identical}")
    ratio = best["diskci"] / best["mkcomposefs"]
    print(f"ratio diskci/mkcomposefs: {ratio:.2f} (goal <= {FROM_FILE_GOAL})")
    print(f"ratio diskci (library)/mkcomposefs: {best['diskci (library)'] / best['mkcomposefs']:.2f}")
    return 0 if ratio <= FROM_FILE_GOAL and identical else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tarball", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--from-file", action="store_true", help="Benchmark building from a dump.")
    parser.add_argument(
        "--files", type=int, default=100_000, help="Files of the generated tree (--from-file)."
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp"),
        help="Where the extracted tree and every output go (e.g. a tmpfs, to leave the disk out).",
    )
    args = parser.parse_args()
    tarball = args.tarball or next((p for p in CANDIDATES if p.is_file()), None)
    if args.from_file:
        return bench_from_file(args, tarball)
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
