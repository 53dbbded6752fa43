"""Stage 1 end to end, through the real ``diskci build`` CLI and mmdebstrap.

- debian-12-amd64 built twice with the same SOURCE_DATE_EPOCH (the second with ``--no-cache``) gives a
  bit-identical rootfs.tar; a third build is a cache hit, says so, and is fast.
- a small arm64 root (kernel + busybox) builds under qemu-user emulation.
- bad input (a package that does not exist, a full disk, an unreachable mirror, an unknown
  architecture) ends with a clear error and leaves nothing half-written; so does an interrupted build.
"""

from __future__ import annotations

import filecmp
import json
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import yaml

from diskci.manifest import BuildManifest, sha256_file
from diskci.mediatypes import PACKAGES_JSON, ROOTFS_TAR, SBOM_SPDX
from diskci.spec import load_spec
from polling import wait_until

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EM_AARCH64 = 183  # ELF e_machine of arm64


Runner = Callable[..., subprocess.CompletedProcess[str]]


def build_rootfs(
    diskci: Runner, spec: Path, out: Path, cache: Path, sde: int, *extra: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = diskci(
        "build",
        spec,
        "--stages",
        "rootfs",
        "--out",
        out,
        "--cache",
        cache,
        "--source-date-epoch",
        str(sde),
        *extra,
    )
    return proc, time.monotonic() - started


def check_build_dir(out: Path, arch: str, spec_path: Path, sde: int) -> BuildManifest:
    """build.json lists rootfs.tar, packages.json and the SBOM with their true sizes and digests."""
    manifest = BuildManifest.load(out)
    assert manifest.spec_digest == load_spec(spec_path).digest()
    assert manifest.source_date_epoch == sde
    assert manifest.tools["mmdebstrap"].startswith("mmdebstrap ")
    record = manifest.architectures[arch]
    assert record.inputs["release_sha256"] and record.inputs["mirror"].startswith(("http", "file"))
    media = {a.name: a.media_type for a in record.artifacts}
    assert media == {"rootfs.tar": ROOTFS_TAR, "packages.json": PACKAGES_JSON, "sbom.spdx.json": SBOM_SPDX}
    for art in record.artifacts:
        path = out / art.path
        assert path.stat().st_size == art.size and sha256_file(path) == art.sha256, art.path
    packages = json.loads((out / arch / "packages.json").read_text())
    assert all({"name", "version", "architecture", "source"} <= p.keys() for p in packages)
    names = {p["name"] for p in packages}
    assert {"busybox-static", f"linux-image-{arch}"} <= names
    schema = json.loads((ASSETS / "spdx-2.3-schema.json").read_text())
    sbom = json.loads((out / arch / "sbom.spdx.json").read_text())
    jsonschema.validate(sbom, schema)
    assert len(sbom["packages"]) == len(packages) + 1
    # the full mmdebstrap log is kept when mmdebstrap ran (a cache hit runs nothing)
    assert (out / arch / "logs" / "mmdebstrap.log").is_file() != record.cache["rootfs"]["hit"]
    return manifest


@pytest.mark.slow
@pytest.mark.root
def test_amd64_rootfs_reproducible_and_cached(
    diskci: Runner, platform_specs: dict[str, Path], test_cache: Path, source_date_epoch: int, tmp_path: Path
) -> None:
    spec = platform_specs["debian-12-amd64"]
    # 1: the shared cache may already hold this root filesystem (built by an earlier session)
    first, _ = build_rootfs(diskci, spec, tmp_path / "one", test_cache, source_date_epoch)
    assert first.returncode == 0, first.stderr[-4000:]
    # 2: a clean rebuild, which also refreshes the cache entry
    second, t_build = build_rootfs(
        diskci, spec, tmp_path / "two", test_cache, source_date_epoch, "--no-cache"
    )
    assert second.returncode == 0, second.stderr[-4000:]
    m2 = check_build_dir(tmp_path / "two", "amd64", spec, source_date_epoch)
    assert m2.architectures["amd64"].cache["rootfs"]["hit"] is False
    assert filecmp.cmp(
        tmp_path / "one" / "amd64" / "rootfs.tar", tmp_path / "two" / "amd64" / "rootfs.tar", shallow=False
    ), "two builds with the same SOURCE_DATE_EPOCH differ"
    # 3: a cache hit, and it says so
    third, t_hit = build_rootfs(diskci, spec, tmp_path / "three", test_cache, source_date_epoch, "--json")
    assert third.returncode == 0, third.stderr[-4000:]
    m3 = BuildManifest.model_validate_json(third.stdout)
    assert m3.architectures["amd64"].cache["rootfs"]["hit"] is True
    assert "cache hit" in third.stderr
    assert (
        m3.architectures["amd64"].artifact("rootfs.tar").sha256
        == m2.architectures["amd64"].artifact("rootfs.tar").sha256
    )
    check_build_dir(tmp_path / "three", "amd64", spec, source_date_epoch)
    print(f"clean build {t_build:.1f}s, cache hit {t_hit:.1f}s")
    with tarfile.open(tmp_path / "three" / "amd64" / "rootfs.tar") as tar:
        hostname = tar.extractfile("./etc/hostname")
        assert hostname is not None and hostname.read() == b"node\n"
        names = set(tar.getnames())
    assert "./etc/resolv.conf" not in names  # the host's resolver is not baked in
    assert not any(n.startswith("./usr/share/man/man") for n in names)  # excluded paths
    assert not any(n.startswith("./boot/initrd.img") for n in names)  # no distro initramfs


def small_spec(path: Path, arch: str, packages: list[str], **extra: object) -> Path:
    data = {
        "name": f"test-{arch}-small",
        "distribution": "debian",
        "suite": "bookworm",
        "architectures": [arch],
        "packages": packages,
        "kernel_package": {arch: f"linux-image-{arch}"},
        "version": "0.0.1",
        "registry_repository": f"test/disk-images/test-{arch}-small",
        "signing": {
            "cosign_identity_regexp": "^https://example\\.com/.*$",
            "cosign_oidc_issuer": "https://x.example",
        },
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
@pytest.mark.root
def test_arm64_small_root_under_emulation(diskci: Runner, tmp_path: Path, source_date_epoch: int) -> None:
    (tmp_path / "motd").write_text("diskci test node\n")
    spec = small_spec(
        tmp_path / "arm64.yaml",
        "arm64",
        ["busybox-static"],
        files=[{"source": "motd", "dest": "/etc/diskci/motd", "mode": 0o600}],
        # runs inside the root, through qemu-user
        customize_hooks=["uname -m > /etc/diskci/hook-machine"],
    )
    out = tmp_path / "out"
    proc, took = build_rootfs(diskci, spec, out, tmp_path / "cache", source_date_epoch)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_build_dir(out, "arm64", spec, source_date_epoch)
    log = (out / "arm64" / "logs" / "mmdebstrap.log").read_text()
    assert "qemu-user binfmt emulation" in log
    packages = json.loads((out / "arm64" / "packages.json").read_text())
    assert {p["architecture"] for p in packages} <= {"arm64", "all"}
    with tarfile.open(out / "arm64" / "rootfs.tar") as tar:
        assert any(n.startswith("./boot/vmlinuz-") and n.endswith("-arm64") for n in tar.getnames())
        busybox = tar.extractfile("./usr/bin/busybox")
        assert busybox is not None
        header = busybox.read(20)
        motd = tar.getmember("./etc/diskci/motd")
        assert motd.mode == 0o600
        assert tar.extractfile(motd).read() == b"diskci test node\n"  # type: ignore[union-attr]
        assert tar.extractfile("./etc/diskci/hook-machine").read() == b"aarch64\n"  # type: ignore[union-attr]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    print(f"arm64 small root under emulation: {took:.0f}s")


def leftovers(out: Path) -> list[str]:
    """Files in a failed build directory other than the kept mmdebstrap log."""
    return sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "mmdebstrap.log"
    )


@pytest.mark.slow
@pytest.mark.root
def test_bad_package_is_named_and_nothing_is_half_written(
    diskci: Runner, tmp_path: Path, source_date_epoch: int
) -> None:
    spec = small_spec(tmp_path / "bad.yaml", "amd64", ["busybox-static", "no-such-package-diskci"])
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc, _ = build_rootfs(diskci, spec, out, cache, source_date_epoch)
    assert proc.returncode == 1
    err = " ".join(proc.stderr.split())
    assert "the package 'no-such-package-diskci' does not exist" in err
    assert "last lines of" in err and "Unable to locate package no-such-package-diskci" in err
    assert leftovers(out) == []
    assert not (out / "build.json").exists()
    entries = list((cache / "rootfs").iterdir()) if (cache / "rootfs").exists() else []
    assert entries == []


@pytest.mark.root
def test_full_disk_is_refused_before_building(diskci: Runner, tmp_path: Path, source_date_epoch: int) -> None:
    spec = small_spec(tmp_path / "s.yaml", "amd64", ["busybox-static"])
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(small)], check=True)
    try:
        proc, took = build_rootfs(diskci, spec, small / "out", tmp_path / "cache", source_date_epoch)
        assert proc.returncode == 1
        err = " ".join(proc.stderr.split())
        assert "not enough free disk space" in err and str(small / "out" / "amd64") in err
        assert not (small / "out" / "amd64" / "rootfs.tar").exists()
        assert not (small / "out" / "build.json").exists()
        print(f"refused after {took:.1f} s")
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_unreachable_mirror_is_named(diskci: Runner, tmp_path: Path, source_date_epoch: int) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = small_spec(
        tmp_path / "s.yaml", "amd64", ["busybox-static"], mirror=f"http://127.0.0.1:{port}/debian"
    )
    proc, _ = build_rootfs(diskci, spec, tmp_path / "out", tmp_path / "cache", source_date_epoch)
    assert proc.returncode == 1
    assert f"the mirror http://127.0.0.1:{port}/debian is unreachable" in " ".join(proc.stderr.split())
    assert leftovers(tmp_path / "out") == []


def test_unknown_architecture_and_bad_spec(
    diskci: Runner, platform_specs: dict[str, Path], tmp_path: Path
) -> None:
    spec = platform_specs["debian-12-amd64"]
    proc = diskci("build", spec, "--arch", "riscv64", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "unknown architecture 'riscv64'" in proc.stderr
    proc = diskci("build", spec, "--arch", "arm64", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "not defined for arm64" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    proc = diskci("build", bad, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "required field is missing" in proc.stderr
    proc = diskci("build", spec, "--stages", "rootfs,nonsense", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "nonsense" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.root
def test_interrupted_build_leaves_nothing_half_written(tmp_path: Path, source_date_epoch: int) -> None:
    import os
    import signal
    import sys

    spec = small_spec(tmp_path / "s.yaml", "amd64", ["busybox-static"])
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = [
        sys.executable,
        "-m",
        "diskci.cli.main",
        "build",
        str(spec),
        "--stages",
        "rootfs",
        "--out",
        str(out),
    ]
    argv += ["--cache", str(cache), "--source-date-epoch", str(source_date_epoch)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "CI": "true"},
    )
    log = out / "amd64" / "logs" / "mmdebstrap.log"

    def installing() -> bool:
        if "installing essential packages" in (log.read_text() if log.exists() else ""):
            return True
        assert proc.poll() is None, "the build never reached its install phase"
        return False

    # interrupt (like ^C in a terminal: the whole process group) once packages are being installed
    wait_until(installing, 120, interval=0.5, what="the build to reach its install phase")
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, output[-2000:]
    assert leftovers(out) == []
    # mmdebstrap was given time to clean up: its chroot is unmounted and gone
    import re

    tempdir = re.search(r"using (\S+) as tempdir", log.read_text())
    assert tempdir, log.read_text()[-2000:]
    assert tempdir.group(1) not in Path("/proc/self/mountinfo").read_text()
    assert not Path(tempdir.group(1)).exists()
    entries = list((cache / "rootfs").iterdir()) if (cache / "rootfs").exists() else []
    assert entries == []
