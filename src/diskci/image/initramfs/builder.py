"""The netboot initramfs: ``<arch>/initramfs.img``, built by diskci rather than the distribution's tools.

A deterministic newc cpio (``diskci.formats.cpio``) compressed with zstd at fixed parameters, holding:
the root filesystem's static busybox with a link per applet (read from the binary's own sorted applet
name table, so a foreign-architecture busybox needs no emulation), the kernel modules a netboot or
disk/CD boot needs with their dependency closure from modules.dep plus the depmod text files busybox
modprobe reads, and diskci's init (``init.sh``) with its udhcpc script. Everything is read straight
from ``<arch>/rootfs.tar``.
"""

from __future__ import annotations

import gzip
import lzma
import re
from dataclasses import dataclass
from importlib import resources

from diskci.atomic import atomic_path
from diskci.errors import BuildError
from diskci.formats.cpio import CpioArchive
from diskci.image.artifacts.kernel import find_kernel
from diskci.image.artifacts.rootfs_tar import RootfsTarball, rootfs_tar_path
from diskci.image.pipeline import BuildContext
from diskci.mediatypes import INITRAMFS
from diskci.process import require_tool, run, tool_version

# Loaded by the init, in this order; each must be a module or built in.
REQUIRED_MODULES = ("virtio_pci", "virtio_net", "loop", "squashfs", "overlay")
# Included (and loaded) when the kernel has them: other NICs, disks and CD-ROMs, file systems.
OPTIONAL_MODULES = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "nvme",
    "ahci",
    "ata_piix",
    "ata_generic",
    "sd_mod",
    "sr_mod",
    "isofs",
    "erofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "efivarfs",  # the init reads the firmware's SecureBoot variable (reported as secure_boot)
)
# Loaded only for a disk or CD-ROM root (an http root needs none of them before the switch; the booted
# system's udev loads what its hardware needs): listed in /etc/diskci/modules.local instead.
LOCAL_ROOT_MODULES = frozenset(
    (
        *("virtio_blk", "virtio_scsi", "nvme", "ahci", "ata_piix", "ata_generic", "sd_mod", "sr_mod"),
        *("isofs", "vfat", "nls_cp437", "nls_ascii", "nls_utf8"),
    )
)
# Busybox applets init.sh and udhcpc.sh run as commands.
INIT_APPLETS = frozenset(
    (
        *("sh", "mount", "umount", "mkdir", "modprobe", "ip", "udhcpc", "wget", "sha256sum", "cut"),
        *("switch_root", "halt", "reboot", "sleep", "cat", "sed", "tr", "grep", "head", "tail", "dd"),
        *("od", "wc", "rm", "cp", "sync", "setsid", "cttyhack", "timeout", "date", "dmesg"),
    )
)
DEPMOD_FILES = ("modules.dep", "modules.alias", "modules.builtin", "modules.order", "modules.softdep")
# level 12: 2.2 MB in 0.3 s; level 19 saved 0.2 MB for 2.5 s of every build
ZSTD_ARGS = ("-12", "--single-thread", "--no-progress", "-q", "-c")
_APPLET_TABLE = re.compile(rb"(?:[a-z0-9\[\]_.-]{1,32}\x00){40,}")
_MODULE_SUFFIX = re.compile(r"\.ko(\.xz|\.gz|\.zst)?$")


def module_name(path: str) -> str:
    """``kernel/drivers/net/virtio_net.ko.xz`` → ``virtio_net`` (dashes become underscores)."""
    base = path.rsplit("/", 1)[-1]
    return _MODULE_SUFFIX.sub("", base).replace("-", "_")


def applet_names(busybox: bytes) -> list[str]:
    """The applet names compiled into a busybox binary (its NUL-separated, sorted name table)."""
    for match in _APPLET_TABLE.finditer(busybox):
        names = [n.decode() for n in match.group().rstrip(b"\0").split(b"\0")]
        if names == sorted(names) and set(names) >= INIT_APPLETS:
            return names
    raise BuildError(
        "busybox: no applet table holding every applet the init needs "
        f"({', '.join(sorted(INIT_APPLETS))}); is /bin/busybox the busybox-static binary?"
    )


@dataclass(frozen=True)
class ModuleSet:
    """The modules to include: stored paths (relative to /lib/modules/<version>) and the load list.

    ``load`` holds module names in load order; ``quiet`` those whose failure to load is expected (soft
    dependencies such as a CPU-specific crc32c, which the emulated CPU may lack); ``local`` those
    only a disk or CD-ROM root needs (``LOCAL_ROOT_MODULES`` and what only they pulled in).
    """

    paths: tuple[str, ...]
    load: tuple[str, ...]
    quiet: frozenset[str]
    builtin: tuple[str, ...]
    local: frozenset[str] = frozenset()


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep as {module name: (path, [dependency paths])}."""
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        out[module_name(path.strip())] = (path.strip(), deps.split())
    return out


def parse_softdeps(text: str) -> dict[str, list[str]]:
    """modules.softdep as {module name: [names loaded before it]} (``post:`` ones are loaded after
    everything else the init loads, which is the same for a boot that loads a fixed list)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        out.setdefault(words[1].replace("-", "_"), []).extend(w for w in words[2:] if not w.endswith(":"))
    return out


def parse_aliases(text: str) -> dict[str, list[str]]:
    """modules.alias as {alias: [module names]} for plain (non-wildcard) aliases."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
            out.setdefault(words[1], []).append(words[2])
    return out


def select_modules(
    dep_text: str, builtin_text: str, softdep_text: str = "", alias_text: str = ""
) -> ModuleSet:
    """The wanted modules with their dependency closure and soft dependencies; required ones must
    exist (or be built in)."""
    deps = parse_modules_dep(dep_text)
    builtin = {module_name(line.strip()) for line in builtin_text.splitlines() if line.strip()}
    softdeps = parse_softdeps(softdep_text)
    aliases = parse_aliases(alias_text)
    by_path = {path: name for name, (path, _) in deps.items()}
    chosen: set[str] = set()
    load: list[str] = []
    quiet: set[str] = set()
    local: set[str] = set()
    in_kernel: list[str] = []
    wanted_for_local = False

    def closure(path: str) -> list[str]:
        if path not in by_path:
            raise BuildError(f"modules.dep: {path} is listed as a dependency but has no entry of its own")
        found = [path]
        for dep in deps[by_path[path]][1]:
            found += [p for p in closure(dep) if p not in found]
        return found

    def add(name: str, *, soft: bool) -> None:
        for path in closure(deps[name][0]):
            for soft_name in softdeps.get(by_path[path], []):
                for target in [soft_name] if soft_name in deps else aliases.get(soft_name, []):
                    if target in deps and target not in load:
                        add(target, soft=True)
            chosen.add(path)
        if name not in load:
            load.append(name)
            if soft:
                quiet.add(name)
            if wanted_for_local:
                local.add(name)

    missing = []
    optional = sorted(OPTIONAL_MODULES, key=lambda m: m in LOCAL_ROOT_MODULES)  # the local ones last
    for name in (*REQUIRED_MODULES, *optional):
        wanted_for_local = name in LOCAL_ROOT_MODULES
        if name in deps:
            add(name, soft=False)
        elif name in builtin:
            in_kernel.append(name)
        elif name in REQUIRED_MODULES:
            missing.append(name)
    if missing:
        raise BuildError(
            f"the kernel has neither module nor built-in driver for: {', '.join(missing)}",
            hint="diskci's netboot init needs virtio networking, loop, squashfs and overlay.",
        )
    return ModuleSet(tuple(sorted(chosen)), tuple(load), frozenset(quiet), tuple(in_kernel), frozenset(local))


def _uncompressed(path: str, data: bytes) -> tuple[str, bytes]:
    """Modules are stored uncompressed (the whole archive is compressed once)."""
    if path.endswith(".ko.xz"):
        return path[:-3], lzma.decompress(data)
    if path.endswith(".ko.gz"):
        return path[:-3], gzip.decompress(data)
    if path.endswith(".ko.zst"):
        zstd = require_tool("zstd", "zstd")
        return path[:-4], run([zstd, "-d", "-q", "-c"], input=data).stdout
    return path, data


def _filter_lines(text: str, keep: set[str], field: int, rename: dict[str, str]) -> str:
    """Lines of a depmod text file whose ``field`` names a kept module path or module name."""
    out = []
    for line in text.splitlines():
        words = line.replace(":", " ").split()
        if len(words) <= abs(field) or words[field] not in keep:
            continue
        for old, new in rename.items():
            line = line.replace(old, new)
        out.append(line)
    return "".join(f"{line}\n" for line in out)


def _script(name: str) -> bytes:
    return resources.files("diskci.image.initramfs").joinpath(name).read_bytes()


def build_archive(root: RootfsTarball, *, mtime: int) -> tuple[CpioArchive, str, ModuleSet]:
    """The initramfs contents: (archive, kernel version, modules)."""
    version, _ = find_kernel(root)
    if not root.exists("bin/busybox"):
        raise BuildError(
            f"{root.path}: the root filesystem has no /bin/busybox",
            hint="Add busybox-static to the spec's packages: the netboot initramfs uses its busybox.",
        )
    busybox = root.read("bin/busybox")
    applets = applet_names(busybox)

    a = CpioArchive(mtime=mtime)
    for d in ("dev", "proc", "sys", "run", "newroot", "root", "etc/diskci", "usr"):
        a.add_dir(d, 0o700 if d == "root" else 0o755)
    a.add_dir("tmp", 0o1777)
    a.add_device("dev/console", "c", 5, 1, 0o600)
    a.add_file("bin/busybox", busybox, 0o755)
    for name in applets:
        if name != "busybox":
            a.add_symlink(f"bin/{name}", "busybox")
    a.add_symlink("sbin", "bin")
    a.add_symlink("usr/bin", "../bin")
    a.add_symlink("usr/sbin", "../bin")
    a.add_file("init", _script("init.sh"), 0o755)
    a.add_file("etc/diskci/udhcpc.sh", _script("udhcpc.sh"), 0o755)

    moddir = f"lib/modules/{version}"
    texts = {
        f: root.read(f"{moddir}/{f}").decode() if root.exists(f"{moddir}/{f}") else "" for f in DEPMOD_FILES
    }
    modules = select_modules(
        texts["modules.dep"], texts["modules.builtin"], texts["modules.softdep"], texts["modules.alias"]
    )
    rename: dict[str, str] = {}
    for path in modules.paths:
        stored, data = _uncompressed(path, root.read(f"{moddir}/{path}"))
        if stored != path:
            rename[path] = stored
        a.add_file(f"{moddir}/{stored}", data)
    kept_paths = set(modules.paths)
    kept_names = {module_name(p) for p in modules.paths}
    a.add_file(f"{moddir}/modules.dep", _filter_lines(texts["modules.dep"], kept_paths, 0, rename).encode())
    a.add_file(
        f"{moddir}/modules.order", _filter_lines(texts["modules.order"], kept_paths, 0, rename).encode()
    )
    a.add_file(f"{moddir}/modules.alias", _filter_lines(texts["modules.alias"], kept_names, -1, {}).encode())
    a.add_file(f"{moddir}/modules.builtin", texts["modules.builtin"].encode())
    a.add_file(f"{moddir}/modules.softdep", texts["modules.softdep"].encode())
    for listed, local in (("modules", False), ("modules.local", True)):
        names = [m for m in modules.load if (m in modules.local) == local]
        listing = "".join(f"{m} quiet\n" if m in modules.quiet else f"{m}\n" for m in names)
        a.add_file(f"etc/diskci/{listed}", listing.encode())
    return a, version, modules


def compress(data: bytes) -> bytes:
    """zstd with fixed parameters: level 12, single-threaded (the same bytes on every machine)."""
    zstd = require_tool("zstd", "zstd")
    return run([zstd, *ZSTD_ARGS], input=data).stdout


def stage(ctx: BuildContext) -> None:
    dest = ctx.arch_dir / "initramfs.img"
    with RootfsTarball(rootfs_tar_path(ctx.arch_dir)) as root:
        archive, version, modules = build_archive(root, mtime=ctx.source_date_epoch)
    ctx.report(f"{len(archive)} entries, {len(modules.paths)} modules for {version}; compressing")
    data = compress(archive.to_bytes())
    ctx.tool("zstd", tool_version(["zstd", "--version"]))
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    ctx.add_artifact(dest, INITRAMFS)
