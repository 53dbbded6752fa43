"""What the mount tests need from the host (root, loop devices, erofs, overlayfs), and why not when not;
and a composefs image mounted as composefs mounts it.

Missing root fails in CI (see host_tools); loop devices and the kernel's filesystems are the host
kernel's, not something ``make setup`` installs, so without them the tests skip in CI too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tools import needs, require_root, unavailable


def _kernel_has(fs: str) -> bool:
    if fs in Path("/proc/filesystems").read_text():
        return True
    return any(Path("/lib/modules").glob(f"{os.uname().release}/**/{fs}.ko*"))


def require_mountable(*filesystems: str) -> None:
    """Skip (or fail in CI, for root) unless images can be loop-mounted with ``filesystems`` here."""
    require_root("needs root to loop-mount images")
    if not Path("/dev/loop-control").exists():
        unavailable("no loop devices (/dev/loop-control missing)", ci_guarantee=None)
    for fs in filesystems:
        if not _kernel_has(fs):
            name = "overlayfs" if fs == "overlay" else fs
            unavailable(f"the kernel has no {name} support", ci_guarantee=None)


def needs_mount(*filesystems: str) -> pytest.MarkDecorator:
    """Mark a test (or module) as loop-mounting images with ``filesystems`` (see ``require_mountable``)."""
    return needs(functools.partial(require_mountable, *filesystems))


@contextlib.contextmanager
def composefs_mounted(image: Path, objects: Path, base: Path) -> Iterator[Path]:
    """``mount -t erofs`` + ``mount -t overlay lowerdir=<erofs>::<objects>`` (data-only lower layer)."""
    lower, merged = base / "lower", base / "merged"
    lower.mkdir()
    merged.mkdir()
    subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(image), str(lower)], check=True)
    try:
        opts = f"ro,lowerdir={lower}::{objects},metacopy=on,redirect_dir=on"
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], capture_output=True
        )
        if proc.returncode != 0:
            reason = f"overlayfs with data-only lower layers is not available: {proc.stderr.decode()}"
            unavailable(reason, ci_guarantee=None)  # a kernel feature (Linux 6.5+), not installed by setup
        try:
            yield merged
        finally:
            subprocess.run(["umount", str(merged)], check=True)
    finally:
        subprocess.run(["umount", str(lower)], check=True)
