"""``diskci netboot serve``: serves a build directory so its boot.ipxe and artifacts download."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from diskci import mediatypes as mt
from diskci.manifest import Artifact, BuildManifest


def _build_dir(root: Path, *, with_script: bool = True) -> Path:
    manifest = BuildManifest(platform="p", version="1", spec_digest="0" * 64, spec={}, source_date_epoch=0)
    arch = root / "amd64"
    arch.mkdir(parents=True)
    files = {"vmlinuz": mt.KERNEL, "initramfs.img": mt.INITRAMFS, "rootfs.img": mt.ROOT_IMAGE}
    if with_script:
        files["boot.ipxe"] = mt.IPXE_SCRIPT
    for name, media_type in files.items():
        (arch / name).write_bytes(f"contents of {name}".encode())
        manifest.arch("amd64").add(Artifact.from_file(root, arch / name, media_type))
    manifest.save(root)
    return root


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "diskci.cli.main", "netboot", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_prints_script_urls_and_serves_the_directory(tmp_path: Path) -> None:
    build = _build_dir(tmp_path / "b")
    proc = _cli(str(build), "--port", "0", "--json")
    try:
        assert proc.stdout is not None
        text = ""
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            text += line
            if line.startswith("}"):
                break
        info = json.loads(text)
        url = info["boot_scripts"]["amd64"]
        assert url == f"http://127.0.0.1:{info['port']}/amd64/boot.ipxe"
        assert httpx.get(url).text == "contents of boot.ipxe"
        assert httpx.get(url.replace("boot.ipxe", "rootfs.img")).content == b"contents of rootfs.img"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_serve_refuses_a_build_without_boot_script(tmp_path: Path) -> None:
    build = _build_dir(tmp_path / "b", with_script=False)
    proc = subprocess.run(
        [sys.executable, "-m", "diskci.cli.main", "netboot", "serve", str(build)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    message = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "no architecture has a boot.ipxe" in message and "--stages ipxe" in message
