"""What the mount tests need from the host (root, loop devices, erofs, overlayfs), and why not when not;
and a composefs image mounted as composefs mounts it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


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
            pytest.skip(f"overlayfs with data-only lower layers is not available: {proc.stderr.decode()}")
        try:
            yield merged
        finally:
            subprocess.run(["umount", str(merged)], check=True)
    finally:
        subprocess.run(["umount", str(lower)], check=True)
