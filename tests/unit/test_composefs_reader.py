"""Reading composefs images back: valid images give their tree, and a corrupt or hostile image gives a
clear ImageFormatError (or a tree), never another exception, however its bytes are changed."""

from __future__ import annotations

import io
import os
import random
import stat

import pytest

from diskci.formats import composefs, composefs_dump, composefs_reader
from diskci.formats.composefs_reader import ImageFormatError
from diskci.formats.fstree import Node


def sample_image() -> bytes:
    root = Node.directory(
        0o755, mtime=1_700_000_000, xattrs={b"security.selinux": b"system_u:object_r:root_t"}
    )
    assert root.children is not None
    etc = root.add(b"etc", Node.directory(0o755, mtime=1_700_000_001, uid=70000))
    big = etc.add(
        b"big", Node.file(bytes(range(256)) * 40, xattrs={b"user.a": b"1", b"trusted.overlay.x": b"y"})
    )
    etc.add(b"small", Node.file(b"hello\n", xattrs={b"user.a": b"1"}))
    root.add(b"hard", big)
    root.add(b"link", Node.symlink(b"etc/small"))
    root.add(b"long", Node.symlink(b"t" * 3000))
    root.add(b"null", Node(mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3)))
    etc.add(b"gone", Node(mode=stat.S_IFCHR))
    many = root.add(b"many", Node.directory())
    for i in range(300):
        many.add(b"file-%04d-with-a-longer-name" % i, Node.file(b"%d" % i))
    out = io.BytesIO()
    composefs.write(root, out)
    return out.getvalue()


IMAGE = sample_image()


def test_valid_image_reads_back() -> None:
    described = composefs_reader.read(IMAGE)
    root = described.root
    assert root.children is not None and b"00" not in root.children
    assert root.children[b"hard"] is root.children[b"etc"].children[b"big"]  # type: ignore[index]
    gone = root.children[b"etc"].children[b"gone"]  # type: ignore[index]
    assert stat.S_ISCHR(gone.mode) and gone.rdev == 0
    big = root.children[b"hard"]
    assert (
        isinstance(big, composefs.BackedNode)
        and big.digest is not None
        and big.xattrs[b"trusted.overlay.x"] == b"y"
    )
    out = io.BytesIO()
    composefs.write_described(described, out)
    assert out.getvalue() == IMAGE


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "smaller than one block"),
        (b"\0" * 8192, "no composefs magic"),
        (IMAGE[:1024] + b"\0" * 3072, "no EROFS superblock"),
        (IMAGE[:4096], "beyond"),
    ],
)
def test_not_an_image(data: bytes, message: str) -> None:
    with pytest.raises(ImageFormatError, match=message):
        composefs_reader.read(data)


def test_mutated_images_give_a_tree_or_a_clear_error() -> None:
    rng = random.Random(19)
    outcomes = {"tree": 0, "error": 0}
    for _ in range(1500):
        data = bytearray(IMAGE)
        for _ in range(rng.choice([1, 2, 8])):
            # mostly the metadata (header, superblock, inodes, xattrs, directories), where offsets live
            at = rng.randrange(min(len(data), 3 * 4096)) if rng.random() < 0.9 else rng.randrange(len(data))
            data[at] = rng.randrange(256)
        if rng.random() < 0.1:
            del data[rng.randrange(4096, len(data)) :]
        try:
            described = composefs_reader.read(bytes(data))
        except ImageFormatError as exc:
            assert str(exc).startswith("image: ")
            outcomes["error"] += 1
            continue
        composefs_dump.dumps(described)  # whatever was read can be shown
        outcomes["tree"] += 1
    assert outcomes["tree"] and outcomes["error"]


def test_a_second_name_for_a_directory_is_refused() -> None:
    root_nid = int.from_bytes(IMAGE[1024 + 14 : 1024 + 16], "little")
    patched = _repoint(bytearray(IMAGE), b"etc", root_nid)  # a loop: /etc is the root again
    with pytest.raises(ImageFormatError, match="a second name for a directory"):
        composefs_reader.read(bytes(patched))


def _repoint(data: bytearray, name: bytes, nid: int) -> bytearray:
    """Make the root directory's dirent called ``name`` point at ``nid``."""
    meta = int.from_bytes(data[1024 + 40 : 1024 + 44], "little") * 4096
    for block_start in range(meta, len(data) - 12, 4):
        first = int.from_bytes(data[block_start + 8 : block_start + 10], "little")
        if not first or first % 12 or first > 4096:
            continue
        count = first // 12
        offs = [
            int.from_bytes(data[block_start + 12 * i + 8 : block_start + 12 * i + 10], "little")
            for i in range(count)
        ]
        if offs != sorted(offs) or offs[0] != first:
            continue
        for i in range(count):
            end = offs[i + 1] if i + 1 < count else offs[i] + len(name)
            if bytes(data[block_start + offs[i] : block_start + end]) == name:
                data[block_start + 12 * i : block_start + 12 * i + 8] = nid.to_bytes(8, "little")
                return data
    raise AssertionError("dirent not found")
