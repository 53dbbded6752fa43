"""Netboot time: QEMU start to ``diskci: booted`` for amd64 under TCG, and the artifact sizes.

Builds ``platforms/debian-12-amd64.yaml`` up to the ipxe stage with the shared cache (or takes an
existing build directory), serves it on 127.0.0.1, boots ``qemu-system-x86_64 -accel tcg -boot n`` from
its iPXE ROM with ``bootfile=http://10.0.2.2:PORT/amd64/boot.ipxe`` and times each console milestone
(the time a line reached the console, from QEMU's start): the medians over the runs, both from the start
and as the phase since the previous milestone (iPXE's DHCP, the kernel and initramfs fetch, the kernel's
boot, the init's modules and DHCP, the root image download, its sha256 check, the mount, systemd).

With ``--secureboot`` it then boots the same build through the Secure Boot network chain a fleet
uses: OVMF's secboot firmware with a throwaway fleet key enrolled (``diskci platform secureboot``'s
steps), Debian's iPXE signed by that key as the boot loader (QEMU ``-kernel``: the firmware's
LoadImage checks it), DHCP's ``bootfile`` pointing at ``/boot.ipxe``, and the platform's own scripts
(``boot_chain_script``, then ``boot_script`` for a publication with a signed UKI) served with the
files where the platform serves them (``/netboot/1/amd64/``): iPXE chains the fleet-signed UKI, the
firmware verifies it, and its initramfs fetches and checks the root image as before. It prints the
same phase breakdown for that chain, and for the same chain on OVMF without Secure Boot (no SMM, no
keys: what UEFI itself costs against SeaBIOS, apart from verifying), and the medians side by side.

Run: ``.venv/bin/python bench/boot.py [--build-dir DIR] [--runs N] [--secureboot]`` (default 3 runs)
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
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
    argv += ["--arch", "amd64", "--out", str(out), "--cache", cache, "--stages", "ipxe,uki"]
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


SECUREBOOT_MILESTONES = (
    ("iPXE start", r"iPXE initialising devices"),
    ("boot.ipxe fetched", r"boot\.ipxe : \d+ bytes"),
    ("UKI chained", r"diskci: chaining the signed UKI"),
    ("UKI fetched", r"uki\.signed\.efi\.\.\..*ok"),
    ("initramfs running", r"diskci: starting"),
    ("network up", r"diskci: network up"),
    ("root downloaded", r"diskci: fetched \d+ bytes"),
    ("root verified", r"diskci: verified sha256"),
    ("switch_root", r"diskci: switching root"),
    ("booted", r"diskci: booted "),
)
PUBLICATION = 1  # the publication id the served layout and the signed command line name


def secureboot_layout(build_dir: Path, work: Path, served: Path, port: int) -> Path:
    """Fill ``served`` as the platform would serve it on ``port`` (``boot.ipxe``, ``ipxe``,
    ``netboot/1/amd64/``, with the platform's own functions); returns the fleet-signed iPXE. The
    variable store with the fleet key enrolled is ``work/vars.fd``."""
    from diskci.formats import pe
    from diskci.manifest import BuildManifest
    from diskci.platform.secureboot.ipxe import signed_ipxe
    from diskci.platform.secureboot.keys import FleetKey
    from diskci.platform.secureboot.signer import SbsignSigner
    from diskci.platform.secureboot.signing import signed_cmdline
    from diskci.platform.secureboot.varstore import write_varstore
    from diskci.platform.services.netboot import (
        BootRequest,
        BootTarget,
        boot_chain_script,
        boot_script,
    )

    key = FleetKey(work / "key" / "db.key", work / "key" / "db.crt")
    if not key.exists():
        key.rotate()
    signer = SbsignSigner(key)
    write_varstore(work / "vars.fd", "amd64", key.certificate())
    base = f"http://10.0.2.2:{port}"
    files = served / "netboot" / str(PUBLICATION) / "amd64"
    files.mkdir(parents=True, exist_ok=True)
    for name in ("vmlinuz", "initramfs.img", "rootfs.img"):
        link = files / name
        if not link.exists():
            link.symlink_to((build_dir / "amd64" / name).resolve())
    data = (build_dir / "amd64" / "uki.efi").read_bytes()
    cmdline = signed_cmdline(
        pe.PeImage.parse(data).section_data(".cmdline").decode().rstrip("\0"),
        base_url=base,
        publication_id=PUBLICATION,
        arch="amd64",
        not_after=4102444800,
    )
    (files / "uki.signed.efi").write_bytes(
        signer.sign(pe.replace_last_section(data, ".cmdline", cmdline.encode()))
    )
    manifest = BuildManifest.load(build_dir)
    root = manifest.arch("amd64").artifact("rootfs.img")
    spec = manifest.spec
    target = BootTarget(
        platform=manifest.platform,
        publication_id=PUBLICATION,
        version=manifest.version,
        arch="amd64",
        root_sha256=root.sha256,
        cmdline=(spec.get("arch_kernel_cmdline") or {}).get("amd64") or spec.get("kernel_cmdline") or "",
        node_id=None,
        root_size=root.size,
        signed_uki=True,
    )
    request = BootRequest(mac=None, uuid=None, platform=manifest.platform, arch="amd64")
    (served / "boot.ipxe").write_text(boot_chain_script(base))
    (served / "ipxe").write_text(boot_script(target, base, request))  # /ipxe?mac=..: the query is ignored
    ipxe = work / "ipxe.signed.efi"
    if not ipxe.exists():
        ipxe.write_bytes(signed_ipxe(signer, "amd64"))
    return ipxe


# The same UEFI firmware build without Secure Boot (and so without SMM), for the chain's own cost
UEFI_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
UEFI_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def secureboot_boot_once(build_dir: Path, work: Path, *, enforce: bool = True) -> dict[str, float]:
    """One boot through the Secure Boot iPXE chain (see the module docstring); with ``enforce``
    False the same chain on OVMF without Secure Boot (no SMM, no keys: nothing is verified)."""
    from diskci.platform.secureboot.varstore import FIRMWARE

    served = work / "served"
    served.mkdir(exist_ok=True)
    with serve_directory(served) as (port, _):
        ipxe = secureboot_layout(build_dir, work, served, port)
        varstore = work / "run-vars.fd"
        shutil.copyfile(work / "vars.fd" if enforce else UEFI_VARS, varstore)
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024"]
        if enforce:
            argv += ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={FIRMWARE['amd64']}"]
        else:
            argv += ["-machine", "q35"]
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={UEFI_CODE}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={varstore}", "-kernel", str(ipxe)]
        argv += ["-netdev", f"user,id=n0,bootfile=http://10.0.2.2:{port}/boot.ipxe"]
        argv += ["-device", "virtio-net-pci,netdev=n0,romfile="]
        argv += ["-no-reboot", "-nographic"]
        stamps: list[tuple[float, str]] = []
        done = threading.Event()
        with QemuConsole(argv) as vm:
            watcher = threading.Thread(target=_stamp_lines, args=(vm, stamps, done), daemon=True)
            watcher.start()
            vm.wait_for(SECUREBOOT_MILESTONES[-1][1], timeout=300)
            done.set()
            watcher.join()
    times: dict[str, float] = {}
    for name, pattern in SECUREBOOT_MILESTONES:
        rx = re.compile(pattern)
        times[name] = next((t for t, line in stamps if rx.search(line)), math.nan)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build-dir", type=Path, help="an existing build directory (default: build one)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--secureboot", action="store_true", help="also time the Secure Boot iPXE chain")
    args = parser.parse_args()
    secure: list[dict[str, float]] = []
    unenforced: list[dict[str, float]] = []
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
        for i in range(args.runs if args.secureboot else 0):
            secure.append(secureboot_boot_once(build_dir, Path(tmp)))
            print(f"secure boot run {i + 1}: booted after {secure[-1]['booted']:.1f} s", flush=True)
            unenforced.append(secureboot_boot_once(build_dir, Path(tmp), enforce=False))
            print(f"UEFI without Secure Boot run {i + 1}: booted after {unenforced[-1]['booted']:.1f} s")
    print_phases("milestone", runs, MILESTONES)
    if secure:
        print()
        print_phases("Secure Boot iPXE chain", secure, SECUREBOOT_MILESTONES)
        print()
        print_phases("same chain, no SB", unenforced, SECUREBOOT_MILESTONES)
        print(f"\n{'from start (medians)':24s} {'Secure Boot':>11s} {'no SB':>9s} {'today':>9s}")
        for name, _ in SECUREBOOT_MILESTONES:
            cells = [_median([r.get(name, math.nan) for r in rs]) for rs in (secure, unenforced, runs)]
            print(f"{name:24s} " + " ".join(f"{c:9.2f} s" for c in cells))
        sb, plain, legacy = (_median([r["booted"] for r in rs]) for rs in (secure, unenforced, runs))
        print(f"Secure Boot / today's path (SeaBIOS + iPXE ROM): {sb / legacy:.2f} (goal <= 1.10)")
        print(f"Secure Boot / the same UEFI chain without Secure Boot: {sb / plain:.2f}")


def print_phases(title: str, runs: list[dict[str, float]], milestones: tuple[tuple[str, str], ...]) -> None:
    """Each milestone's median time from QEMU's start and the median phase since the one before."""
    print(f"{title:24s} {'from start':>10s} {'phase':>8s}   (medians of {len(runs)} runs)")
    previous = [0.0] * len(runs)
    for name, _ in milestones:
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
