"""The EROFS writer: every image passes fsck.erofs; dump.erofs and fsck's extraction see what we wrote."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskci.formats import erofs, fstree
from diskci.formats.fstree import Node
from host_tools import needs_tool, unavailable

FSCK = shutil.which("fsck.erofs")
DUMP = shutil.which("dump.erofs")
pytestmark = [
    needs_tool("fsck.erofs", "Debian package 'erofs-utils'"),
    needs_tool("dump.erofs", "Debian package 'erofs-utils'"),
]


def fsck(image: Path, extract: Path | None = None) -> None:
    assert FSCK is not None
    argv = [FSCK, str(image)] if extract is None else [FSCK, f"--extract={extract}", str(image)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dump(image: Path, *args: str) -> str:
    assert DUMP is not None
    return subprocess.run([DUMP, *args, str(image)], capture_output=True, text=True, check=True).stdout


def sample_tree() -> Node:
    """Every inode kind and layout: inline tails, plain blocks, >1-block directory, long symlink,
    devices, FIFO, socket, a hardlink, big ids, nanosecond mtimes, shared and inline xattrs."""
    root = Node.directory(0o755, mtime=1_700_000_000)
    root.add(b"small", Node.file(b"hello\n", mtime=1_700_000_000))
    root.add(b"tail2000", Node.file(os.urandom(4096 + 2000), mtime=1_700_000_000))
    root.add(b"tail3000", Node.file(os.urandom(4096 + 3000), mtime=1_700_000_000, uid=70000, gid=70001))
    root.add(b"blocks", Node.file(os.urandom(3 * 4096), mtime=1_700_000_000))
    root.add(b"empty", Node.file(b"", mode=0o600, mtime=1_750_000_000, mtime_nsec=123456789))
    shared = Node.file(os.urandom(20000), mode=0o755, mtime=1_700_000_000)
    sub = root.add(b"sub", Node.directory(0o750, uid=1, gid=2, mtime=1_700_000_001, mtime_nsec=5))
    sub.add(b"linked", shared)
    root.add(b"hardlink", shared)
    many = root.add(b"many", Node.directory(mtime=1_700_000_000))
    for i in range(500):
        many.add(b"entry-with-a-fairly-long-name-%04d" % i, Node.file(b"%d" % i, mtime=1_700_000_000))
    root.add(b"link", Node.symlink(b"small", mtime=1_700_000_000))
    root.add(b"longlink", Node.symlink(b"t/" * 1800, mtime=1_700_000_000))
    root.add(b"null", Node(mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3), mtime=1_700_000_000))
    root.add(b"sda", Node(mode=stat.S_IFBLK | 0o660, rdev=os.makedev(8, 300), gid=6, mtime=1_700_000_000))
    root.add(b"fifo", Node(mode=stat.S_IFIFO | 0o644, mtime=1_700_000_000))
    root.add(b"sock", Node(mode=stat.S_IFSOCK | 0o755, mtime=1_700_000_000))
    for name in (b"small", b"tail2000", b"blocks"):
        root.children[name].xattrs[b"user.common"] = b"shared value"  # type: ignore[index]
    root.children[b"small"].xattrs.update(  # type: ignore[index]
        {b"security.selinux": b"system_u:object_r:etc_t:s0", b"trusted.x": b"\0\1\2", b"os2.odd": b"v"}
    )
    return root


def write(tree: Node, path: Path, **options: object) -> erofs.ImageInfo:
    return erofs.build_image(tree, path, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{}, {"chunk_bits": 12}, {"chunk_bits": 14}, {"metadata_only": True}])
def test_every_layout_passes_fsck(tmp_path: Path, options: dict[str, object]) -> None:
    image = tmp_path / "img.erofs"
    tree = sample_tree()
    if options.get("metadata_only"):
        for _, node in fstree.walk(tree):
            if node.is_reg and node.size > 64:
                node.data = None  # contents held elsewhere: written as holes
    info = write(tree, image, **options)
    assert image.stat().st_size == info.size == info.blocks * 4096
    fsck(image)
    stats = dump(image, "-S")
    assert "regular file count:\t\t507" in stats
    assert "directory count:\t\t3" in stats
    assert "symlink file count:\t\t2" in stats


def test_extracted_contents_equal_source(tmp_path: Path) -> None:
    tree = sample_tree()
    for name in (b"null", b"sda", b"fifo", b"sock"):  # fsck's extraction makes no device nodes unprivileged
        del tree.children[name]  # type: ignore[union-attr]
    for options in ({}, {"chunk_bits": 12}):
        image = tmp_path / "img.erofs"
        write(tree, image, **options)
        out = tmp_path / f"x{len(options)}"
        fsck(image, out)
        got = fstree.describe(fstree.from_directory(out), nlink=False)
        want = fstree.describe(tree, nlink=False)
        for path, entry in want.items():
            assert got[path].get("sha256") == entry.get("sha256"), path
            assert got[path].get("target") == entry.get("target"), path
            assert got[path]["mode"] == entry["mode"], path


def test_dump_shows_inode_details(tmp_path: Path) -> None:
    image = tmp_path / "img.erofs"
    write(sample_tree(), image)
    sb = dump(image, "-s")
    assert "Filesystem inode count:                       515" in sb
    hard = dump(image, "--path=/hardlink")
    assert "Links: 2" in hard and "Size: 20000" in hard
    assert dump(image, "--path=/sub/linked").split("NID:")[1].split()[0] == hard.split("NID:")[1].split()[0]
    empty = dump(image, "--path=/empty")
    assert "Inode size: 64" in empty and "2025-06-15 15:06:40.123456789" in empty  # extended: own mtime
    assert "Inode size: 32" in dump(image, "--path=/small")  # compact: the oldest mtime is the build time
    big = dump(image, "--path=/tail3000")
    assert "Uid: 70000" in big and "Gid: 70001" in big and "Inode size: 64" in big
    assert "Layout: 2" in dump(image, "--path=/tail2000")  # inline tail
    assert "Layout: 0" in dump(image, "--path=/tail3000")  # more than half a block: plain
    assert "Size: 3600" in dump(image, "--path=/longlink")
    listing = dump(image, "--ls", "--path=/many")
    assert "entry-with-a-fairly-long-name-0499" in listing


def test_chunk_layouts(tmp_path: Path) -> None:
    image = tmp_path / "img.erofs"
    write(sample_tree(), image, chunk_bits=12)
    assert "Layout: 4" in dump(image, "--path=/hardlink")
    meta = tmp_path / "meta.erofs"
    tree = sample_tree()
    tree.children[b"hardlink"].data = None  # type: ignore[index]  # contents held elsewhere
    info = write(tree, meta, metadata_only=True)
    assert "Layout: 4" in dump(meta, "--path=/hardlink")
    assert "Size: 20000" in dump(meta, "--path=/hardlink")
    assert info.size < image.stat().st_size  # no data blocks for holes


def test_deterministic_regardless_of_insertion_order(tmp_path: Path) -> None:
    a = sample_tree()
    b = sample_tree()
    b.children = dict(reversed(list(b.children.items())))  # type: ignore[arg-type]
    for name in (b"small", b"tail2000", b"tail3000", b"blocks", b"hardlink", b"empty"):
        b.children[name].data = a.children[name].data  # type: ignore[index]
        b.children[name].size = a.children[name].size  # type: ignore[index]
    b.children[b"sub"].children[b"linked"] = b.children[b"hardlink"]  # type: ignore[index]
    out_a, out_b = io.BytesIO(), io.BytesIO()
    ia = erofs.write_image(a, out_a)
    ib = erofs.write_image(b, out_b)
    assert out_a.getvalue() == out_b.getvalue()
    assert ia.digest == ib.digest
    from diskci.formats.fsverity import digest_bytes

    assert ia.digest == digest_bytes(out_a.getvalue())


def test_directory_source_with_xattrs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x" * 5000)
    os.link(src / "d" / "f", src / "g")
    os.symlink("d/f", src / "s")
    try:
        os.setxattr(src / "g", "user.note", b"kept")
    except OSError:
        # the filesystem pytest's temporary directories are on is the host's, not make setup's
        unavailable("the temporary directory's filesystem has no user xattrs", ci_guarantee=None)
    tree = fstree.from_directory(src)
    assert tree.children[b"g"] is tree.children[b"d"].children[b"f"]  # type: ignore[index]
    image = tmp_path / "img.erofs"
    write(tree, image)
    fsck(image)
    assert "Xattr size: 24" in dump(image, "--path=/d/f")


def test_xxh32_reference_values() -> None:
    assert erofs.xxh32(b"", 0) == 0x02CC5D05
    assert erofs.xxh32(b"abc", 0) == 0x32D153FF
    assert erofs.xxh32(b"Nobody inspects the spammish repetition", 0) == 0xE2293B2F


def test_bad_trees_are_refused(tmp_path: Path) -> None:
    with pytest.raises(erofs.ErofsError, match="root"):
        erofs.write_image(Node.file(b"x"), io.BytesIO())
    root = Node.directory()
    d = root.add(b"d", Node.directory())
    root.add(b"e", d)
    with pytest.raises(erofs.ErofsError, match="appears twice"):
        erofs.write_image(root, io.BytesIO())
    with pytest.raises(fstree.TreeFormatError, match="255"):
        Node.directory().add(b"n" * 256, Node.file(b""))
    root = Node.directory()
    root.add(b"big", Node.file(b"", mode=0o644)).xattrs[b"user.big"] = b"v" * 70000
    with pytest.raises(erofs.ErofsError, match="too long"):
        erofs.build_image(root, tmp_path / "bad.erofs")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


_NAMES = st.binary(min_size=1, max_size=60).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
_XATTRS = st.dictionaries(
    st.sampled_from([b"user.a", b"user.bb", b"trusted.t", b"security.selinux", b"user." + b"k" * 100]),
    st.binary(max_size=300),
    max_size=3,
)
_ENTRIES = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=50),  # parent: index into the directories made so far
        _NAMES,
        st.sampled_from(["dir", "file", "file", "file", "link", "fifo", "hardlink"]),
        st.integers(min_value=0, max_value=12000),  # file size or symlink target length
        st.integers(min_value=0, max_value=3),  # mtime variant
        _XATTRS,
    ),
    max_size=60,
)


def random_tree(entries: list[tuple[int, bytes, str, int, int, dict[bytes, bytes]]]) -> Node:
    root = Node.directory(mtime=1_700_000_000)
    dirs, files = [root], []
    for parent_i, name, kind, size, mt, xattrs in entries:
        parent = dirs[parent_i % len(dirs)]
        if name in parent.children:  # type: ignore[operator]
            continue
        common = {"mtime": 1_700_000_000 + mt * 1000, "mtime_nsec": mt * 7, "xattrs": dict(xattrs)}
        if kind == "dir":
            node = Node.directory(0o700 + mt, **common)  # type: ignore[arg-type]
            dirs.append(node)
        elif kind == "file":
            node = Node.file(bytes([size % 251]) * size, uid=mt * 40000, **common)  # type: ignore[arg-type]
            files.append(node)
        elif kind == "link":
            node = Node.symlink(b"t" * max(1, size % 4000), **common)  # type: ignore[arg-type]
        elif kind == "fifo":
            node = Node(mode=stat.S_IFIFO | 0o644, **common)  # type: ignore[arg-type]
        elif files:
            node = files[size % len(files)]
        else:
            continue
        parent.add(name, node)
    return root


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=_ENTRIES, chunked=st.booleans())
def test_random_trees_pass_fsck(tmp_path: Path, entries: list, chunked: bool) -> None:  # type: ignore[type-arg]
    image = tmp_path / "random.erofs"
    tree = random_tree(entries)
    erofs.build_image(tree, image, chunk_bits=12 if chunked else None)
    fsck(image)
    out = tmp_path / "x"
    shutil.rmtree(out, ignore_errors=True)
    fsck(image, out)
    got = fstree.describe(fstree.from_directory(out), nlink=False)
    want = fstree.describe(tree, nlink=False)
    assert sorted(got) == sorted(want)
    assert all(got[p].get("sha256") == want[p].get("sha256") for p in want)
