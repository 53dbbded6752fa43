"""Byte identity with the reference implementation: the same trees through ``mkcomposefs`` and diskci.

mkcomposefs is packaged from Debian 13 on (``apt-get install composefs``); Debian 12 has none, so these
tests skip there, in CI too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_composefs_dump import trees

from diskci.formats import composefs, composefs_dump, composefs_reader, fstree
from host_tools import needs_tool, require_root

MKCOMPOSEFS = shutil.which("mkcomposefs")
pytestmark = needs_tool(
    "mkcomposefs", "make setup builds it on Debian 12; Debian 13: apt-get install composefs"
)
ROOT = os.geteuid() == 0


def make_source(base: Path, *, whiteout: bool) -> Path:
    src = base / "src"
    (src / "etc" / "deep" / "er").mkdir(parents=True)
    (src / "etc" / "small").write_bytes(b"tiny\n")
    (src / "etc" / "edge64").write_bytes(b"6" * 64)
    (src / "etc" / "edge65").write_bytes(b"7" * 65)
    (src / "etc" / "big").write_bytes(os.urandom(300_000))
    (src / "etc" / "dup").write_bytes((src / "etc" / "big").read_bytes())
    os.link(src / "etc" / "big", src / "etc" / "hardlink")
    os.link(src / "etc" / "edge65", src / "hardlink65")
    (src / "etc" / "empty").write_bytes(b"")
    (src / "etc" / "deep" / "er" / "f").write_bytes(os.urandom(5000))
    os.symlink("small", src / "etc" / "link")
    os.symlink("x" * 4000, src / "etc" / "longlink")
    os.mkfifo(src / "fifo")
    many = src / "many"
    many.mkdir()
    for i in range(700):
        (many / f"file-{i:04d}-with-a-long-name").write_bytes(b"%d" % i)
    with contextlib.suppress(OSError):
        os.setxattr(src / "etc" / "small", "user.a", b"1")
        os.setxattr(src / "etc" / "edge64", "user.a", b"1")
        os.setxattr(src / "etc" / "big", "user.b", b"\0binary\xff")
    if ROOT:
        os.mknod(src / "null", 0o20666, os.makedev(1, 3))
        os.mknod(src / "sda", 0o60660, os.makedev(8, 16))
        os.setxattr(src / "etc", "trusted.overlay.opaque", b"y")
        os.setxattr(src / "etc" / "big", "security.selinux", b"system_u:object_r:etc_t:s0")
        os.chown(src / "etc" / "big", 70000, 70001)
        if whiteout:
            os.mknod(src / "etc" / "gone", 0o20000, os.makedev(0, 0))
    os.utime(src / "etc" / "small", ns=(0, 1_600_000_000_987_654_321))
    return src


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--use-epoch"],
        ["--min-version", "1"],
        ["--max-version", "0"],
        ["--min-version", "1", "--max-version", "1"],
    ],
)
@pytest.mark.parametrize("whiteout", [False, True])
def test_identical_to_mkcomposefs(tmp_path: Path, flags: list[str], whiteout: bool) -> None:
    if whiteout and not ROOT:
        require_root("a whiteout (char device 0/0) needs root to create")
    src = make_source(tmp_path, whiteout=whiteout)
    ref_store, our_store = tmp_path / "ref-objects", tmp_path / "our-objects"
    ref = tmp_path / "ref.cfs"
    assert MKCOMPOSEFS is not None
    proc = subprocess.run(
        [MKCOMPOSEFS, f"--digest-store={ref_store}", "--print-digest", *flags, str(src), str(ref)],
        capture_output=True,
        text=True,
        check=True,
    )
    given = {flags[i]: int(flags[i + 1]) for i in range(len(flags)) if flags[i].endswith("version")}
    lo, hi = (0, 1) if not given else (given.get("--min-version", 0), given.get("--max-version", 0))
    ours = tmp_path / "ours.cfs"
    result = composefs.build(
        src, ours, digest_store=our_store, use_epoch="--use-epoch" in flags, min_version=lo, max_version=hi
    )
    assert ours.read_bytes() == ref.read_bytes()
    assert result.digest == proc.stdout.strip()
    ref_objects = sorted(p.relative_to(ref_store).as_posix() for p in ref_store.rglob("*") if p.is_file())
    our_objects = sorted(p.relative_to(our_store).as_posix() for p in our_store.rglob("*") if p.is_file())
    assert ref_objects == our_objects


_NAMES = st.text(
    st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=30
)
_ENTRIES = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=30),
        _NAMES.filter(lambda n: n not in (".", "..")),
        st.sampled_from(["dir", "file", "file", "file", "link", "fifo"]),
        st.integers(min_value=0, max_value=9000),
        st.integers(min_value=0, max_value=3),
        st.booleans(),
    ),
    max_size=50,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=_ENTRIES, epoch=st.booleans())
def test_random_trees_identical_to_mkcomposefs(tmp_path: Path, entries: list, epoch: bool) -> None:  # type: ignore[type-arg]
    base = tmp_path / f"case-{os.urandom(4).hex()}"
    src = base / "src"
    src.mkdir(parents=True)
    dirs = [src]
    for parent_i, name, kind, size, mt, xattr in entries:
        path = dirs[parent_i % len(dirs)] / name
        if len(os.fsencode(name)) > 255 or os.path.lexists(path):
            continue
        if kind == "dir":
            path.mkdir()
            dirs.append(path)
        elif kind == "file":
            path.write_bytes(bytes([size % 256]) * size)
        elif kind == "link":
            os.symlink("t" * (1 + size % 300), path)
        else:
            os.mkfifo(path)
        if xattr and kind in ("dir", "file"):
            with contextlib.suppress(OSError):
                os.setxattr(path, "user.x", b"%d" % mt)
        os.utime(path, ns=(0, 1_700_000_000_000_000_000 + mt * 123_456_789), follow_symlinks=False)
    flags = ["--use-epoch"] if epoch else []
    assert MKCOMPOSEFS is not None
    subprocess.run([MKCOMPOSEFS, *flags, str(src), str(base / "ref.cfs")], check=True, capture_output=True)
    with open(base / "ours.cfs", "wb") as f:
        composefs.write(fstree.from_directory(src, hardlinks=False), f, use_epoch=epoch)
    assert (base / "ours.cfs").read_bytes() == (base / "ref.cfs").read_bytes()


COMPOSEFS_INFO = shutil.which("composefs-info")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees(), max_version=st.sampled_from([0, 1]))
def test_dumps_build_what_mkcomposefs_builds_and_read_as_composefs_info(
    tmp_path: Path, tree: fstree.Node, max_version: int
) -> None:
    base = tmp_path / f"case-{os.urandom(4).hex()}"
    base.mkdir()
    described, _, _ = composefs.describe(tree)
    (base / "x.dump").write_bytes(composefs_dump.dumps(described))
    assert MKCOMPOSEFS is not None
    subprocess.run(
        [
            MKCOMPOSEFS,
            "--from-file",
            "--max-version",
            str(max_version),
            str(base / "x.dump"),
            str(base / "ref.cfs"),
        ],
        check=True,
        capture_output=True,
    )
    ref = (base / "ref.cfs").read_bytes()
    with open(base / "ours.cfs", "wb") as f:
        composefs.write_described(composefs_dump.read(str(base / "x.dump")), f, max_version=max_version)
    assert (base / "ours.cfs").read_bytes() == ref
    if COMPOSEFS_INFO is None:
        return
    info = subprocess.run(
        [COMPOSEFS_INFO, "dump", str(base / "ref.cfs")], check=True, capture_output=True
    ).stdout
    ours = composefs_dump.dumps(composefs_reader.read(ref))
    if all(n == 1 for n in fstree.link_counts(tree).values()):
        assert ours == info  # with hardlinks, composefs-info may name another of a file's names first
    with open(base / "again.cfs", "wb") as f:
        composefs.write_described(composefs_dump.parse(info), f, max_version=max_version)
    assert (base / "again.cfs").read_bytes() == ref or not all(
        n == 1 for n in fstree.link_counts(tree).values()
    )
