"""The iPXE script: ``<arch>/boot.ipxe``, booting this build from URLs relative to the script itself.

iPXE resolves the relative paths of ``kernel`` and ``initrd`` against the script's own URI (its current
working URI), so any HTTP server holding the build directory netboots it. The init needs an absolute URL
for the root image, which iPXE cannot compute: the script passes ``diskci.root=rootfs.img`` together with
``diskci.root_base=<the script's URI>`` and the init resolves one against the other. The script's URI is
``${cwuri}`` on iPXE releases since March 2024; on older ones (such as Debian 12's ipxe-qemu ROMs) it falls
back to ``${filename}``, the DHCP boot file name, which is the script's URI when DHCP hands it out. A
chaining script may also ``set diskci_base <URL>`` before ``chain``.
"""

from __future__ import annotations

from diskci.atomic import atomic_path
from diskci.errors import BuildError
from diskci.image.pipeline import BuildContext
from diskci.mediatypes import IPXE_SCRIPT

KERNEL = "vmlinuz"
INITRD = "initramfs.img"
ROOT_IMAGE = "rootfs.img"


def render(*, platform: str, version: str, arch: str, root_sha256: str, cmdline: str) -> str:
    """The script text for one architecture of one build."""
    for name, value in (("root sha256", root_sha256), ("cmdline", cmdline)):
        if "\n" in value or "${" in value:
            raise BuildError(f"boot.ipxe: the {name} may not contain newlines or iPXE settings: {value!r}")
    args = " ".join(
        [
            f"initrd={INITRD}",
            f"diskci.root={ROOT_IMAGE}",
            "diskci.root_base=${diskci_base}",
            f"diskci.root_sha256={root_sha256}",
            "ip=dhcp",
            cmdline,
        ]
    ).strip()
    return (
        "#!ipxe\n"
        f"# diskci: {platform} {version} ({arch}); every URL below is relative to this script.\n"
        "isset ${diskci_base} || set diskci_base ${cwuri}\n"
        "isset ${diskci_base} || set diskci_base ${filename}\n"
        f"echo diskci: booting {platform} {version} ({arch}) from ${{diskci_base}}\n"
        f"kernel {KERNEL} {args}\n"
        f"initrd {INITRD}\n"
        "boot\n"
    )


def stage(ctx: BuildContext) -> None:
    root = ctx.record.artifact(ROOT_IMAGE)
    for name in (KERNEL, INITRD):
        ctx.record.artifact(name)  # the script names them: they must be part of this build
    text = render(
        platform=ctx.manifest.platform,
        version=ctx.manifest.version,
        arch=ctx.arch.value,
        root_sha256=root.sha256,
        cmdline=ctx.spec.cmdline_for(ctx.arch),
    )
    dest = ctx.arch_dir / "boot.ipxe"
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    ctx.add_artifact(dest, IPXE_SCRIPT)
