"""The network boot chain under Secure Boot, end to end: firmware → fleet-signed iPXE → the platform's
``/boot.ipxe`` → its script for the machine → the platform-signed UKI → ``diskci: booted``.

A real ``diskci platform serve`` with the fleet key (``secureboot rotate``) verifies the publication of
the shared amd64 build (``diskci.demo.run_demo`` without its boot: sign, push, webhook, processor) and
signs its UKI. The machine is QEMU with OVMF's Secure Boot firmware and the variable store of
``secureboot export --vars amd64`` (only the fleet key enrolled); its boot loader is the iPXE of
``secureboot export --ipxe amd64`` (QEMU ``-kernel``: the firmware's LoadImage checks its signature),
and QEMU's DHCP hands it ``http://10.0.2.2:PORT/boot.ipxe``. iPXE chains the signed UKI and starts it
through LoadImage again, so the firmware decides, and the node's reports say Secure Boot was on.

Then the platform's blob of the signed UKI is swapped for the same image without its signature: the
firmware refuses it (the platform's script says so) and nothing of diskci's initramfs runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from diskci.demo import DEMO_MAC, DemoConfig, PlatformServer, diskci_command, run_demo
from diskci.manifest import BuildManifest
from diskci.platform.services.blobcache import BlobCache
from diskci.qemu import QemuConsole

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
BOOT_TIMEOUT = 240.0
SIGNED_EVENT = "disk_image_uki_signed"


@dataclass(frozen=True)
class Chain:
    """A platform that verified and signed the shared build, and the machine's Secure Boot pieces."""

    platform_state: Path
    port: int
    publication_id: int
    signed_sha256: str  # the platform-signed UKI's blob
    varstore: Path  # OVMF variables with the fleet key as PK, KEK and db
    ipxe: Path  # iPXE signed by the fleet key
    certificate: Path  # the fleet certificate (PEM)


def _secureboot(platform_state: Path, *args: str | Path) -> dict[str, Any]:
    out = diskci_command("platform", "secureboot", *args, "--state-dir", platform_state, "--json")
    assert isinstance(out, dict)
    return out


def _signed_event(server: PlatformServer, publication_id: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = server.action("system_list_recent_events", {"type": [SIGNED_EVENT], "limit": 50})
        for event in events["events"]:
            payload = event.get("payload") or {}
            if payload.get("publication_id") == publication_id:
                return dict(payload)
        time.sleep(1)
    raise AssertionError(
        f"the platform did not sign publication {publication_id}'s UKI:\n{server.log_tail()}"
    )


@pytest.fixture(scope="module")
def chain(amd64_build: Path, test_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    state = tmp_path_factory.mktemp("secureboot-chain")
    platform_state = state / "platform"
    _secureboot(platform_state, "rotate", "--no-resign")
    varstore, ipxe, cert = state / "OVMF_VARS_fleet.fd", state / "ipxe.signed.efi", state / "fleet.pem"
    _secureboot(platform_state, "export", "--vars", "amd64", "--out", varstore)
    _secureboot(platform_state, "export", "--ipxe", "amd64", "--out", ipxe)
    _secureboot(platform_state, "export", "--out", cert)
    result = run_demo(
        DemoConfig(
            spec_path=REPO / "platforms" / "debian-12-amd64.yaml",
            state_dir=state,
            cache_dir=test_cache,
            build_dir=amd64_build,
            boot=False,
        )
    )
    port = int(result.base_url.rsplit(":", 1)[1])
    with PlatformServer(platform_state, port) as server:
        signed = _signed_event(server, result.publication_id)
    return Chain(platform_state, port, result.publication_id, signed["sha256"]["amd64"], varstore, ipxe, cert)


@pytest.fixture
def server(chain: Chain) -> Iterator[PlatformServer]:
    with PlatformServer(chain.platform_state, chain.port) as server:
        yield server


def _machine(chain: Chain, tmp_path: Path, name: str) -> QemuConsole:
    """The Secure Boot machine: its own copy of the variable store, the signed iPXE as boot loader."""
    varstore = tmp_path / f"{name}.vars.fd"
    shutil.copyfile(chain.varstore, varstore)
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-machine", "q35,smm=on",
        "-global", "driver=cfi.pflash01,property=secure,value=on",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={CODE}",
        "-drive", f"if=pflash,format=raw,unit=1,file={varstore}",
        "-kernel", str(chain.ipxe),
        "-netdev", f"user,id=n0,bootfile=http://10.0.2.2:{chain.port}/boot.ipxe",
        "-device", f"virtio-net-pci,netdev=n0,mac={DEMO_MAC},romfile=",
        "-no-reboot", "-nographic",
    ]  # fmt: skip
    return QemuConsole(argv, log_path=tmp_path / f"{name}.log")


def _node(server: PlatformServer) -> dict[str, Any]:
    nodes = server.action("system_list_node_instances", {})["instances"]
    return next(n for n in nodes if DEMO_MAC in n["mac_addresses"])


def test_signed_ipxe_chains_the_signed_uki_to_booted_under_secure_boot(
    chain: Chain, server: PlatformServer, amd64_build: Path, tmp_path: Path
) -> None:
    manifest = BuildManifest.load(amd64_build)
    script = httpx.get(
        f"{server.base_url}/ipxe", params={"mac": DEMO_MAC.replace(":", "-"), "arch": "x86_64"}, timeout=10
    ).text
    assert f"/netboot/{chain.publication_id}/amd64/uki.signed.efi" in script, script
    with _machine(chain, tmp_path, "chain") as vm:
        vm.wait_for(r"boot\.ipxe : \d+ bytes", timeout=BOOT_TIMEOUT)  # the firmware started the signed iPXE
        vm.wait_for(r"diskci: chaining the signed UKI", timeout=BOOT_TIMEOUT)  # the platform's script
        assert "on" in vm.wait_for(r"diskci: secure boot: \w+", timeout=BOOT_TIMEOUT)
        line = vm.wait_for(r"diskci: (booted|error)", timeout=BOOT_TIMEOUT)
        assert line.strip() == f"diskci: booted {manifest.platform} {manifest.version}", vm.tail()
        sys.stderr.write(f"\n[secureboot] iPXE chain booted {vm.elapsed:.1f}s after QEMU started\n")
        assert not vm.saw(r"vmlinuz\.\.\."), "the legacy kernel + initrd path must not have been taken"
        deadline = time.monotonic() + 60
        while _node(server)["status"] != "booted" and time.monotonic() < deadline:
            time.sleep(1)
    report = _node(server)["last_report"]
    assert report["status"] == "booted" and report["publication"] == chain.publication_id, report
    events = server.action("system_list_recent_events", {"type": ["netboot_report"], "limit": 50})["events"]
    initramfs = [e["payload"] for e in events if (e.get("payload") or {}).get("status") == "verified"]
    assert initramfs and all(p["secure_boot"] == "on" and p["verified_boot"] for p in initramfs), initramfs


def test_an_unsigned_uki_served_in_its_place_is_refused_by_the_firmware(
    chain: Chain, server: PlatformServer, tmp_path: Path
) -> None:
    blob = BlobCache(chain.platform_state / "blobs").path(chain.signed_sha256)
    original = blob.read_bytes()
    unsigned = tmp_path / "uki.unsigned.efi"
    unsigned.write_bytes(original)
    subprocess.run(["sbattach", "--remove", unsigned], check=True, capture_output=True)  # in place
    sbverify = subprocess.run(
        ["sbverify", "--cert", chain.certificate, unsigned], capture_output=True, check=False
    )
    assert sbverify.returncode != 0
    mode = blob.stat().st_mode
    blob.chmod(0o644)
    blob.write_bytes(unsigned.read_bytes())  # what a compromised cache or a spoofed server could serve
    try:
        with _machine(chain, tmp_path, "unsigned") as vm:
            line = vm.wait_for(r"diskci: (error uki_refused|starting|secure boot)", timeout=BOOT_TIMEOUT)
            assert line.startswith("diskci: error uki_refused"), vm.tail()
            assert vm.saw(r"Could not boot"), vm.tail()  # iPXE: the firmware's LoadImage said no
            assert not vm.saw(r"diskci: (starting|secure boot|booted)"), vm.tail()
    finally:
        blob.write_bytes(original)
        blob.chmod(mode)
