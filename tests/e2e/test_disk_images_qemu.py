"""Boot the disk images of real builds under QEMU (TCG) until the booted system says so.

- disk.qcow2 under OVMF (UEFI): systemd-boot -> kernel + initramfs -> root from the diskci-root partition.
- netboot.iso as a CD-ROM under SeaBIOS: GRUB El Torito -> kernel + initramfs -> root from the CD.
- a copy of disk.raw with bytes flipped inside its diskci-root partition: the initramfs refuses it.
- arm64 disk.raw under AAVMF (UEFI), systemd-boot taken from the arm64 root.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diskci.manifest import BuildManifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qemu_console import QemuConsole

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
BOOT_TIMEOUT = 180.0


def qemu_base() -> list[str]:
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


def booted_pattern(build: Path) -> str:
    manifest = BuildManifest.load(build)
    return re.escape(f"diskci: booted {manifest.platform} {manifest.version}")


def root_partition(disk: Path) -> tuple[int, int]:
    """(offset, size) in bytes of the diskci-root partition, as sfdisk reads the GPT."""
    table = json.loads(subprocess.run(["sfdisk", "-J", disk], capture_output=True, check=True).stdout)
    for part in table["partitiontable"]["partitions"]:
        if part.get("name") == "diskci-root":
            return part["start"] * 512, part["size"] * 512
    raise AssertionError(f"{disk} has no partition named diskci-root")


def test_disk_qcow2_boots_under_ovmf(amd64_build: Path, tmp_path: Path) -> None:
    disk = amd64_build / "amd64" / "disk.qcow2"
    argv = [*qemu_base(), *uefi(tmp_path), "-drive", f"if=virtio,format=qcow2,file={disk},snapshot=on"]
    with QemuConsole(argv, log_path=tmp_path / "console.log") as vm:
        vm.wait_for(r"diskci: verified sha256", timeout=BOOT_TIMEOUT)
        vm.wait_for(booted_pattern(amd64_build), timeout=BOOT_TIMEOUT)
        print(f"disk.qcow2 (UEFI) booted in {vm.elapsed:.0f}s")
    assert vm.saw(r"partlabel diskci-root")


def test_netboot_iso_boots_as_cdrom_under_seabios(amd64_build: Path, tmp_path: Path) -> None:
    iso = amd64_build / "amd64" / "netboot.iso"
    argv = [*qemu_base(), "-drive", f"media=cdrom,readonly=on,format=raw,file={iso}", "-boot", "d"]
    with QemuConsole(argv, log_path=tmp_path / "console.log") as vm:
        vm.wait_for(r"diskci: verified sha256", timeout=BOOT_TIMEOUT)
        vm.wait_for(booted_pattern(amd64_build), timeout=BOOT_TIMEOUT)
        print(f"netboot.iso (BIOS CD-ROM) booted in {vm.elapsed:.0f}s")
    assert vm.saw(r"copying /rootfs\.img from /dev/sr0")


def test_corrupted_root_partition_is_refused(amd64_build: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    shutil.copyfile(amd64_build / "amd64" / "disk.raw", disk)
    offset, size = root_partition(disk)
    with open(disk, "r+b") as f:  # flip 16 bytes in the middle of the root image (not its superblock)
        f.seek(offset + size // 2)
        data = f.read(16)
        f.seek(offset + size // 2)
        f.write(bytes(b ^ 0xFF for b in data))
    argv = [*qemu_base(), *uefi(tmp_path), "-drive", f"if=virtio,format=raw,file={disk}"]
    with QemuConsole(argv, log_path=tmp_path / "console.log") as vm:
        line = vm.wait_for(r"diskci: (error|booted)", timeout=BOOT_TIMEOUT)
        assert "diskci: error sha256_mismatch" in line, line
        assert "not mounting it" in line
    assert not vm.saw(r"diskci: switching root")


def test_arm64_disk_raw_boots_under_aavmf(arm64_build: Path, tmp_path: Path) -> None:
    """arm64 UEFI: AAVMF -> systemd-boot from the arm64 root (systemd-boot-efi) -> kernel -> root."""
    disk = arm64_build / "arm64" / "disk.raw"
    vars_copy = tmp_path / "AAVMF_VARS.fd"
    shutil.copyfile("/usr/share/AAVMF/AAVMF_VARS.fd", vars_copy)
    argv = [
        "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "1024", "-smp", "1",
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd",
        "-drive", f"if=pflash,format=raw,file={vars_copy}",
        "-drive", f"if=virtio,format=raw,file={disk},snapshot=on",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
    ]  # fmt: skip
    with QemuConsole(argv, log_path=tmp_path / "console.log") as vm:
        vm.wait_for(r"diskci: verified sha256", timeout=300)
        vm.wait_for(booted_pattern(arm64_build), timeout=300)
        print(f"arm64 disk.raw (UEFI) booted in {vm.elapsed:.0f}s")
    assert vm.saw(r"partlabel diskci-root")
