"""EFI system partitions built without mounting: a FAT image made by mkfs.vfat and filled by mtools.

Used twice: the ESP of ``disk.raw`` and the El Torito EFI image of ``netboot.iso``. Both hold
systemd-boot (from the target root filesystem, or the host's ``systemd-boot-efi`` when host and
target architecture agree), a Boot Loader Specification entry, the kernel and the initramfs.

Reproducibility: ``mkfs.vfat --invariant`` fixes every time- or random-based field, ``mlabel -N``
then sets the volume serial we derive from the build's identity, and mtools stamps every directory
entry with ``$SOURCE_DATE_EPOCH`` (mtools >= 4.0.19 honours it; checked byte for byte with 4.0.32).
"""

from __future__ import annotations

import hashlib
import platform
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from diskci.errors import BuildError, ResourceError
from diskci.image.pipeline import BuildContext
from diskci.process import require_tool, run, tool_version
from diskci.spec import Architecture

MIB = 1024 * 1024

# Where Debian's systemd-boot-efi puts its loaders, and the removable-media path UEFI looks for.
_SYSTEMD_BOOT_DIR = PurePosixPath("usr/lib/systemd/boot/efi")
_EFI_NAMES = {Architecture.amd64: "x64", Architecture.arm64: "aa64"}

ENTRY_ID = "diskci"
KERNEL_PATH = "/diskci/vmlinuz"
INITRAMFS_PATH = "/diskci/initramfs.img"


class BootLoaderMissing(ResourceError):
    """The target root filesystem has no UEFI boot loader for its architecture."""


@dataclass(frozen=True)
class Loader:
    """A UEFI boot loader binary and where it came from (for build.json's tool list)."""

    data: bytes
    origin: str

    @staticmethod
    def removable_path(arch: Architecture) -> str:
        """The path UEFI firmware boots from removable media (and from a disk with no boot entries)."""
        return f"/EFI/BOOT/BOOT{_EFI_NAMES[arch].upper()}.EFI"


def volume_serial(seed: str) -> str:
    """A FAT volume serial (8 hex digits) derived from ``seed``: same build identity, same serial."""
    return hashlib.sha256(seed.encode()).hexdigest()[:8]


def rootfs_tar(ctx: BuildContext) -> Path:
    """The root filesystem tarball of this architecture (from build.json, else the usual place)."""
    try:
        return ctx.build_dir / ctx.record.artifact("rootfs.tar").path
    except BuildError:
        return ctx.arch_dir / "rootfs.tar"


def _from_tar(tar_path: Path, member: PurePosixPath) -> bytes | None:
    wanted = {member.as_posix(), f"./{member.as_posix()}"}
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                if info.name in wanted and info.isfile():
                    f = tar.extractfile(info)
                    return f.read() if f is not None else None
    except (OSError, tarfile.TarError) as exc:
        raise BuildError(f"cannot read {tar_path}: {exc}") from exc
    return None


def find_loader(ctx: BuildContext) -> Loader:
    """systemd-boot for ``ctx.arch``: from the target root, else the host's when the arch is native.

    A foreign architecture's loader must come from the target root (Debian ships no cross loaders):
    add ``systemd-boot-efi`` to the spec's packages (or ``arch_packages``) for that architecture.
    """
    name = f"systemd-boot{_EFI_NAMES[ctx.arch]}.efi"
    member = _SYSTEMD_BOOT_DIR / name
    tar_path = rootfs_tar(ctx)
    if tar_path.is_file():
        data = _from_tar(tar_path, member)
        if data is not None:
            return Loader(data, f"target root ({member})")
    host = Path("/") / member
    if _host_arch() is ctx.arch and host.is_file():
        version = tool_version(["dpkg-query", "-W", "-f=${Version}", "systemd-boot-efi"])
        return Loader(host.read_bytes(), f"host systemd-boot-efi {version}")
    raise BootLoaderMissing(
        f"no UEFI boot loader for {ctx.arch.value}: /{member} is neither in {tar_path} "
        + ("nor on this host" if _host_arch() is ctx.arch else "(a foreign architecture's loader must)"),
        hint=f"Add 'systemd-boot-efi' to the spec's arch_packages for {ctx.arch.value} "
        "(Debian's package only ships the EFI binaries; it installs nothing at package time).",
    )


def _host_arch() -> Architecture | None:
    return {"x86_64": Architecture.amd64, "aarch64": Architecture.arm64}.get(platform.machine())


def loader_files(
    ctx: BuildContext, loader: Loader, kernel: Path, initramfs: Path, options: str
) -> dict[str, Path | bytes]:
    """The files of a systemd-boot ESP booting ``kernel`` + ``initramfs`` with ``options``."""
    spec = ctx.spec
    loader_conf = f"default {ENTRY_ID}.conf\ntimeout 0\neditor no\nauto-entries no\nauto-firmware no\n"
    entry = (
        f"title {spec.name} {spec.version}\n"
        f"version {spec.version}\n"
        f"linux {KERNEL_PATH}\n"
        f"initrd {INITRAMFS_PATH}\n"
        f"options {options}\n"
    )
    return {
        Loader.removable_path(ctx.arch): loader.data,
        "/loader/loader.conf": loader_conf.encode(),
        f"/loader/entries/{ENTRY_ID}.conf": entry.encode(),
        KERNEL_PATH: kernel,
        INITRAMFS_PATH: initramfs,
    }


def content_size(files: Mapping[str, Path | bytes]) -> int:
    return sum(len(v) if isinstance(v, bytes) else v.stat().st_size for v in files.values())


def make_fat(
    dest: Path,
    files: Mapping[str, Path | bytes],
    *,
    size: int,
    label: str,
    serial: str,
    source_date_epoch: int,
    fat32: bool,
) -> None:
    """Write a FAT image of ``size`` bytes at ``dest`` holding ``files`` (image path -> content)."""
    mkfs = require_tool("mkfs.vfat", "dosfstools")
    require_tool("mcopy", "mtools")
    env = {"SOURCE_DATE_EPOCH": str(source_date_epoch), "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}
    with open(dest, "wb") as f:
        f.truncate(size)
    run([mkfs, *(["-F", "32"] if fat32 else []), "--invariant", "-n", label, dest], env=env)
    run(["mlabel", "-i", dest, "-N", serial, f"::{label}"], env=env)
    dirs = sorted({str(p) for path in files for p in PurePosixPath(path).parents if str(p) != "/"})
    if dirs:
        run(["mmd", "-i", dest, *[f"::{d}" for d in dirs]], env=env)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fat-") as staging:
        for i, (path, content) in enumerate(sorted(files.items())):
            if isinstance(content, bytes):
                src = Path(staging) / str(i)
                src.write_bytes(content)
            else:
                src = content
            run(["mcopy", "-i", dest, "-D", "o", src, f"::{path}"], env=env)


def fat_tool_versions(ctx: BuildContext) -> None:
    ctx.tool("dosfstools", tool_version(["dpkg-query", "-W", "-f=${Version}", "dosfstools"]))
    ctx.tool("mtools", tool_version(["mtools", "--version"]))


def round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def esp_size(files: Mapping[str, Path | bytes], *, minimum: int) -> int:
    """Room for ``files`` plus FAT overhead and slack, in whole MiB, at least ``minimum``."""
    return max(minimum, round_up(int(content_size(files) * 1.1) + 4 * MIB, MIB))
