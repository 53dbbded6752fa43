"""Mount composefs images the way a 6.x kernel can without the composefs helper: the image as EROFS
(loop, read-only), then overlayfs with the object store as a data-only lower layer. The merged tree must
equal the source. Needs root, loop devices, erofs and overlayfs; skips with the reason otherwise (without
root, fails in CI: see mount_support).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from diskci.formats import composefs, fstree
from mount_support import composefs_mounted, needs_mount

pytestmark = [pytest.mark.root, needs_mount("erofs", "overlay")]


def make_source(base: Path) -> Path:
    src = base / "src"
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "etc").mkdir()
    for size in (1, 63, 64, 65, 4096, 70_000, 3_000_000):
        (src / "usr" / "bin" / f"f{size}").write_bytes(os.urandom(size))
    (src / "usr" / "bin" / "same").write_bytes((src / "usr" / "bin" / "f4096").read_bytes())
    (src / "etc" / "empty").write_bytes(b"")
    os.link(src / "usr" / "bin" / "f70000", src / "usr" / "bin" / "hard")
    os.symlink("usr/bin", src / "bin")
    os.mknod(src / "etc" / "null", 0o20666, os.makedev(1, 3))
    os.mkfifo(src / "etc" / "fifo")
    for i in range(600):
        (src / "etc" / f"conf-{i:04d}.d").write_bytes(b"x" * (i % 130))
    os.setxattr(src / "etc", "trusted.overlay.opaque", b"y")  # escaped in the image, visible again here
    os.setxattr(
        src / "usr" / "bin" / "f65", "security.capability", bytes([1, 0, 0, 2, 0, 32, 0, 0] + [0] * 12)
    )
    os.setxattr(src / "usr" / "bin" / "f1", "user.x", b"1")
    os.chown(src / "usr" / "bin" / "f63", 1000, 1000)
    for i, p in enumerate(sorted(src.rglob("*"))):
        os.utime(p, ns=(0, 1_700_000_000_000_000_000 + i * 999_999_937), follow_symlinks=False)
    return src


def assert_same_tree(want: fstree.Node, merged: Path) -> None:
    a = fstree.describe(want)
    b = fstree.describe(fstree.from_directory(merged))
    assert sorted(a) == sorted(b)
    assert {os.fsdecode(p): (a[p], b[p]) for p in a if a[p] != b[p]} == {}


def test_overlay_mount_equals_directory_source(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    image, objects = tmp_path / "image.cfs", tmp_path / "objects"
    result = composefs.build(src, image, digest_store=objects)
    assert result.objects == 4 + 65  # 65, 4096 (== same), 70000 (== hard), 3000000; conf-*: 65..129 bytes
    with composefs_mounted(image, objects, tmp_path) as merged:
        # as with mkcomposefs, a directory's hardlinks are separate inodes in the image
        assert_same_tree(fstree.from_directory(src, hardlinks=False), merged)


def test_overlay_mount_equals_tarball_source(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    tar = tmp_path / "src.tar"
    subprocess.run(
        ["tar", "--format=pax", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--sort=name",
         "-C", str(src), "-cf", str(tar), "."],
        check=True,
    )  # fmt: skip
    image, objects = tmp_path / "image.cfs", tmp_path / "objects"
    composefs.build(tar, image, digest_store=objects)
    with composefs_mounted(image, objects, tmp_path) as merged:
        assert_same_tree(fstree.from_tar(tar), merged)
