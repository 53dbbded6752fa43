"""Loop-mount the images the EROFS writer makes and walk them: everything equals the source.

Needs root, loop devices and the kernel's erofs support; skips with the reason otherwise (without root,
fails in CI: see mount_support).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskci.formats import erofs, fstree
from mount_support import needs_mount

pytestmark = [pytest.mark.root, needs_mount("erofs")]


@contextlib.contextmanager
def mounted(image: Path, where: Path) -> Iterator[Path]:
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(image), str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def make_source(base: Path) -> Path:
    src = base / "src"
    (src / "etc" / "sub").mkdir(parents=True)
    sizes = [1, 64, 65, 2048, 2049, 4095, 4096, 4097, 6000, 8192 + 100, 100_000, 1 << 20]
    for size in sizes:
        (src / "etc" / f"f{size}").write_bytes(os.urandom(size))
    (src / "etc" / "empty").write_bytes(b"")
    os.link(src / "etc" / "f100000", src / "etc" / "sub" / "hardlink")
    os.symlink("../f1", src / "etc" / "sub" / "rel")
    os.symlink("/" + "long/" * 700, src / "etc" / "longlink")
    os.mknod(src / "etc" / "null", 0o20666, os.makedev(1, 3))
    os.mknod(src / "etc" / "disk", 0o60640, os.makedev(259, 70000))
    os.mkfifo(src / "etc" / "fifo", 0o600)
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(src / "etc" / "sock"))
    big = src / "big-dir"
    big.mkdir()
    for i in range(1000):
        (big / f"entry-{i:05d}-{'x' * (i % 40)}").write_bytes(b"%d\n" % i)
    os.chown(src / "etc" / "f65", 70000, 80000)
    os.chown(src / "etc" / "sub", 12, 34)
    os.chmod(src / "etc" / "f64", 0o4755)
    os.setxattr(src / "etc" / "f1", "user.one", b"1")
    os.setxattr(src / "etc" / "f64", "user.one", b"1")
    os.setxattr(src / "etc" / "f64", "trusted.bin", b"\0\1\2\3")
    os.setxattr(src / "etc" / "sub", "security.selinux", b"system_u:object_r:etc_t:s0\0")
    os.setxattr(src / "etc" / "sub", "user." + "k" * 200, os.urandom(3000))
    for i, p in enumerate(sorted(src.rglob("*"))):
        os.utime(p, ns=(0, 1_700_000_000_000_000_000 + i * 1_000_000_007), follow_symlinks=False)
    os.utime(src, ns=(0, 1_600_000_000_000_000_001))
    return src


def check_equal(want: fstree.Node, got_dir: Path, *, contents: bool = True) -> None:
    a = fstree.describe(want, contents=contents)
    b = fstree.describe(fstree.from_directory(got_dir), contents=contents)
    assert sorted(a) == sorted(b)
    diffs = {os.fsdecode(p): (a[p], b[p]) for p in a if a[p] != b[p]}
    assert not diffs


@pytest.mark.parametrize("options", [{}, {"chunk_bits": 12}, {"chunk_bits": 16}])
def test_mounted_image_equals_directory(tmp_path: Path, options: dict[str, object]) -> None:
    src = make_source(tmp_path)
    tree = fstree.from_directory(src)
    image = tmp_path / "img.erofs"
    erofs.build_image(tree, image, **options)  # type: ignore[arg-type]
    with mounted(image, tmp_path / "mnt") as mnt:
        check_equal(tree, mnt)
        assert os.stat(mnt / "etc" / "f100000").st_ino == os.stat(mnt / "etc" / "sub" / "hardlink").st_ino


def test_metadata_only_image_has_holes(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    tree = fstree.from_directory(src)
    image = tmp_path / "meta.erofs"
    erofs.build_image(tree, image, metadata_only=True)
    with mounted(image, tmp_path / "mnt") as mnt:
        check_equal(tree, mnt, contents=False)
        assert (mnt / "etc" / "f100000").read_bytes() == bytes(100_000)


def test_mounted_image_equals_tarball(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    tar = tmp_path / "src.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        for path in [src, *sorted(src.rglob("*"))]:
            st = path.lstat()
            if stat.S_ISSOCK(st.st_mode):
                continue  # tar has no sockets
            info = tf.gettarinfo(path, "./" + path.relative_to(src).as_posix())
            sec, nsec = divmod(st.st_mtime_ns, 10**9)
            info.pax_headers["mtime"] = f"{sec}.{nsec:09d}"
            for name in os.listxattr(path, follow_symlinks=False):
                value = os.getxattr(path, name, follow_symlinks=False)
                info.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
            if info.isreg():
                with open(path, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
    tree = fstree.from_tar(tar)
    image = tmp_path / "tar.erofs"
    erofs.build_image(tree, image)
    with mounted(image, tmp_path / "mnt") as mnt:
        check_equal(tree, mnt)
    assert fstree.describe(tree) == {
        k: v for k, v in fstree.describe(fstree.from_directory(src)).items() if k != b"etc/sock"
    }


_NAMES = st.binary(min_size=1, max_size=80).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
_ENTRY = st.tuples(
    st.integers(min_value=0, max_value=40),  # parent: index into the directories made so far
    _NAMES,
    st.sampled_from(["dir", "file", "file", "link", "dev", "hardlink"]),
    st.integers(min_value=0, max_value=20000),
    st.integers(min_value=0, max_value=3),
    st.dictionaries(
        st.sampled_from([b"user.a", b"trusted.b", b"security.c"]), st.binary(max_size=200), max_size=2
    ),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(_ENTRY, max_size=80), chunked=st.booleans())
def test_random_trees_mount_equal(tmp_path: Path, entries: list, chunked: bool) -> None:  # type: ignore[type-arg]
    root = fstree.Node.directory(mtime=1_700_000_000)
    dirs, files = [root], []
    for parent_i, name, kind, size, mt, xattrs in entries:
        parent = dirs[parent_i % len(dirs)]
        if name in parent.children:  # type: ignore[operator]
            continue
        kw = {
            "mtime": 1_700_000_000 + mt,
            "mtime_nsec": mt * 333_333_333,
            "xattrs": xattrs,
            "gid": mt * 30000,
        }
        if kind in ("link", "dev"):  # Linux keeps user.* xattrs to files and directories
            kw["xattrs"] = {k: v for k, v in xattrs.items() if not k.startswith(b"user.")}
        if kind == "dir":
            node = fstree.Node.directory(0o755, **kw)  # type: ignore[arg-type]
            dirs.append(node)
        elif kind == "file":
            node = fstree.Node.file(os.urandom(size), mode=0o640 | mt, **kw)  # type: ignore[arg-type]
            files.append(node)
        elif kind == "link":
            node = fstree.Node.symlink(b"L" * (1 + size % 4000), **kw)  # type: ignore[arg-type]
        elif kind == "dev":
            node = fstree.Node(mode=stat.S_IFBLK | 0o600, rdev=os.makedev(mt, size), **kw)  # type: ignore[arg-type]
        elif files:
            node = files[size % len(files)]
        else:
            continue
        parent.add(name, node)
    image = tmp_path / "random.erofs"
    erofs.build_image(root, image, chunk_bits=12 if chunked else None)
    with mounted(image, tmp_path / "mnt") as mnt:
        check_equal(root, mnt)
