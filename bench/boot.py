"""Netboot time: QEMU start to ``diskci: booted`` for amd64 under TCG, and the artifact sizes.

Builds ``platforms/debian-12-amd64.yaml`` up to the ipxe stage with the shared cache (or takes an
existing build directory), serves it on 127.0.0.1, boots ``qemu-system-x86_64 -accel tcg -boot n`` from
its iPXE ROM with ``bootfile=http://10.0.2.2:PORT/amd64/boot.ipxe`` and times each console milestone.

Run: ``.venv/bin/python bench/boot.py [--build-dir DIR] [--runs N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from qemu_console import QemuConsole, serve_directory  # noqa: E402

MILESTONES = (
    ("initramfs running", r"diskci: starting"),
    ("root image verified", r"diskci: verified sha256"),
    ("switch_root", r"diskci: switching root"),
    ("booted", r"diskci: booted "),
)


def build(out: Path) -> None:
    cache = os.environ.get("DISKCI_TEST_CACHE", "/var/cache/diskci-test")
    argv = [
        sys.executable,
        "-m",
        "diskci.cli.main",
        "build",
        str(REPO / "platforms" / "debian-12-amd64.yaml"),
    ]
    argv += ["--arch", "amd64", "--out", str(out), "--cache", cache, "--stages", "ipxe"]
    argv += ["--source-date-epoch", "1764000000"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "CI": "true"})
    if proc.returncode != 0:
        raise SystemExit(f"bench: diskci build failed:\n{proc.stderr[-4000:]}")


def boot_once(build_dir: Path) -> dict[str, float]:
    with serve_directory(build_dir) as (port, _):
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-boot", "n", "-no-reboot", "-nographic"]
        argv += ["-netdev", f"user,id=n0,bootfile=http://10.0.2.2:{port}/amd64/boot.ipxe"]
        argv += ["-device", "virtio-net-pci,netdev=n0"]
        times: dict[str, float] = {}
        with QemuConsole(argv) as vm:
            for name, pattern in MILESTONES:
                vm.wait_for(pattern, timeout=240)
                times[name] = vm.elapsed
        return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build-dir", type=Path, help="an existing build directory (default: build one)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diskci-bench-boot-") as tmp:
        build_dir = args.build_dir or Path(tmp) / "build"
        if args.build_dir is None:
            build(build_dir)
        arch_dir = build_dir / "amd64"
        for name in ("vmlinuz", "initramfs.img", "rootfs.img"):
            print(f"{name:14s} {(arch_dir / name).stat().st_size / 1e6:8.1f} MB")
        runs = [boot_once(build_dir) for _ in range(args.runs)]
    for name, _ in MILESTONES:
        values = [r[name] for r in runs]
        print(f"QEMU start -> {name:20s} {statistics.median(values):6.1f} s (median of {len(values)})")


if __name__ == "__main__":
    main()
