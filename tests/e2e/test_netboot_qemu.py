"""Network boots of real builds under QEMU (TCG), and the rebuild check of the netboot artifacts.

- amd64: the iPXE ROM fetches boot.ipxe from a 127.0.0.1 HTTP server (the guest's 10.0.2.2) serving the
  build directory; kernel, initramfs and root image follow from relative URLs; the guest prints
  ``diskci: booted <platform> <version>``.
- amd64 with one byte of rootfs.img changed on the server: the init prints the sha256 mismatch line,
  halts, and never switches root.
- arm64: ``-M virt`` direct kernel + initramfs boot, the root image fetched over HTTP, with progress
  reported as JSON to the same server.
- vmlinuz, initramfs.img, rootfs.img and boot.ipxe rebuilt from the same rootfs.tar are bit-identical.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from diskci.image.pipeline import BuildContext
from diskci.manifest import BuildManifest
from diskci.spec import Architecture, load_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qemu_console import QemuConsole, serve_directory

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 150.0
NETBOOT_FILES = ("vmlinuz", "initramfs.img", "rootfs.img", "boot.ipxe")


def _amd64_netboot(port: int) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-boot",
        "n",
        "-no-reboot",
        "-netdev",
        f"user,id=n0,bootfile=http://10.0.2.2:{port}/amd64/boot.ipxe",
        "-device",
        "virtio-net-pci,netdev=n0",
        "-nographic",
    ]


def test_amd64_netboot_reaches_the_booted_system(amd64_build: Path, tmp_path: Path) -> None:
    manifest = BuildManifest.load(amd64_build)
    with (
        serve_directory(amd64_build) as (port, requests),
        QemuConsole(_amd64_netboot(port), log_path=tmp_path / "console.log") as vm,
    ):
        vm.wait_for(r"diskci: verified sha256 ", timeout=BOOT_TIMEOUT)
        line = vm.wait_for(r"diskci: (booted|error)", timeout=BOOT_TIMEOUT)
        assert line.strip() == f"diskci: booted {manifest.platform} {manifest.version}", vm.tail()
        sys.stderr.write(f"\n[netboot] amd64 booted {vm.elapsed:.1f}s after QEMU started\n")
    fetched = [path for method, path, _ in requests if method == "GET"]
    assert fetched == [f"/amd64/{name}" for name in ("boot.ipxe", "vmlinuz", "initramfs.img", "rootfs.img")]


def test_amd64_netboot_refuses_a_changed_root_image(amd64_build: Path, tmp_path: Path) -> None:
    served = tmp_path / "served" / "amd64"
    served.mkdir(parents=True)
    for name in ("vmlinuz", "initramfs.img", "boot.ipxe"):
        (served / name).symlink_to(amd64_build / "amd64" / name)
    shutil.copyfile(amd64_build / "amd64" / "rootfs.img", served / "rootfs.img")
    with open(served / "rootfs.img", "r+b") as f:
        f.seek(f.seek(0, 2) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with (
        serve_directory(served.parent) as (port, requests),
        QemuConsole(_amd64_netboot(port), log_path=tmp_path / "console.log") as vm,
    ):
        line = vm.wait_for(r"diskci: (error|booted|switching)", timeout=BOOT_TIMEOUT)
        assert line.startswith("diskci: error sha256_mismatch: sha256 mismatch for http://10.0.2.2:"), (
            vm.tail()
        )
        vm.wait_for(r"System halted", timeout=30)
        assert not vm.saw(r"diskci: (switching root|booted)"), vm.tail()
    assert ("GET", "/amd64/rootfs.img", b"") in requests


def test_arm64_direct_boot_fetches_verifies_and_reports(arm64_build: Path, tmp_path: Path) -> None:
    manifest = BuildManifest.load(arm64_build)
    root = manifest.arch("arm64").artifact("rootfs.img")
    spec = load_spec(REPO / "platforms" / "debian-12-arm64.yaml")
    arch_dir = arm64_build / "arm64"
    with serve_directory(arm64_build) as (port, requests):
        cmdline = (
            f"{spec.cmdline_for(Architecture.arm64)} ip=dhcp "
            f"diskci.root=http://10.0.2.2:{port}/{root.path} diskci.root_sha256={root.sha256} "
            f"diskci.report=http://10.0.2.2:{port}/report"
        )
        argv = [
            "qemu-system-aarch64",
            "-M",
            "virt",
            "-cpu",
            "cortex-a57",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-no-reboot",
            "-kernel",
            str(arch_dir / "vmlinuz"),
            "-initrd",
            str(arch_dir / "initramfs.img"),
            "-append",
            cmdline,
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-nographic",
        ]
        with QemuConsole(argv, log_path=tmp_path / "console.log") as vm:
            line = vm.wait_for(r"diskci: (booted|error)", timeout=BOOT_TIMEOUT)
            assert line.strip() == f"diskci: booted {manifest.platform} {manifest.version}", vm.tail()
            sys.stderr.write(f"\n[netboot] arm64 booted {vm.elapsed:.1f}s after QEMU started\n")
    reports = [json.loads(body) for method, path, body in requests if method == "POST" and path == "/report"]
    assert [r["event"] for r in reports] == ["fetched", "verified", "switching_root"]
    assert all(r["root_sha256"] == root.sha256 and r["mac"].startswith("52:54:00:") for r in reports)


def test_netboot_artifacts_rebuild_bit_identical(amd64_build: Path, tmp_path: Path) -> None:
    """A clean rebuild of the kernel, initramfs, rootimage and ipxe stages from the same rootfs.tar
    gives the same bytes as the shared build."""
    from diskci.image.artifacts import ipxe, kernel, rootimage
    from diskci.image.initramfs import builder

    first = BuildManifest.load(amd64_build)
    spec_path = REPO / "platforms" / "debian-12-amd64.yaml"
    out = tmp_path / "rebuild"
    (out / "amd64").mkdir(parents=True)
    (out / "amd64" / "rootfs.tar").symlink_to(amd64_build / "amd64" / "rootfs.tar")
    manifest = BuildManifest(
        platform=first.platform,
        version=first.version,
        spec_digest=first.spec_digest,
        spec=first.spec,
        source_date_epoch=first.source_date_epoch,
    )
    ctx = BuildContext(
        spec=load_spec(spec_path),
        spec_path=spec_path,
        arch=Architecture.amd64,
        build_dir=out,
        cache_dir=tmp_path / "cache",
        source_date_epoch=first.source_date_epoch,
        use_cache=False,
        manifest=manifest,
    )
    for stage in (kernel.stage, builder.stage, rootimage.stage, ipxe.stage):
        stage(ctx)
    for name in NETBOOT_FILES:
        again = manifest.arch("amd64").artifact(name)
        assert again == first.arch("amd64").artifact(name), name
        assert (out / "amd64" / name).read_bytes() == (amd64_build / "amd64" / name).read_bytes(), name
    assert manifest.arch("amd64").kernel_version == first.arch("amd64").kernel_version
