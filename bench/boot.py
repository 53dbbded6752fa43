"""Netboot time: QEMU start to ``diskci: booted`` for amd64 under TCG, and the artifact sizes.

Builds ``platforms/debian-12-amd64.yaml`` up to the ipxe stage with the shared cache (or takes an
existing build directory), serves it on 127.0.0.1, boots ``qemu-system-x86_64 -accel tcg -boot n`` from
its iPXE ROM with ``bootfile=http://10.0.2.2:PORT/amd64/boot.ipxe`` and times each console milestone
(the time a line reached the console, from QEMU's start): the medians over the runs, both from the start
and as the phase since the previous milestone (iPXE's DHCP, the kernel and initramfs fetch, the kernel's
boot, the init's modules and DHCP, the root image download, its sha256 check, the mount, systemd).

Run: ``.venv/bin/python bench/boot.py [--build-dir DIR] [--runs N]`` (default 3 runs)
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from qemu_console import QemuConsole, serve_directory  # noqa: E402

# (name, console pattern), in the order they appear
MILESTONES = (
    ("iPXE start", r"iPXE initialising devices"),
    ("boot.ipxe fetched", r"boot\.ipxe : \d+ bytes"),
    ("kernel fetched", r"vmlinuz\.\.\. ok"),
    ("initramfs running", r"diskci: starting"),
    ("network up", r"diskci: network up"),
    ("root downloaded", r"diskci: fetched \d+ bytes"),
    ("root verified", r"diskci: verified sha256"),
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


def _stamp_lines(vm: QemuConsole, stamps: list[tuple[float, str]], done: threading.Event) -> None:
    """Record when each console line arrived (polled every 10 ms)."""
    seen = 0
    while True:
        stopping = done.wait(0.01)
        lines = vm.lines[seen:]
        seen += len(lines)
        now = vm.elapsed
        stamps.extend((now, line) for line in lines)
        if stopping:  # the lines read after the stop was asked for are the last ones
            return


def boot_once(build_dir: Path) -> dict[str, float]:
    """Seconds from QEMU's start to the first console line of each milestone (NaN: none seen; iPXE's
    and the kernel's output can interleave on the serial console and garble a line)."""
    with serve_directory(build_dir) as (port, _):
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-boot", "n", "-no-reboot", "-nographic"]
        argv += ["-netdev", f"user,id=n0,bootfile=http://10.0.2.2:{port}/amd64/boot.ipxe"]
        argv += ["-device", "virtio-net-pci,netdev=n0"]
        stamps: list[tuple[float, str]] = []
        done = threading.Event()
        with QemuConsole(argv) as vm:
            watcher = threading.Thread(target=_stamp_lines, args=(vm, stamps, done), daemon=True)
            watcher.start()
            vm.wait_for(MILESTONES[-1][1], timeout=240)
            done.set()
            watcher.join()
    times: dict[str, float] = {}
    for name, pattern in MILESTONES:
        rx = re.compile(pattern)
        times[name] = next((t for t, line in stamps if rx.search(line)), math.nan)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build-dir", type=Path, help="an existing build directory (default: build one)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diskci-bench-boot-") as tmp:
        build_dir = args.build_dir or Path(tmp) / "build"
        if args.build_dir is None:
            build(build_dir)
        arch_dir = build_dir / "amd64"
        for name in ("vmlinuz", "initramfs.img", "rootfs.img"):
            print(f"{name:14s} {(arch_dir / name).stat().st_size / 1e6:8.1f} MB")
        runs = []
        for i in range(args.runs):
            runs.append(boot_once(build_dir))
            print(f"run {i + 1}: booted after {runs[-1]['booted']:.1f} s", flush=True)
    print(f"{'milestone':24s} {'from start':>10s} {'phase':>8s}   (medians of {len(runs)} runs)")
    previous = [0.0] * len(runs)
    for name, _ in MILESTONES:
        values = [r[name] for r in runs]
        phases = [v - p for v, p in zip(values, previous, strict=True)]
        previous = [p if math.isnan(v) else v for v, p in zip(values, previous, strict=True)]
        print(f"{name:24s} {_median(values):8.2f} s {_median(phases):6.2f} s")


def _median(values: list[float]) -> float:
    """The median of the values that are not NaN (NaN when none is)."""
    seen = [v for v in values if not math.isnan(v)]
    return statistics.median(seen) if seen else math.nan


if __name__ == "__main__":
    main()
