"""The kernel artifact: ``<arch>/vmlinuz``, copied from the root filesystem's /boot.

The root filesystem must hold exactly one kernel (or a ``/vmlinuz`` link choosing one) together with
its modules in /lib/modules/<version>; the version is recorded in build.json (``kernel_version``).
"""

from __future__ import annotations

from diskci.atomic import atomic_path
from diskci.errors import BuildError
from diskci.image.artifacts.rootfs_tar import RootfsTarball, rootfs_tar_path
from diskci.image.pipeline import BuildContext
from diskci.mediatypes import KERNEL

PREFIX = "vmlinuz-"


def find_kernel(root: RootfsTarball) -> tuple[str, str]:
    """(kernel version, path of the kernel image) in the root filesystem."""
    candidates = (
        sorted(n for n in root.listdir("boot") if n.startswith(PREFIX)) if root.exists("boot") else []
    )
    if not candidates:
        raise BuildError(
            f"{root.path}: no kernel in /boot (expected /boot/{PREFIX}<version>)",
            hint="Is the spec's kernel_package installed for this architecture?",
        )
    chosen = candidates[0]
    if len(candidates) > 1:
        link = root.resolve("vmlinuz") if root.exists("vmlinuz") else ""
        named = [c for c in candidates if link == f"boot/{c}"]
        if not named:
            raise BuildError(
                f"{root.path}: several kernels in /boot ({', '.join(candidates)}) and no /vmlinuz link "
                "choosing one"
            )
        chosen = named[0]
    version = chosen[len(PREFIX) :]
    if not root.exists(f"lib/modules/{version}/modules.dep"):
        raise BuildError(f"{root.path}: kernel {version} has no /lib/modules/{version}/modules.dep")
    return version, f"boot/{chosen}"


def stage(ctx: BuildContext) -> None:
    dest = ctx.arch_dir / "vmlinuz"
    with RootfsTarball(rootfs_tar_path(ctx.arch_dir)) as root:
        version, path = find_kernel(root)
        ctx.report(f"kernel {version}")
        with atomic_path(dest) as tmp:
            tmp.write_bytes(root.read(path))
    ctx.record.kernel_version = version
    ctx.add_artifact(dest, KERNEL)
