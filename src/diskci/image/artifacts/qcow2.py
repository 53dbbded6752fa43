"""``<arch>/disk.qcow2``: disk.raw converted by ``qemu-img convert -O qcow2``.

qcow2 carries no timestamps or random identifiers, so the same raw disk gives the same bytes (checked
across runs). Options are spelled out rather than left to qemu-img's defaults, which have changed
between releases: qcow2 v3 (compat=1.1), 64 KiB clusters, no compression, zero clusters left unallocated.
"""

from __future__ import annotations

from diskci.atomic import atomic_path
from diskci.errors import BuildError
from diskci.image.pipeline import BuildContext
from diskci.mediatypes import DISK_QCOW2
from diskci.process import require_tool, run, tool_version

QCOW2_OPTIONS = "compat=1.1,cluster_size=65536,lazy_refcounts=off,preallocation=off"


def stage(ctx: BuildContext) -> None:
    """Convert ``<arch>/disk.raw`` to ``<arch>/disk.qcow2``."""
    qemu_img = require_tool("qemu-img", "qemu-utils")
    raw = ctx.arch_dir / "disk.raw"
    if not raw.is_file():
        raise BuildError(f"disk.qcow2 needs {raw}, which the raw stage did not produce")
    dest = ctx.arch_dir / "disk.qcow2"
    ctx.report("qemu-img convert")
    with atomic_path(dest) as tmp:
        run([qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", QCOW2_OPTIONS, raw, tmp])
        run([qemu_img, "check", "-q", "-f", "qcow2", tmp])
    ctx.tool("qemu-img", tool_version([qemu_img, "--version"]))
    ctx.add_artifact(dest, DISK_QCOW2)
