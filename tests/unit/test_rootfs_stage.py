"""Stage 1 parts that need no mmdebstrap run: command, progress, package list, disk and emulation checks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from diskci.errors import ResourceError
from diskci.image import rootfs
from diskci.image.pipeline import BuildContext
from diskci.manifest import BuildManifest
from diskci.spec import Architecture, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def ctx(tmp_path: Path, **change: Any) -> BuildContext:
    data = yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text()) | change
    spec = parse_spec(data)
    manifest = BuildManifest(
        platform=spec.name,
        version=spec.version,
        spec_digest=spec.digest(),
        spec=spec.normalized(),
        source_date_epoch=7,
    )
    return BuildContext(
        spec, tmp_path / "spec.yaml", Architecture.amd64, tmp_path / "b", tmp_path / "c", 7, True, manifest
    )


def test_mmdebstrap_command(tmp_path: Path) -> None:
    c = ctx(
        tmp_path,
        files=[{"source": "motd", "dest": "/etc/motd", "mode": 0o600}],
        customize_hooks=["echo hi > /etc/greeting"],
        hostname="n1",
    )
    argv = rootfs.mmdebstrap_argv(
        c,
        "mmdebstrap",
        "http://m.example/debian",
        {"motd": tmp_path / "motd"},
        tmp_path / "t.tar",
        tmp_path / "l",
    )
    assert argv[:3] == ["mmdebstrap", "--mode=root", "--format=tar"]
    assert argv[-3:] == ["bookworm", str(tmp_path / "t.tar"), "http://m.example/debian"]
    assert "--variant=minbase" in argv and "--architectures=amd64" in argv
    assert f"--include={','.join(c.spec.packages_for(Architecture.amd64))}" in argv
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    assert "--dpkgopt=path-include=/usr/share/doc/*/copyright" in argv
    essential = [a for a in argv if a.startswith("--essential-hook=")]
    assert essential and "dpkg-divert" in essential[0] and "ln -sf /bin/true" in essential[0]
    hooks = [a.removeprefix("--customize-hook=") for a in argv if a.startswith("--customize-hook=")]
    assert any("install -m 600" in h and "/etc/motd" in h for h in hooks)
    assert "chroot \"$1\" /bin/sh -ec 'echo hi > /etc/greeting'" in hooks
    assert any("n1" in h and "/etc/hostname" in h for h in hooks)
    assert any("--remove /usr/sbin/update-initramfs" in h for h in hooks)  # the diversion is undone
    assert hooks[-1].startswith("dpkg-query --admindir=") and hooks[-1].endswith(str(tmp_path / "l"))


def test_progress_reports_phases(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    seen: list[str] = []
    c.report = seen.append  # type: ignore[method-assign]
    p = rootfs._Progress(c)
    p.detailed = False
    for line in [
        "I: running apt-get update...",
        "Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]",
        "I: /vmlinuz is now a symlink to boot/vmlinuz-6.1.0-50-amd64",
        "I: running --essential-hook in shell: sh -c 'chroot ...' exec /tmp/x",
        "I: success in 29.6030 seconds",
    ]:
        p(line)
    assert seen == [
        "running apt-get update",
        "running --essential-hook",
        "mmdebstrap success in 29.6030 seconds",
    ]
    p.detailed = True
    p("Setting up libc6:amd64 (2.36-9) ...")
    assert seen[-1] == "mmdebstrap success in 29.6030 seconds: setting up libc6:amd64"


def test_parse_dpkg_query_keeps_installed_packages_only() -> None:
    text = (
        "ii \tlibc6\t2.36-9\tamd64\tglibc\t2.36-9\n"
        "rc \told\t1.0\tamd64\told\t1.0\n"
        "ii \tadduser\t3.134\tall\t\t\n"
        "garbage\n"
    )
    assert rootfs.parse_dpkg_query(text) == [
        {
            "name": "adduser",
            "version": "3.134",
            "architecture": "all",
            "source": "adduser",
            "source_version": "3.134",
        },
        {
            "name": "libc6",
            "version": "2.36-9",
            "architecture": "amd64",
            "source": "glibc",
            "source_version": "2.36-9",
        },
    ]


def test_free_space_check(tmp_path: Path) -> None:
    rootfs.check_free_space({tmp_path: 1024})
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ResourceError, match="not enough free disk space") as info:
        rootfs.check_free_space({tmp_path / "not" / "yet": free // 2 + 1, tmp_path: free // 2 + 1})
    assert str(tmp_path / "not" / "yet") in info.value.message  # summed over paths on one filesystem


def test_emulation_native_arch_needs_nothing(tmp_path: Path) -> None:
    rootfs.ensure_emulation(Architecture(rootfs.host_architecture()), tmp_path / "absent")


def test_emulation_missing_handler_names_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    foreign = Architecture.arm64 if rootfs.host_architecture() == "amd64" else Architecture.amd64
    (tmp_path / "status").write_text("enabled\n")
    monkeypatch.setattr(rootfs.shutil, "which", lambda name: None)
    with pytest.raises(ResourceError) as info:
        rootfs.ensure_emulation(foreign, tmp_path)
    assert f"qemu-{foreign.qemu_name}" in info.value.message
    assert "qemu-user-static" in (info.value.hint or "") and "binfmt-support" in (info.value.hint or "")
    (tmp_path / f"qemu-{foreign.qemu_name}").write_text("disabled\ninterpreter /x\n")
    with pytest.raises(ResourceError, match="is disabled"):
        rootfs.ensure_emulation(foreign, tmp_path)


def test_emulation_works_on_this_host() -> None:
    """This machine has qemu-user-static and binfmt-support (make setup): arm64 must be runnable."""
    rootfs.ensure_emulation(Architecture.arm64)
    rootfs.ensure_emulation(Architecture.amd64)


def test_private_tmpdir_is_removed_but_never_through_a_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    with rootfs._private_tmpdir() as work:
        (work / "root" / "etc").mkdir(parents=True)
    assert not work.exists()
    # an interrupted mmdebstrap left something mounted inside: the directory must be left alone
    monkeypatch.setattr(rootfs, "_mount_points", lambda: [Path("/proc"), kept / "root" / "proc"])
    with rootfs._private_tmpdir() as kept:
        (kept / "root" / "proc").mkdir(parents=True)
    assert (kept / "root" / "proc").is_dir()
    shutil.rmtree(kept)
