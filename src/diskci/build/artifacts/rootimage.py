"""The root image: ``<arch>/rootfs.img``, the root filesystem as a compressed read-only squashfs.

Made from ``<arch>/rootfs.tar`` without extracting it (no root privileges, no device nodes on the host):
the tarball is filtered in Python (without /boot and the kernel links beside it, without the spec's
``exclude_paths`` except its ``include_paths``) plus the boot marker unit, and piped into ``sqfstar``
(squashfs-tools >= 4.5) with zstd, SOURCE_DATE_EPOCH as the creation time and every file time, and
its reproducible ordering. The marker unit prints ``diskci: booted <platform> <version>`` on the console
once multi-user.target is reached. docs/artifacts.md explains why squashfs rather than EROFS.
"""

from __future__ import annotations

import fnmatch
import io
import tarfile
from collections.abc import Iterable

from diskci.atomic import atomic_path
from diskci.build.artifacts.rootfs_tar import member_path, rootfs_tar_path
from diskci.build.pipeline import BuildContext
from diskci.errors import BuildError, FormatError
from diskci.process import require_tool, run, tool_version
from diskci.registry.mediatypes import ROOT_IMAGE

UNIT_NAME = "diskci-booted.service"
UNIT_DIR = "etc/systemd/system"
WANTS_DIR = f"{UNIT_DIR}/multi-user.target.wants"
# Never in the root image: the kernel and its boot files travel as their own artifacts.
ALWAYS_EXCLUDED = ("/boot", "/boot/*", "/vmlinuz", "/vmlinuz.old", "/initrd.img", "/initrd.img.old")
SQFSTAR_ARGS = ("-comp", "zstd", "-b", "128K", "-no-progress", "-quiet")


def marker_unit(platform: str, version: str) -> str:
    """A oneshot unit, ordered after multi-user.target, that prints the boot marker on the console."""
    for value in (platform, version):
        if not value or any(not (c.isalnum() or c in "._-") for c in value):
            raise BuildError(f"boot marker: {value!r} may only hold letters, digits, '.', '_' and '-'")
    return (
        "[Unit]\n"
        "Description=diskci boot marker on the console\n"
        "DefaultDependencies=no\n"
        "After=multi-user.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=/bin/sh -c 'echo \"diskci: booted {platform} {version}\" >/dev/console'\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def kept_paths(names: Iterable[str], excludes: Iterable[str], includes: Iterable[str]) -> set[str]:
    """Member paths (root-relative) to keep; a kept path keeps its ancestor directories."""
    excludes = (*ALWAYS_EXCLUDED, *excludes)
    includes = tuple(includes)
    keep: set[str] = set()
    for name in names:
        absolute = "/" + name
        if name and _matches(absolute, excludes) and not _matches(absolute, includes):
            continue
        if absolute.startswith("/boot/"):
            continue
        keep.add(name)
    for name in list(keep):
        parts = name.split("/")
        keep.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return keep


def _info(name: str, *, mtime: int, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(f"./{name}")
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def filtered_tar(source: tarfile.TarFile, keep: set[str], extra: dict[str, bytes], *, mtime: int) -> bytes:
    """The kept members of ``source`` (in their order, metadata and xattrs intact) plus ``extra`` files.

    ``extra`` maps root-relative paths to contents; a value starting with ``b"->"`` makes a symlink.
    """
    out = io.BytesIO()
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for member in source.getmembers():
            path = member_path(member.name)
            if path not in keep or path in extra:
                continue
            if member.islnk() and member_path(member.linkname) not in keep:
                raise FormatError(f"{member.name}: hard link to excluded {member.linkname}; exclude both")
            data = source.extractfile(member) if member.isreg() else None
            dst.addfile(member, data)
            written.add(path)
        for path, content in sorted(extra.items()):
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in written:
                    dst.addfile(_info(parent, mtime=mtime, kind=tarfile.DIRTYPE, mode=0o755))
                    written.add(parent)
            if content.startswith(b"->"):
                info = _info(path, mtime=mtime, kind=tarfile.SYMTYPE, mode=0o777)
                info.linkname = content[2:].decode()
                dst.addfile(info)
            else:
                info = _info(path, mtime=mtime)
                info.size = len(content)
                dst.addfile(info, io.BytesIO(content))
            written.add(path)
    return out.getvalue()


def stage(ctx: BuildContext) -> None:
    sqfstar = require_tool("sqfstar", "squashfs-tools")
    src = rootfs_tar_path(ctx.arch_dir)
    dest = ctx.arch_dir / "rootfs.img"
    epoch = str(ctx.source_date_epoch)
    extra = {
        f"{UNIT_DIR}/{UNIT_NAME}": marker_unit(ctx.manifest.platform, ctx.manifest.version).encode(),
        f"{WANTS_DIR}/{UNIT_NAME}": f"->/{UNIT_DIR}/{UNIT_NAME}".encode(),
    }
    try:
        with tarfile.open(src, "r:*") as source:
            keep = kept_paths(
                (member_path(m.name) for m in source.getmembers()),
                ctx.spec.exclude_paths,
                ctx.spec.include_paths,
            )
            ctx.report(f"filtering {len(keep)} paths")
            stream = filtered_tar(source, keep, extra, mtime=ctx.source_date_epoch)
    except tarfile.TarError as exc:
        raise FormatError(f"{src}: not a readable tar archive: {exc}") from exc
    ctx.report(f"sqfstar ({len(stream) >> 20} MiB of tar)")
    with atomic_path(dest) as tmp:
        tmp.unlink()
        argv = [sqfstar, *SQFSTAR_ARGS, "-mkfs-time", epoch, "-all-time", epoch, "-exit-on-error", str(tmp)]
        run(argv, input=stream)
    del stream
    ctx.tool("sqfstar", tool_version([sqfstar, "-version"]))
    ctx.add_artifact(dest, ROOT_IMAGE, with_fsverity=True)
