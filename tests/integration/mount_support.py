"""What the mount tests need from the host (root, loop devices, erofs, overlayfs), and why not when not."""

from __future__ import annotations

import os
from pathlib import Path


def _kernel_has(fs: str) -> bool:
    if fs in Path("/proc/filesystems").read_text():
        return True
    return any(Path("/lib/modules").glob(f"{os.uname().release}/**/{fs}.ko*"))


def mount_unavailable(*filesystems: str) -> str | None:
    """Why images cannot be loop-mounted with ``filesystems`` here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to loop-mount images"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control missing)"
    for fs in filesystems:
        if not _kernel_has(fs):
            return f"the kernel has no {'overlayfs' if fs == 'overlay' else fs} support"
    return None
