"""Secure Boot under QEMU (TCG) with OVMF's secboot firmware and the fleet key enrolled as PK/KEK/db.

The variable store is made by ``diskci platform secureboot export --vars amd64``; the signed UKI is made
by the platform's own steps (``signed_cmdline``, ``pe.replace_last_section``, ``SbsignSigner``) from
the build's reproducible ``uki.efi``, with its root image URL pointing at a 127.0.0.1 server (the
guest's 10.0.2.2). The firmware loads the UKI itself (QEMU's ``-kernel`` goes through its LoadImage,
which Secure Boot checks), so:

- the fleet-signed UKI boots to ``diskci: booted`` and the initramfs reports ``secure_boot`` on;
- an unsigned UKI, one signed by another key, and one whose command line was edited after signing
  are refused by the firmware (nothing of diskci's runs);
- the signed UKI with the served root image changed is refused by the initramfs (sha256 mismatch).

arm64 the same way under AAVMF (Debian builds it with Secure Boot; no SMM on arm64) with the variable
store of ``secureboot export --vars arm64``: the fleet-signed arm64 UKI boots, an unsigned one is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diskci.formats import pe
from diskci.manifest import BuildManifest
from diskci.platform.secureboot.keys import FleetKey
from diskci.platform.secureboot.signer import SbsignSigner
from diskci.platform.secureboot.signing import signed_cmdline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qemu_console import QemuConsole, serve_directory

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
CODE_ARM64 = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
BOOT_TIMEOUT = 180.0
BOOT_TIMEOUT_ARM64 = 420.0  # arm64 under TCG on an x86 host is several times slower
# The firmware refuses the image (it says so, or moves on to the next boot option: network boot) and
# nothing of diskci's runs; the same machine with the fleet-signed image boots (the test above).
REFUSED = r"Security Violation|Access Denied|Start PXE over IPv4|diskci: "


def _qemu(code: Path, varstore: Path, uki: Path) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-machine",
        "q35,smm=on",
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={varstore}",
        "-kernel",
        str(uki),
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
        "-no-reboot",
        "-nographic",
    ]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, diskci) -> tuple[FleetKey, Path]:  # type: ignore[no-untyped-def]
    """The fleet key (made by ``secureboot rotate``) and the exported OVMF variable store."""
    state = tmp_path_factory.mktemp("platform-state")
    proc = diskci("platform", "secureboot", "rotate", "--no-resign", "--json", "--state-dir", state)
    assert proc.returncode == 0, proc.stderr
    varstore = state / "OVMF_VARS_fleet.fd"
    proc = diskci(
        "platform", "secureboot", "export", "--vars", "amd64", "--out", varstore, "--state-dir", state
    )
    assert proc.returncode == 0, proc.stderr
    return FleetKey(state / "secureboot" / "db.key", state / "secureboot" / "db.crt"), varstore


def _qemu_arm64(varstore: Path, uki: Path) -> list[str]:
    return [
        "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "1024",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={CODE_ARM64}",
        "-drive", f"if=pflash,format=raw,unit=1,file={varstore}",
        "-kernel", str(uki),
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-no-reboot", "-nographic",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def arm64_varstore(fleet, tmp_path_factory: pytest.TempPathFactory, diskci) -> Path:  # type: ignore[no-untyped-def]
    """The AAVMF variable store with the same fleet key enrolled (``secureboot export --vars arm64``)."""
    key, _ = fleet
    state = key.key_file.parents[1]
    varstore = tmp_path_factory.mktemp("aavmf") / "AAVMF_VARS_fleet.fd"
    proc = diskci(
        "platform", "secureboot", "export", "--vars", "arm64", "--out", varstore, "--state-dir", state
    )
    assert proc.returncode == 0, proc.stderr
    return varstore


def _signable(build: Path, port: int, served: str, arch: str = "amd64") -> bytes:
    data = (build / arch / "uki.efi").read_bytes()
    cmdline_text = pe.PeImage.parse(data).section_data(".cmdline").decode()
    cmdline = signed_cmdline(
        cmdline_text, base_url=f"http://10.0.2.2:{port}", publication_id=1, arch=arch, not_after=4102444800
    ).replace(f"/netboot/1/{arch}/rootfs.img", f"/{served}")
    return pe.replace_last_section(data, ".cmdline", cmdline.encode())


def _boot(tmp_path: Path, varstore: Path, image: bytes, name: str, arch: str = "amd64") -> QemuConsole:
    (tmp_path / name).write_bytes(image)
    vars_copy = tmp_path / f"{name}.vars.fd"
    shutil.copyfile(varstore, vars_copy)
    uki = tmp_path / name
    argv = _qemu(CODE, vars_copy, uki) if arch == "amd64" else _qemu_arm64(vars_copy, uki)
    return QemuConsole(argv, log_path=tmp_path / f"{name}.log")


def test_the_signed_uki_boots_and_reports_secure_boot(amd64_build: Path, fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, varstore = fleet
    manifest = BuildManifest.load(amd64_build)
    with serve_directory(amd64_build) as (port, requests):
        signed = SbsignSigner(key).sign(_signable(amd64_build, port, "amd64/rootfs.img"))
        with _boot(tmp_path, varstore, signed, "signed.efi") as vm:
            assert "on" in vm.wait_for(r"diskci: secure boot: \w+", timeout=BOOT_TIMEOUT)
            line = vm.wait_for(r"diskci: (booted|error)", timeout=BOOT_TIMEOUT)
            assert line.strip() == f"diskci: booted {manifest.platform} {manifest.version}", vm.tail()
            sys.stderr.write(f"\n[secureboot] signed UKI booted {vm.elapsed:.1f}s after QEMU started\n")
    reports = [json.loads(body) for method, _, body in requests if method == "POST" and body]
    assert any(r.get("secure_boot") == "on" for r in reports), reports


@pytest.mark.parametrize("variant", ["unsigned", "other_key", "edited_cmdline"])
def test_the_firmware_refuses_what_the_fleet_key_did_not_sign(
    amd64_build: Path,
    fleet,
    tmp_path: Path,
    variant: str,  # type: ignore[no-untyped-def]
) -> None:
    key, varstore = fleet
    image = _signable(amd64_build, 9, "amd64/rootfs.img")
    if variant == "other_key":
        other = FleetKey(tmp_path / "other" / "db.key", tmp_path / "other" / "db.crt")
        other.rotate()
        image = SbsignSigner(other).sign(image)
    elif variant == "edited_cmdline":
        signed = bytearray(SbsignSigner(key).sign(image))
        at = signed.find(b" console=ttyS0")
        signed[at : at + 14] = b" console=tty0 "  # same length: only the signature can tell
        image = bytes(signed)
        cert = tmp_path / "fleet.pem"
        cert.write_bytes(key.certificate().pem)
        (tmp_path / "edited.efi").write_bytes(image)
        assert (
            subprocess.run(["sbverify", "--cert", cert, tmp_path / "edited.efi"], check=False).returncode != 0
        )
    with _boot(tmp_path, varstore, image, f"{variant}.efi") as vm:
        line = vm.wait_for(REFUSED, timeout=BOOT_TIMEOUT, unfinished=True)
        assert not line.startswith("diskci:"), vm.tail()
        assert not vm.saw(r"diskci: "), vm.tail()


def test_a_changed_root_image_is_refused_by_the_signed_initramfs(
    amd64_build: Path, fleet, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    key, varstore = fleet
    served = tmp_path / "served"
    (served / "amd64").mkdir(parents=True)
    shutil.copyfile(amd64_build / "amd64" / "rootfs.img", served / "amd64" / "rootfs.img")
    with open(served / "amd64" / "rootfs.img", "r+b") as f:
        f.seek(f.seek(0, 2) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with serve_directory(served) as (port, _):
        signed = SbsignSigner(key).sign(_signable(amd64_build, port, "amd64/rootfs.img"))
        with _boot(tmp_path, varstore, signed, "signed.efi") as vm:
            line = vm.wait_for(r"diskci: (error|booted|switching)", timeout=BOOT_TIMEOUT)
            assert line.startswith("diskci: error sha256_mismatch:"), vm.tail()
            assert not vm.saw(r"diskci: (switching root|booted)"), vm.tail()


def test_the_signed_arm64_uki_boots_under_aavmf_and_an_unsigned_one_is_refused(
    arm64_build: Path, fleet, arm64_varstore: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    key, _ = fleet
    manifest = BuildManifest.load(arm64_build)
    unsigned = _signable(arm64_build, 9, "arm64/rootfs.img", "arm64")
    with _boot(tmp_path, arm64_varstore, unsigned, "unsigned-arm64.efi", "arm64") as vm:
        line = vm.wait_for(REFUSED, timeout=BOOT_TIMEOUT_ARM64, unfinished=True)
        assert not line.startswith("diskci:"), vm.tail()
    with serve_directory(arm64_build) as (port, requests):
        signed = SbsignSigner(key).sign(_signable(arm64_build, port, "arm64/rootfs.img", "arm64"))
        with _boot(tmp_path, arm64_varstore, signed, "signed-arm64.efi", "arm64") as vm:
            assert "on" in vm.wait_for(r"diskci: secure boot: \w+", timeout=BOOT_TIMEOUT_ARM64)
            line = vm.wait_for(r"diskci: (booted|error)", timeout=BOOT_TIMEOUT_ARM64)
            # the serial console may print the login prompt on the same line first
            assert line.strip().endswith(f"diskci: booted {manifest.platform} {manifest.version}"), vm.tail()
            sys.stderr.write(f"\n[secureboot] signed arm64 UKI booted {vm.elapsed:.1f}s after QEMU started\n")
    reports = [json.loads(body) for method, _, body in requests if method == "POST" and body]
    assert any(r.get("secure_boot") == "on" for r in reports), reports
