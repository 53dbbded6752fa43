"""diskci.formats.cpio: deterministic newc archives that GNU cpio and busybox cpio read back."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from diskci.errors import FormatError
from diskci.formats.cpio import CpioArchive

EPOCH = 1764000000


def _sample(order: int = 1) -> CpioArchive:
    a = CpioArchive(mtime=EPOCH)
    adds = [
        lambda: a.add_file("init", b"#!/bin/sh\necho hi\n", 0o755),
        lambda: a.add_file("/bin/busybox", bytes(range(256)) * 9 + b"x", 0o755),
        lambda: a.add_symlink("bin/sh", "busybox"),
        lambda: a.add_dir("etc/diskci", 0o700),
        lambda: a.add_file("./etc/diskci/modules", b"virtio_net\n"),
        lambda: a.add_device("dev/console", "c", 5, 1, 0o600),
        lambda: a.add_file("lib/modules/6.1.0/modules.dep", b""),
        lambda: a.add_dir("proc"),
    ]
    for add in adds[::order]:
        add()
    return a


def test_same_entries_in_any_order_give_identical_bytes() -> None:
    assert _sample(1).to_bytes() == _sample(-1).to_bytes()


def test_layout_is_newc_with_fixed_owner_mtime_and_sequential_inodes() -> None:
    data = _sample().to_bytes()
    pos, names, inos = 0, [], []
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, _nlink, mtime, size = fields[:7]
        namesize = fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            break
        names.append(name)
        inos.append(ino)
        assert (uid, gid, mtime) == (0, 0, EPOCH), name
        assert mode != 0
    assert pos == len(data) and len(data) % 4 == 0
    assert inos == list(range(1, len(names) + 1))
    # every directory comes before what it holds
    for i, name in enumerate(names):
        parent = name.rpartition("/")[0]
        if parent:
            assert parent in names[:i], name


def _extract_with_busybox(archive: bytes, dest: Path) -> None:
    subprocess.run(
        ["busybox", "cpio", "-i", "-d", "-m"], input=archive, cwd=dest, check=True, capture_output=True
    )


def test_gnu_cpio_lists_every_member() -> None:
    archive = _sample().to_bytes()
    out = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True)
    listed = out.stdout.decode().split()
    assert listed == [e.path for e in _sample().entries()]
    verbose = subprocess.run(["cpio", "-tv", "--quiet"], input=archive, capture_output=True, check=True)
    lines = verbose.stdout.decode().splitlines()
    console = next(line for line in lines if line.endswith("dev/console"))
    assert console.split()[0] == "crw-------" and "5,   1" in console
    link = next(line for line in lines if "bin/sh" in line)
    assert link.startswith("lrwxrwxrwx") and link.endswith("bin/sh -> busybox")


def test_busybox_cpio_round_trip(tmp_path: Path) -> None:
    a = _sample()
    _extract_with_busybox(a.to_bytes(), tmp_path)
    for entry in a.entries():
        p = tmp_path / entry.path
        st = os.lstat(p)
        if entry.kind == "file":
            assert p.read_bytes() == entry.data
            assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(entry.mode)
            assert int(st.st_mtime) == EPOCH
        elif entry.kind == "symlink":
            assert os.readlink(p) == entry.data.decode()
        elif entry.kind == "directory":
            assert p.is_dir() and not p.is_symlink()
        elif entry.kind == "character device" and os.geteuid() == 0:
            assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (5, 1)


def test_write_streams_the_same_bytes(tmp_path: Path) -> None:
    a = _sample()
    with open(tmp_path / "x.cpio", "wb") as f:
        n = a.write(f)
    assert (tmp_path / "x.cpio").read_bytes() == a.to_bytes() and n == len(a.to_bytes())


@pytest.mark.parametrize("path", ["", "/", "a/../b", "a//b", "./", "a/./b"])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(FormatError, match="invalid member path"):
        CpioArchive(mtime=0).add_file(path, b"")


def test_duplicates_and_files_as_parents_are_refused() -> None:
    a = CpioArchive(mtime=0)
    a.add_file("etc/x", b"1")
    with pytest.raises(FormatError, match="added twice"):
        a.add_file("etc/x", b"2")
    with pytest.raises(FormatError, match="which is a file"):
        a.add_file("etc/x/y", b"")
    a.add_dir("etc", 0o700)  # an implicit parent may be given its own mode once
    with pytest.raises(FormatError, match="added twice"):
        a.add_dir("etc")
    with pytest.raises(FormatError, match="does not fit"):
        CpioArchive(mtime=-1)
