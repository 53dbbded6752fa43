"""Boot the disk images of a real amd64 build under QEMU (TCG) until the booted system says so.

- disk.qcow2 under OVMF (UEFI): systemd-boot -> kernel + initramfs -> root from the diskci-root partition.
- netboot.iso as a CD-ROM under SeaBIOS: GRUB El Torito -> kernel + initramfs -> root from the CD.
- a copy of disk.raw with bytes flipped inside its diskci-root partition: the initramfs refuses it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from diskci.build.manifest import BuildManifest

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
BOOT_TIMEOUT = 240.0


def boot(argv: Sequence[str], want: str, log: Path, *, timeout: float = BOOT_TIMEOUT) -> str:
    """Run QEMU until a serial console line contains ``want`` or a diskci error; return that line."""
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    found: list[str] = []
    lines: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
            lines.append(line)
            if want in line or "diskci: error" in line:
                found.append(line)
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    proc.kill()
    proc.wait()
    log.write_text("\n".join(lines) + "\n")
    if not found:
        tail = "\n".join(lines[-30:])
        pytest.fail(f"no {want!r} on the console within {timeout:.0f}s; last lines:\n{tail}")
    return found[0]


def qemu_base(tmp_path: Path) -> list[str]:
    return [
        shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
        "-accel", "tcg", "-m", "1536", "-smp", "1",
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        # User-mode network only; romfile= keeps iPXE out of the boot order.
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
    ]  # fmt: skip


def uefi(tmp_path: Path) -> list[str]:
    vars_copy = tmp_path / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, vars_copy)
    return [
        "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,file={vars_copy}",
    ]  # fmt: skip


def booted_line(build: Path) -> str:
    manifest = BuildManifest.load(build)
    return f"diskci: booted {manifest.platform} {manifest.version}"


def root_partition(disk: Path) -> tuple[int, int]:
    """(offset, size) in bytes of the diskci-root partition, as sfdisk reads the GPT."""
    table = json.loads(subprocess.run(["sfdisk", "-J", disk], capture_output=True, check=True).stdout)
    for part in table["partitiontable"]["partitions"]:
        if part.get("name") == "diskci-root":
            return part["start"] * 512, part["size"] * 512
    raise AssertionError(f"{disk} has no partition named diskci-root")


def test_disk_qcow2_boots_under_ovmf(amd64_build: Path, tmp_path: Path) -> None:
    disk = amd64_build / "amd64" / "disk.qcow2"
    want = booted_line(amd64_build)
    start = time.monotonic()
    line = boot(
        [*qemu_base(tmp_path), *uefi(tmp_path), "-drive", f"if=virtio,format=qcow2,file={disk},snapshot=on"],
        want,
        tmp_path / "console.log",
    )
    assert want in line, line
    print(f"disk.qcow2 (UEFI) reached {want!r} in {time.monotonic() - start:.0f}s")


def test_netboot_iso_boots_as_cdrom_under_seabios(amd64_build: Path, tmp_path: Path) -> None:
    iso = amd64_build / "amd64" / "netboot.iso"
    want = booted_line(amd64_build)
    start = time.monotonic()
    line = boot(
        [*qemu_base(tmp_path), "-drive", f"media=cdrom,readonly=on,format=raw,file={iso}", "-boot", "d"],
        want,
        tmp_path / "console.log",
    )
    assert want in line, line
    print(f"netboot.iso (BIOS CD-ROM) reached {want!r} in {time.monotonic() - start:.0f}s")


def test_corrupted_root_partition_is_refused(amd64_build: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    shutil.copyfile(amd64_build / "amd64" / "disk.raw", disk)
    offset, size = root_partition(disk)
    with open(disk, "r+b") as f:  # flip 16 bytes in the middle of the root image (not its superblock)
        f.seek(offset + size // 2)
        data = f.read(16)
        f.seek(offset + size // 2)
        f.write(bytes(b ^ 0xFF for b in data))
    line = boot(
        [*qemu_base(tmp_path), *uefi(tmp_path), "-drive", f"if=virtio,format=raw,file={disk}"],
        "diskci: booted",
        tmp_path / "console.log",
    )
    assert "diskci: error sha256_mismatch" in line, line
    log = (tmp_path / "console.log").read_text()
    assert "switching root" not in log
