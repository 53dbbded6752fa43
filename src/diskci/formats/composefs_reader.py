"""Reading a composefs image (diskci's or mkcomposefs's) back into the :class:`Described` tree it holds.

The image is untrusted (it may come from a registry): every offset, length and count is checked against
the image before it is used, directories are read with an explicit stack (no recursion), a directory
reached twice is refused (so the tree is finite and acyclic), and nothing is allocated beyond what the
image's own bytes justify. A corrupt or hostile image raises :class:`ImageFormatError` naming what is
wrong and where; any other exception is a bug.

What is read, as ``composefs-info dump`` 1.0.8 reads it: the ``00``..``ff`` whiteouts (char devices 0/0)
are left out; ``trusted.overlay.metacopy`` gives a file's fs-verity digest and ``trusted.overlay.redirect``
its payload (without the leading '/'); a file marked with the escaped whiteout xattr is a whiteout again;
the whiteout markers are dropped, ``trusted.overlay.overlay.*`` is unescaped and the other
``trusted.overlay.*`` dropped; a compact inode's mtime is the superblock's build time. Two deliberate
differences: a redirect is read within its xattr (libcomposefs reads two bytes past it), and a file with
several names is stored, in the result, at the name its inode was written for (composefs-info names the
first one met depth first), so the dump builds the same image again.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from pathlib import Path

from diskci.errors import FormatError
from diskci.formats.composefs import MAGIC, BackedNode, Described
from diskci.formats.fstree import Node

BLOCK_SIZE = 4096
SUPER_OFFSET = 1024
EROFS_MAGIC = 0xE0F5E1E2
INLINE_CONTENT_MAX = 5000
PATH_MAX = 4096
NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_LIMIT = 0xFFFF
LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE, LAYOUT_CHUNK_BASED = 0, 2, 4
_PREFIXES = (b"", b"user.", b"system.posix_acl_access", b"system.posix_acl_default", b"trusted.", b"lustre.",
             b"security.")  # fmt: skip
_OVERLAY = b"trusted.overlay."
_ESCAPED = b"trusted.overlay.overlay."
_SKIPPED = (b"trusted.overlay.overlay.whiteouts", b"user.overlay.whiteout", b"user.overlay.whiteouts")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_COMPACT = struct.Struct("<HHHHIIIIHHI")
_EXTENDED = struct.Struct("<HHHHQIIIIQII16x")
_XATTR_ENTRY = struct.Struct("<BBH")
_DIRENT = struct.Struct("<QHBx")


class ImageFormatError(FormatError):
    """A composefs image that cannot be read: corrupt, truncated, or not composefs at all."""


class _Image:
    def __init__(self, data: bytes | mmap.mmap, name: str) -> None:
        self.data = data
        self.name = name
        self.size = len(data)
        if self.size < BLOCK_SIZE:
            self.fail(f"{self.size} bytes, smaller than one block: not a composefs image")
        magic, version = struct.unpack_from("<II", data, 0)
        if magic != MAGIC:
            self.fail(f"no composefs magic (0x{magic:08x}, expected 0x{MAGIC:08x})")
        if version != 1:
            self.fail(f"composefs header version {version}, only version 1 is known")
        sb = SUPER_OFFSET
        if _U32.unpack_from(data, sb)[0] != EROFS_MAGIC:
            self.fail("no EROFS superblock at byte 1024")
        if data[sb + 12] != 12:
            self.fail(f"block size 2**{data[sb + 12]}, composefs images use 4096")
        self.root_nid = _U16.unpack_from(data, sb + 14)[0]
        self.build_time, self.build_nsec = struct.unpack_from("<QI", data, sb + 24)
        meta, xattr = struct.unpack_from("<II", data, sb + 40)
        self.meta, self.xattrs = meta * BLOCK_SIZE, xattr * BLOCK_SIZE
        if self.meta >= self.size or self.xattrs >= self.size:
            self.fail("metadata or shared xattrs start beyond the end of the image")

    def fail(self, what: str) -> None:
        raise ImageFormatError(f"{self.name}: {what}")

    def bytes_at(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            self.fail(f"{what}: bytes {offset}..{offset + length} lie beyond the image ({self.size} bytes)")
        return bytes(self.data[offset : offset + length])

    def block(self, blkaddr: int, what: str, length: int = BLOCK_SIZE) -> bytes:
        return self.bytes_at(blkaddr * BLOCK_SIZE, length, what)


class _Inode:
    """One inode's fields, checked to lie in the image."""

    def __init__(self, img: _Image, nid: int) -> None:
        self.nid = nid
        pos = img.meta + nid * 32
        where = f"inode {nid}"
        head = img.bytes_at(pos, 2, where)
        fmt = _U16.unpack(head)[0]
        self.layout = (fmt >> 1) & 7
        if fmt & 1:
            f = _EXTENDED.unpack(img.bytes_at(pos, _EXTENDED.size, where))
            _, icount, self.mode, _, self.size, self.i_u, _, self.uid, self.gid, mtime, nsec, self.nlink = f
            self.mtime = mtime - (1 << 64) if mtime >> 63 else mtime
            self.nsec = nsec
            isize = _EXTENDED.size
        else:
            f = _COMPACT.unpack(img.bytes_at(pos, _COMPACT.size, where))
            _, icount, self.mode, self.nlink, self.size, _, self.i_u, _, self.uid, self.gid, _ = f
            bt = img.build_time
            self.mtime, self.nsec = (bt - (1 << 64) if bt >> 63 else bt), img.build_nsec
            isize = _COMPACT.size
        self.xattr_start = pos + isize
        self.xattr_size = 12 + (icount - 1) * 4 if icount else 0
        self.tail = self.xattr_start + self.xattr_size
        self.kind = stat.S_IFMT(self.mode)
        self.tailpacked = self.layout == LAYOUT_FLAT_INLINE
        img.bytes_at(self.xattr_start, self.xattr_size, f"{where}: xattrs")


class _Reader:
    def __init__(self, img: _Image) -> None:
        self.img = img
        self.nodes: dict[int, Node] = {}  # by nid
        self.shared: dict[int, tuple[int, bytes, bytes]] = {}  # shared xattrs read, by index
        self.dir_bytes = 0  # directories' data never overlaps in an image: their sizes add up within it

    def node(self, nid: int, path: bytes) -> tuple[Node | None, _Inode | None]:
        """The node of ``nid`` (None for a whiteout 0/0, which is left out) and its inode."""
        ino = _Inode(self.img, nid)
        shown = path.decode(errors="replace") or "/"
        if ino.kind == stat.S_IFCHR and ino.i_u == 0:
            return None, ino
        if ino.kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
                            stat.S_IFIFO, stat.S_IFSOCK):  # fmt: skip
            self.img.fail(f"{shown}: unknown file type {oct(ino.kind)}")
        node: Node = BackedNode(mode=ino.mode) if ino.kind == stat.S_IFREG else Node(mode=ino.mode)
        node.uid, node.gid, node.nlink, node.size = ino.uid, ino.gid, ino.nlink, ino.size
        node.mtime, node.mtime_nsec = ino.mtime, ino.nsec
        if ino.kind in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = ino.i_u
        elif ino.kind == stat.S_IFDIR:
            node.children = {}
        elif ino.kind == stat.S_IFLNK:
            node.target = self.symlink(ino, shown)
            node.size = len(node.target)
        elif ino.kind == stat.S_IFREG and ino.size:
            if ino.layout in (LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE):
                node.data = self.content(ino, shown)
            elif ino.layout != LAYOUT_CHUNK_BASED:
                self.img.fail(f"{shown}: data layout {ino.layout} (expected flat or chunk-based)")
        self.read_xattrs(node, ino, shown)
        return node, ino

    def flat(self, ino: _Inode, shown: str) -> bytes:
        """All the bytes of a flat inode (its blocks, then its inline tail)."""
        if ino.layout not in (LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE):
            self.img.fail(f"{shown}: data layout {ino.layout} (expected flat)")
        if ino.size > self.img.size:
            self.img.fail(f"{shown}: size {ino.size} larger than the image")
        tail = ino.size % BLOCK_SIZE if ino.tailpacked else 0
        if ino.tailpacked and tail == 0 and ino.size:
            self.img.fail(f"{shown}: an inline tail of 0 bytes")
        head = self.img.block(ino.i_u, f"{shown}: data", ino.size - tail) if ino.size - tail else b""
        return head + (self.img.bytes_at(ino.tail, tail, f"{shown}: inline data") if tail else b"")

    def symlink(self, ino: _Inode, shown: str) -> bytes:
        if ino.size >= PATH_MAX:
            self.img.fail(f"{shown}: symlink target of {ino.size} bytes (at most {PATH_MAX - 1})")
        if ino.tailpacked:  # the whole target follows the inode
            raw = self.img.bytes_at(ino.tail, ino.size, f"{shown}: symlink target")
        else:
            raw = self.flat(ino, shown)
        target = raw.split(b"\0", 1)[0]
        if not target:
            self.img.fail(f"{shown}: empty symlink target")
        return target

    def content(self, ino: _Inode, shown: str) -> bytes:
        if ino.size > INLINE_CONTENT_MAX:
            self.img.fail(f"{shown}: inline file of {ino.size} bytes (at most {INLINE_CONTENT_MAX})")
        return self.flat(ino, shown)

    def read_xattrs(self, node: Node, ino: _Inode, shown: str) -> None:
        if not ino.xattr_size:
            return
        img = self.img
        shared = img.data[ino.xattr_start + 4]
        start = ino.xattr_start + 12
        end = ino.xattr_start + ino.xattr_size
        pos = start + 4 * shared
        if pos > end:
            img.fail(f"{shown}: {shared} shared xattrs do not fit in {ino.xattr_size} bytes")
        entries: list[tuple[int, bytes, bytes]] = []
        while pos + _XATTR_ENTRY.size < end:
            name_len, index, value_len = _XATTR_ENTRY.unpack(img.bytes_at(pos, 4, f"{shown}: xattr"))
            body = 4 + name_len + value_len
            if pos + body > end:
                img.fail(f"{shown}: an xattr runs past the inode's xattrs")
            raw = img.bytes_at(pos + 4, name_len + value_len, f"{shown}: xattr")
            entries.append((index, raw[:name_len], raw[name_len:]))
            pos += -(-body // 4) * 4
        for i in range(shared):
            idx = _U32.unpack(img.bytes_at(start + 4 * i, 4, f"{shown}: shared xattr"))[0]
            entry = self.shared.get(idx)
            if entry is None:
                at = img.xattrs + idx * 4
                name_len, index, value_len = _XATTR_ENTRY.unpack(
                    img.bytes_at(at, 4, f"{shown}: shared xattr")
                )
                raw = img.bytes_at(at + 4, name_len + value_len, f"{shown}: shared xattr")
                entry = self.shared[idx] = (index, raw[:name_len], raw[name_len:])
            entries.append(entry)
        order: list[bytes] = []
        values: dict[bytes, bytes] = {}
        for index, suffix, value in entries:
            if index >= len(_PREFIXES):
                img.fail(f"{shown}: xattr name index {index} (expected 0..{len(_PREFIXES) - 1})")
            name = (_PREFIXES[index] + suffix).split(b"\0", 1)[0]
            if not self.overlay(node, name, value):
                continue
            if name.startswith(_ESCAPED):
                name = b"trusted." + name[len(_OVERLAY) :]
            if not name or len(name) > XATTR_NAME_MAX:
                img.fail(f"{shown}: an xattr name of {len(name)} bytes (1 to {XATTR_NAME_MAX})")
            if name in values:  # libcomposefs replaces it, moving the last one into its place
                at = order.index(name)
                order[at] = order[-1]
                order.pop()
            order.append(name)
            values[name] = value
        budget = 0
        for name in order:
            budget += 7 + len(name) + len(values[name])
        if order and budget + 12 > XATTR_LIMIT:
            img.fail(f"{shown}: more than {XATTR_LIMIT} bytes of xattrs")
        node.xattrs = {name: values[name] for name in order}

    @staticmethod
    def overlay(node: Node, name: bytes, value: bytes) -> bool:
        """Take in what an overlay xattr says; whether the xattr stays one of the file's own."""
        is_reg = stat.S_ISREG(node.mode)
        if name == _OVERLAY + b"redirect":
            if is_reg and isinstance(node, BackedNode):
                if len(value) > 1 and value[:1] == b"/":
                    value = value[1:]
                node.payload = value.split(b"\0", 1)[0]
            return False
        if name == _OVERLAY + b"metacopy":
            if is_reg and isinstance(node, BackedNode) and len(value) == 36:
                node.digest = value[4:]
            return False
        if name == _ESCAPED + b"whiteout" and is_reg:
            node.mode = stat.S_IFCHR | (node.mode & ~0o170000)
            node.rdev = node.size = 0
            return False
        if name in _SKIPPED:
            return False
        return not (name.startswith(_OVERLAY) and not name.startswith(_ESCAPED))

    def dirents(self, ino: _Inode, shown: str) -> list[tuple[bytes, int]]:
        """(name, nid) of every entry but "." and "..", as stored."""
        out: list[tuple[bytes, int]] = []
        n_blocks = -(-ino.size // BLOCK_SIZE)
        self.dir_bytes += ino.size
        if self.dir_bytes > self.img.size:
            self.img.fail(f"{shown}: directories larger than the image (they overlap)")
        if ino.layout not in (LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE):
            self.img.fail(f"{shown}: directory data layout {ino.layout} (expected flat)")
        oob = n_blocks - 1 if ino.tailpacked else n_blocks
        blocks: list[bytes] = []
        for b in range(oob):
            size = BLOCK_SIZE
            if not ino.tailpacked and b + 1 == oob and ino.size % BLOCK_SIZE:
                size = ino.size % BLOCK_SIZE
            blocks.append(self.img.block(ino.i_u + b, f"{shown}: directory block", size))
        if ino.tailpacked and n_blocks:
            tail = ino.size % BLOCK_SIZE
            if tail == 0:
                self.img.fail(f"{shown}: an inline directory tail of 0 bytes")
            blocks.append(self.img.bytes_at(ino.tail, tail, f"{shown}: inline directory entries"))
        for block in blocks:
            if len(block) < _DIRENT.size:
                self.img.fail(f"{shown}: a directory block of {len(block)} bytes")
            first = _U16.unpack_from(block, 8)[0]
            if first % _DIRENT.size or not first or first > len(block):
                self.img.fail(f"{shown}: bad directory entries (first name at {first})")
            count = first // _DIRENT.size
            heads = [_DIRENT.unpack_from(block, i * _DIRENT.size) for i in range(count)]
            for i, (nid, nameoff, _) in enumerate(heads):
                end = heads[i + 1][1] if i + 1 < count else len(block)
                if not first <= nameoff <= end <= len(block):
                    self.img.fail(f"{shown}: directory entry {i} has its name out of place")
                name = block[nameoff:end]
                if i + 1 == count:
                    name = name.split(b"\0", 1)[0]
                if name in (b".", b".."):
                    continue
                out.append((name.split(b"\0", 1)[0], nid))
        return out

    def read(self) -> Described:
        root, ino = self.node(self.img.root_nid, b"")
        if root is None or ino is None or not root.is_dir:
            self.img.fail("the root is not a directory")
        assert root is not None and ino is not None
        self.nodes[ino.nid] = root
        seen: dict[int, tuple[int, bytes]] = {}  # nid → its first name met (depth first), as the C reader
        stack: list[tuple[Node, _Inode, bytes]] = [(root, ino, b"")]
        while stack:
            parent, pino, path = stack.pop()
            assert parent.children is not None
            children: list[tuple[Node, _Inode, bytes]] = []
            for name, nid in self.dirents(pino, path.decode(errors="replace") or "/"):
                child_path = path + b"/" + name
                shown = child_path.decode(errors="replace")
                if not name or len(name) > NAME_MAX:
                    self.img.fail(f"{shown}: a file name of {len(name)} bytes (1 to {NAME_MAX})")
                if name in parent.children:
                    self.img.fail(f"{shown}: two entries of that name")
                known = self.nodes.get(nid)
                if known is None:
                    child, cino = self.node(nid, child_path)
                    if child is None or cino is None:
                        continue  # a whiteout 0/0 (the 00..ff of the root)
                    self.nodes[nid] = child
                    seen[id(child)] = (id(parent), name)
                    if child.is_dir:
                        children.append((child, cino, child_path))
                else:
                    if known.is_dir:
                        self.img.fail(f"{shown}: a second name for a directory")
                    child = known
                parent.children[name] = child
            stack.extend(reversed(children))
        return Described(root, self.placement(root, seen))

    def placement(self, root: Node, seen: dict[int, tuple[int, bytes]]) -> dict[int, tuple[int, bytes]]:
        """Where each node with several names was stored: inodes are written in breadth-first order at
        the names they were placed at, so the name at which the next inode number comes up is that one."""
        from diskci.formats import fstree

        nid_of = {id(node): nid for nid, node in self.nodes.items()}
        ranks = {nid: r for r, nid in enumerate(sorted(self.nodes))}
        counts = fstree.link_counts(root)
        multi = {key for key, n in counts.items() if n > 1}
        if not multi:
            return {}
        primary: dict[int, tuple[int, bytes]] = {}
        expected = 1  # the root is rank 0
        for path, node in fstree.walk(root):
            del path
            if not node.children:
                continue
            for name in sorted(node.children):
                child = node.children[name]
                rank = ranks[nid_of[id(child)]]
                if rank == expected:
                    expected += 1
                    if id(child) in multi and id(child) not in primary:
                        primary[id(child)] = (id(node), name)
        for key in multi:
            primary.setdefault(key, seen[key])
        return primary


def read(data: bytes | mmap.mmap, *, name: str = "image") -> Described:
    """The tree a composefs image holds (see the module docstring)."""
    try:
        return _Reader(_Image(data, name)).read()
    except struct.error as exc:  # a short read the checks above missed is still the image's fault
        raise ImageFormatError(f"{name}: truncated structure ({exc})") from exc


def read_file(path: Path) -> Described:
    """:func:`read` of an image file (mapped, not read into memory)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ImageFormatError(f"{path}: an empty file, not a composefs image")
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
                return read(data, name=str(path))
    except OSError as exc:
        raise ImageFormatError(f"{path}: cannot read the image: {exc.strerror}") from exc
