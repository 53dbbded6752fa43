"""``<arch>/uki.efi``: a unified kernel image, the one file a Secure Boot firmware verifies.

The systemd stub (``linuxx64.efi.stub`` / ``linuxaa64.efi.stub`` from the target root's
``systemd-boot-efi``, else the host's when the architecture is native) with four sections added by
``diskci.formats.pe``, in this order:

    .osrel    the root's os-release, plus IMAGE_ID and IMAGE_VERSION (the spec's name and version)
    .linux    vmlinuz
    .initrd   diskci's initramfs
    .cmdline  ``diskci.root_sha256=<hex> diskci.root_size=<bytes> ip=dhcp <the spec's command line>``

The command line pins the root image by its URL-independent identity: once the UKI is signed, the
initramfs it carries mounts no other root image. Where to fetch it and where to report are not known
at build time: the platform appends ``diskci.root=``, ``diskci.report=`` and ``diskci.not_after=`` to
``.cmdline`` (the last section, so nothing else moves) before it signs its copy
(``diskci.platform.secureboot``). This unsigned UKI stays the build's reproducible artifact: no time
stamp, the same bytes for the same inputs.
"""

from __future__ import annotations

import platform
from pathlib import PurePosixPath

from diskci.atomic import atomic_path
from diskci.errors import BuildError, ResourceError
from diskci.formats import pe
from diskci.image.artifacts.rootfs_tar import RootfsTarball, rootfs_tar_path
from diskci.image.pipeline import BuildContext
from diskci.mediatypes import UKI
from diskci.process import tool_version
from diskci.spec import Architecture

NAME = "uki.efi"
STUB_DIR = PurePosixPath("usr/lib/systemd/boot/efi")
STUB_NAMES = {Architecture.amd64: "linuxx64.efi.stub", Architecture.arm64: "linuxaa64.efi.stub"}
MACHINES = {Architecture.amd64: 0x8664, Architecture.arm64: 0xAA64}
_HOST_ARCH = {"x86_64": Architecture.amd64, "aarch64": Architecture.arm64}


class StubMissing(ResourceError):
    """Neither the target root nor (for a native architecture) the host has the systemd stub."""


def find_stub(root: RootfsTarball, arch: Architecture) -> tuple[bytes, str]:
    """(stub bytes, where it came from): the target root's, else the host's for a native ``arch``."""
    member = STUB_DIR / STUB_NAMES[arch]
    if root.exists(member.as_posix()):
        return root.read(member.as_posix()), f"target root (/{member})"
    host = PurePosixPath("/") / member
    if _HOST_ARCH.get(platform.machine()) is arch:
        try:
            data = open(host, "rb").read()  # noqa: SIM115 (one read)
        except OSError:
            data = b""
        if data:
            version = tool_version(["dpkg-query", "-W", "-f=${Version}", "systemd-boot-efi"])
            return data, f"host systemd-boot-efi {version}"
    raise StubMissing(
        f"no systemd UEFI stub for {arch.value}: /{member} is in neither {root.path} nor on this host",
        hint=f"Add 'systemd-boot-efi' to the spec's arch_packages for {arch.value} (or install it on a "
        "native host).",
    )


def os_release(root: RootfsTarball, name: str, version: str) -> bytes:
    """The root's os-release with IMAGE_ID and IMAGE_VERSION set to the platform's name and version."""
    path = "etc/os-release" if root.exists("etc/os-release") else "usr/lib/os-release"
    text = root.read(path).decode("utf-8", "replace") if root.exists(path) else ""
    kept = [line for line in text.splitlines() if not line.startswith(("IMAGE_ID=", "IMAGE_VERSION="))]
    return ("\n".join([*kept, f"IMAGE_ID={name}", f"IMAGE_VERSION={version}"]) + "\n").encode()


def build_cmdline(*, root_sha256: str, root_size: int, cmdline: str) -> str:
    """What ``.cmdline`` holds: the root image's identity, then the spec's arguments."""
    for word in cmdline.split():
        if word.split("=", 1)[0] in (
            "diskci.root",
            "diskci.root_sha256",
            "diskci.root_size",
            "diskci.report",
        ):
            raise BuildError(f"the spec's kernel command line may not set {word.split('=', 1)[0]}= itself")
    return f"diskci.root_sha256={root_sha256} diskci.root_size={root_size} ip=dhcp {cmdline}".strip()


def assemble(
    *, stub: bytes, osrel: bytes, kernel: bytes, initrd: bytes, cmdline: str, arch: Architecture
) -> bytes:
    """The UKI's bytes (``.cmdline`` last: the platform rewrites only that section)."""
    try:
        image = pe.PeImage.parse(stub)
    except Exception as exc:
        raise BuildError(f"the systemd stub is not a PE image: {exc}") from exc
    if image.machine != MACHINES[arch]:
        raise BuildError(f"the systemd stub is for machine {image.machine:#x}, not {arch.value}")
    return pe.add_sections(
        stub, [(".osrel", osrel), (".linux", kernel), (".initrd", initrd), (".cmdline", cmdline.encode())]
    )


def stage(ctx: BuildContext) -> None:
    kernel, initrd = (ctx.arch_dir / n for n in ("vmlinuz", "initramfs.img"))
    for p in (kernel, initrd):
        if not p.is_file():
            raise BuildError(f"{NAME} needs {p}, which the earlier stages did not produce")
    root = ctx.record.artifact("rootfs.img")
    with RootfsTarball(rootfs_tar_path(ctx.arch_dir)) as tar:
        stub, origin = find_stub(tar, ctx.arch)
        osrel = os_release(tar, ctx.spec.name, ctx.spec.version)
    ctx.tool(f"systemd-stub ({ctx.arch.value})", origin)  # per architecture: host or target root
    cmdline = build_cmdline(
        root_sha256=root.sha256, root_size=root.size, cmdline=ctx.spec.cmdline_for(ctx.arch)
    )
    ctx.report("assembling the PE image")
    data = assemble(
        stub=stub,
        osrel=osrel,
        kernel=kernel.read_bytes(),
        initrd=initrd.read_bytes(),
        cmdline=cmdline,
        arch=ctx.arch,
    )
    dest = ctx.arch_dir / NAME
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    ctx.add_artifact(dest, UKI)
