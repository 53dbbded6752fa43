"""An uncompressed EROFS image writer (4 KiB blocks) for a :mod:`diskci.formats.fstree` tree.

On-disk format: Linux fs/erofs/erofs_fs.h (superblock at byte 1024; 32-byte compact and 64-byte extended
inodes in 32-byte slots; xattr body header with name filter; shared xattrs; 12-byte dirents sorted by
name, with names after them). The layout decisions follow libcomposefs' EROFS writer (mkcomposefs 1.0.x)
so a composefs image is byte-identical to mkcomposefs's:

- inodes in breadth-first order, children sorted by name; inode numbers are that order; a hardlinked
  node is stored once (at its first name in that order) and every name's dirent points at it;
- an inode is compact unless its mtime differs from the tree's oldest, or ids/nlink/size do not fit;
- an xattr (name, value) used by more than one inode is shared (sorted descending);
- "tail" data (the last directory block of at most half a block, a symlink target, the end of a file,
  or a chunk index array) is stored inline after the inode, padded so it never crosses a block;
- all full data blocks follow the shared xattrs, inode by inode.

Regular files are written inline/plain (their bytes in blocks plus an inline tail), chunk-based with real
block addresses (``chunk_bits``), or, for metadata-only images (composefs), as chunk-based inodes whose
single chunk is a hole (EROFS_NULL_ADDR): the size is right and the bytes live elsewhere.
"""

from __future__ import annotations

import functools
import os
import stat
import struct
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from diskci.atomic import atomic_path
from diskci.errors import FormatError
from diskci.formats.fstree import DataRef, Node
from diskci.formats.fsverity import FsVerityHasher

BLOCK_SIZE = 4096
BLOCK_BITS = 12
SLOT_SIZE = 32
SUPER_OFFSET = 1024
SUPER_MAGIC = 0xE0F5E1E2
COMPACT_SIZE = 32
EXTENDED_SIZE = 64
XATTR_HEADER_SIZE = 12
DIRENT_SIZE = 12
NULL_ADDR = 0xFFFFFFFF

FEATURE_COMPAT_MTIME = 0x2
FEATURE_COMPAT_XATTR_FILTER = 0x4
FEATURE_INCOMPAT_CHUNKED_FILE = 0x4

LAYOUT_FLAT_PLAIN = 0
LAYOUT_FLAT_INLINE = 2
LAYOUT_CHUNK_BASED = 4
CHUNK_BLKBITS_MASK = 0x1F
MAX_SHARED_PER_INODE = 0x80  # libcomposefs' limit (EROFS_XATTR_LONG_PREFIX)
MAX_CHUNK_INDEX_BYTES = BLOCK_SIZE // 2

_XATTR_PREFIXES = (
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
)
_XATTR_FILTER_SEED = 0x25BBE08F

_FILE_TYPES = {
    stat.S_IFREG: 1,
    stat.S_IFDIR: 2,
    stat.S_IFCHR: 3,
    stat.S_IFBLK: 4,
    stat.S_IFIFO: 5,
    stat.S_IFSOCK: 6,
    stat.S_IFLNK: 7,
}

_SUPER = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQB23x")
_COMPACT = struct.Struct("<HHHHIIIIHHI")
_EXTENDED = struct.Struct("<HHHHQIIIIQII16x")
_XATTR_HEADER = struct.Struct("<IB7x")
_XATTR_ENTRY = struct.Struct("<BBH")
_DIRENT = struct.Struct("<QHBx")


class ErofsError(FormatError):
    """The tree cannot be written as an EROFS image."""


def _round_up(x: int, align: int) -> int:
    return -(-x // align) * align


# --- xxh32 (for the xattr name filter; xxHash by Yann Collet, written from its specification) -------

_P1, _P2, _P3, _P4, _P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
_M32 = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def xxh32(data: bytes, seed: int) -> int:
    n = len(data)
    i = 0
    if n >= 16:
        acc = [(seed + _P1 + _P2) & _M32, (seed + _P2) & _M32, seed & _M32, (seed - _P1) & _M32]
        while i <= n - 16:
            for lane in range(4):
                word = int.from_bytes(data[i : i + 4], "little")
                acc[lane] = (_rotl((acc[lane] + word * _P2) & _M32, 13) * _P1) & _M32
                i += 4
        h = (_rotl(acc[0], 1) + _rotl(acc[1], 7) + _rotl(acc[2], 12) + _rotl(acc[3], 18)) & _M32
    else:
        h = (seed + _P5) & _M32
    h = (h + n) & _M32
    while i + 4 <= n:
        h = (h + int.from_bytes(data[i : i + 4], "little") * _P3) & _M32
        h = (_rotl(h, 17) * _P4) & _M32
        i += 4
    while i < n:
        h = (h + data[i] * _P5) & _M32
        h = (_rotl(h, 11) * _P1) & _M32
        i += 1
    h ^= h >> 15
    h = (h * _P2) & _M32
    h ^= h >> 13
    h = (h * _P3) & _M32
    h ^= h >> 16
    return h


@functools.lru_cache(maxsize=4096)
def _xattr_split(key: bytes) -> tuple[int, bytes]:
    for prefix, index in _XATTR_PREFIXES:
        if key.startswith(prefix):
            return index, key[len(prefix) :]
    return 0, key


@functools.lru_cache(maxsize=4096)
def _filter_bit(key: bytes) -> int:
    index, suffix = _xattr_split(key)
    return 1 << (xxh32(suffix, (_XATTR_FILTER_SEED + index) & _M32) & 31)


def _xattr_entry_size(key: bytes, value: bytes) -> int:
    return _round_up(_XATTR_ENTRY.size + len(_xattr_split(key)[1]) + len(value), 4)


def _xattr_entry(key: bytes, value: bytes) -> bytes:
    index, suffix = _xattr_split(key)
    raw = _XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
    return raw + bytes(-len(raw) % 4)


def _chunk_bits_for(size: int) -> int:
    """The smallest chunk size (at least a block) that covers ``size`` in one chunk (libcomposefs)."""
    bits = max((size - 1).bit_length(), BLOCK_BITS)
    return min(bits, CHUNK_BLKBITS_MASK + BLOCK_BITS)


def _new_encode_dev(rdev: int) -> int:
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & _M32


# --- layout -----------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Inode:
    node: Node
    ino: int
    nlink: int = 1
    entries: list[tuple[bytes, _Inode]] = field(default_factory=list)  # dirents incl. "." and ".."
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)  # offsets into the shared xattr area
    inline: list[tuple[bytes, bytes]] = field(default_factory=list)
    xattr_size: int = 0
    compact: bool = True
    n_blocks: int = 0
    tail: int = 0
    layout: int = LAYOUT_FLAT_PLAIN
    chunk_bits: int = 0
    chunk_count: int = 0
    real_chunks: bool = False
    nid: int = 0
    pad: int = 0
    blkaddr: int = 0

    @property
    def kind(self) -> int:
        return self.node.kind


def _dir_blocks(entries: list[tuple[bytes, _Inode]]) -> list[list[tuple[bytes, _Inode]]]:
    """Dirents split into blocks (the last list is the candidate tail)."""
    blocks: list[list[tuple[bytes, _Inode]]] = [[]]
    used = 0
    for name, child in entries:
        need = DIRENT_SIZE + len(name)
        if used + need > BLOCK_SIZE:
            blocks.append([])
            used = 0
        blocks[-1].append((name, child))
        used += need
    return blocks


def _dirent_bytes(entries: list[tuple[bytes, _Inode]]) -> bytes:
    nameoff = DIRENT_SIZE * len(entries)
    heads, names = [], []
    for name, child in entries:
        heads.append(_DIRENT.pack(child.nid, nameoff, _FILE_TYPES[child.kind]))
        names.append(name)
        nameoff += len(name)
    return b"".join(heads) + b"".join(names)


class _Layout:
    def __init__(
        self,
        root: Node,
        *,
        metadata_only: bool,
        chunk_bits: int | None,
        primary: Mapping[int, tuple[int, bytes]] | None = None,
    ) -> None:
        if not root.is_dir:
            raise ErofsError("the root of an EROFS image must be a directory")
        self.metadata_only = metadata_only
        self.chunk_bits = chunk_bits
        self.primary = primary or {}
        self.inodes: list[_Inode] = []
        self._order(root)
        self._shared_xattrs()
        self._place()

    # 1. breadth-first order, dirents, link counts
    def _order(self, root: Node) -> None:
        by_id: dict[int, _Inode] = {}
        top = _Inode(root, 0)
        by_id[id(root)] = top
        self.inodes.append(top)
        queue: deque[tuple[_Inode, _Inode]] = deque([(top, top)])
        while queue:
            ino, parent = queue.popleft()
            children = ino.node.children
            if children is None:
                continue
            entries: list[tuple[bytes, _Inode]] = [(b".", ino), (b"..", parent)]
            subdirs = 0
            for name in sorted(children):
                child = children[name]
                seen = by_id.get(id(child))
                here = self.primary.get(id(child), (id(ino.node), name)) == (id(ino.node), name)
                if seen is not None:
                    if child.is_dir:
                        raise ErofsError(f"directory {name!r} appears twice (directory hardlink)")
                    seen.nlink += 1
                    entries.append((name, seen))
                    if seen.ino < 0 and here:  # a hardlink stored at a later name
                        seen.ino = len(self.inodes)
                        self.inodes.append(seen)
                    continue
                if child.children is not None and not child.is_dir:
                    raise ErofsError(f"{name!r}: only directories can have children")
                if child.kind not in _FILE_TYPES:
                    raise ErofsError(f"{name!r}: unsupported file type {oct(child.kind)}")
                new = _Inode(child, len(self.inodes) if here else -1)
                by_id[id(child)] = new
                if here:
                    self.inodes.append(new)
                entries.append((name, new))
                if child.is_dir:
                    subdirs += 1
                    queue.append((new, ino))
            entries.sort(key=lambda e: e[0])
            ino.entries = entries
            ino.nlink = 2 + subdirs
        if any(i.ino < 0 for i in by_id.values()):
            raise ErofsError("a hardlink is placed at a name the tree does not have")
        for ino in self.inodes:
            if ino.node.nlink is not None and not ino.node.is_dir:
                ino.nlink = ino.node.nlink
        oldest = min((i.node.mtime, i.node.mtime_nsec) for i in self.inodes)
        self.build_time = oldest
        for ino in self.inodes:
            ino.xattrs = sorted(ino.node.xattrs.items())
            for key, value in ino.xattrs:
                if len(value) > 0xFFFF or len(_xattr_split(key)[1]) > 255 or not key:
                    raise ErofsError(f"xattr {key!r}: name or value too long")

    # 2. xattrs used by more than one inode are stored once, in the shared area
    def _shared_xattrs(self) -> None:
        counts: dict[tuple[bytes, bytes], int] = {}
        for ino in self.inodes:
            for kv in ino.xattrs:
                counts[kv] = counts.get(kv, 0) + 1
        shared = sorted((kv for kv, n in counts.items() if n > 1), key=lambda kv: (kv[0], len(kv[1]), kv[1]))
        shared.reverse()
        offsets: dict[tuple[bytes, bytes], int] = {}
        area = bytearray()
        for kv in shared:
            offsets[kv] = len(area)
            area += _xattr_entry(*kv)
        self.shared_area = bytes(area)
        for ino in self.inodes:
            for kv in ino.xattrs:
                off = offsets.get(kv)
                if off is not None and len(ino.shared) < MAX_SHARED_PER_INODE:
                    ino.shared.append(off)
                else:
                    ino.inline.append(kv)
            if ino.xattrs:
                body = sum(_xattr_entry_size(k, v) for k, v in ino.inline)
                ino.xattr_size = _round_up(XATTR_HEADER_SIZE + 4 * len(ino.shared) + body, 4)

    # 3. sizes, inline tails, padding and nids
    def _data_layout(self, ino: _Inode) -> None:
        node = ino.node
        kind = node.kind
        if kind == stat.S_IFDIR:
            blocks = _dir_blocks(ino.entries)
            last = sum(DIRENT_SIZE + len(n) for n, _ in blocks[-1])
            ino.n_blocks, ino.tail = len(blocks) - 1, last
            if last > BLOCK_SIZE // 2:
                ino.n_blocks, ino.tail = ino.n_blocks + 1, 0
        elif kind == stat.S_IFLNK:
            if not node.target:
                raise ErofsError("a symlink needs a target")
            ino.tail = len(node.target)
        elif kind == stat.S_IFREG and node.size > 0:
            has_data = node.data is not None or (node.source is not None and not self.metadata_only)
            if not has_data:
                ino.layout = LAYOUT_CHUNK_BASED
                ino.chunk_bits = _chunk_bits_for(node.size)
                ino.chunk_count = -(-node.size // (1 << ino.chunk_bits))
                ino.tail = 4 * ino.chunk_count
            elif self.chunk_bits is not None and node.size > BLOCK_SIZE:
                bits = max(self.chunk_bits, BLOCK_BITS)
                while -(-node.size // (1 << bits)) * 4 > MAX_CHUNK_INDEX_BYTES:
                    bits += 1
                ino.layout, ino.real_chunks, ino.chunk_bits = LAYOUT_CHUNK_BASED, True, bits
                ino.chunk_count = -(-node.size // (1 << bits))
                ino.n_blocks = -(-node.size // BLOCK_SIZE)
                ino.tail = 4 * ino.chunk_count
            else:
                ino.n_blocks, ino.tail = divmod(node.size, BLOCK_SIZE)
                if ino.tail > BLOCK_SIZE // 2:
                    ino.n_blocks, ino.tail = ino.n_blocks + 1, 0

    def _tail_padding(self, ino: _Inode, pos: int, inode_size: int) -> int:
        if ino.kind == stat.S_IFLNK:
            total = inode_size + ino.xattr_size + ino.tail
            crosses = pos // BLOCK_SIZE != (pos + total - 1) // BLOCK_SIZE
            if total >= BLOCK_SIZE:  # the target goes to a block of its own
                ino.n_blocks, ino.tail = 1, 0
            return _round_up(pos, BLOCK_SIZE) - pos if crosses else 0
        head = inode_size + ino.xattr_size
        room = BLOCK_SIZE - (pos + head) % BLOCK_SIZE
        if room >= ino.tail:
            return 0
        extra = _round_up(room, SLOT_SIZE)
        if ino.tail <= BLOCK_SIZE - (pos + head + extra) % BLOCK_SIZE:
            return extra
        if ino.real_chunks:
            raise ErofsError("chunk index does not fit beside its inode")
        # (a hole's chunk index that does not fit goes to a block of its own, all EROFS_NULL_ADDR)
        ino.n_blocks, ino.tail = ino.n_blocks + 1, 0
        return _round_up(pos, BLOCK_SIZE) - pos

    def _fits_compact(self, ino: _Inode) -> bool:
        node = ino.node
        if (node.mtime, node.mtime_nsec) != self.build_time:
            return False
        if ino.nlink > 0xFFFF or node.uid > 0xFFFF or node.gid > 0xFFFF:
            return False
        size = ino.n_blocks * BLOCK_SIZE + ino.tail if node.is_dir else node.size
        return size <= _M32

    def _place(self) -> None:
        pos = SUPER_OFFSET + _SUPER.size
        self.data_blocks = 0
        for ino in self.inodes:
            self._data_layout(ino)
            ino.compact = self._fits_compact(ino)
            inode_size = COMPACT_SIZE if ino.compact else EXTENDED_SIZE
            start = _round_up(pos, SLOT_SIZE)
            extra = self._tail_padding(ino, start, inode_size)
            ino.pad = start - pos + extra
            pos = start + extra
            ino.nid = pos // SLOT_SIZE
            if ino.layout != LAYOUT_CHUNK_BASED and ino.tail:
                ino.layout = LAYOUT_FLAT_INLINE
            self.data_blocks += ino.n_blocks
            pos += inode_size + ino.xattr_size + ino.tail
        self.inodes_end = _round_up(pos, SLOT_SIZE)
        if self.inodes[0].nid > 0xFFFF:
            raise ErofsError("root inode beyond the reach of the superblock")
        self.data_start = _round_up(self.inodes_end + len(self.shared_area), BLOCK_SIZE)
        self.total_blocks = self.data_start // BLOCK_SIZE + self.data_blocks
        if self.total_blocks > _M32:
            raise ErofsError("image larger than 16 TiB")


# --- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What was written: total size, inode count, blocks and the fs-verity digest of the image."""

    size: int
    inodes: int
    blocks: int
    digest: bytes


class _Sink:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hasher = FsVerityHasher()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.write(data)
        self.hasher.update(data)
        self.written += len(data)


def _inode_bytes(lay: _Layout, ino: _Inode, data_end: list[int]) -> bytes:
    node = ino.node
    kind = node.kind
    if kind == stat.S_IFDIR:
        size = ino.n_blocks * BLOCK_SIZE + ino.tail
    elif kind == stat.S_IFREG:
        size = node.size
    elif kind == stat.S_IFLNK:
        size = ino.tail if ino.n_blocks == 0 else len(node.target or b"")
    else:
        size = 0
    i_u = 0
    if ino.n_blocks:
        ino.blkaddr = data_end[0] // BLOCK_SIZE
        data_end[0] += ino.n_blocks * BLOCK_SIZE
        i_u = ino.blkaddr
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        i_u = _new_encode_dev(node.rdev)
    elif ino.layout == LAYOUT_CHUNK_BASED:  # over the low half of a block address (libcomposefs)
        i_u = (i_u & 0xFFFF0000) | (ino.chunk_bits - BLOCK_BITS)
    fmt = ino.layout << 1 | (0 if ino.compact else 1)
    icount = (ino.xattr_size - XATTR_HEADER_SIZE) // 4 + 1 if ino.xattr_size else 0
    mode = node.mode & 0xFFFF
    if ino.compact:
        head = _COMPACT.pack(fmt, icount, mode, ino.nlink, size, 0, i_u, ino.ino, node.uid, node.gid, 0)
    else:
        head = _EXTENDED.pack(
            fmt, icount, mode, 0, size, i_u, ino.ino, node.uid, node.gid, node.mtime & ((1 << 64) - 1),
            node.mtime_nsec, ino.nlink,
        )  # fmt: skip
    parts = [bytes(ino.pad), head]
    if ino.xattr_size:
        filt = 0
        for key, _ in ino.xattrs:
            filt |= _filter_bit(key)
        xh = bytearray(_XATTR_HEADER.pack(_M32 & ~filt, len(ino.shared)))
        base = lay.inodes_end % BLOCK_SIZE
        for off in ino.shared:
            xh += struct.pack("<I", (base + off) // 4)
        for kv in ino.inline:
            xh += _xattr_entry(*kv)
        xh += bytes(-len(xh) % 4)
        parts.append(bytes(xh))
    if ino.tail:
        if kind == stat.S_IFDIR:
            parts.append(_dirent_bytes(_dir_blocks(ino.entries)[-1]))
        elif kind == stat.S_IFLNK:
            parts.append(node.target or b"")
        elif ino.layout == LAYOUT_CHUNK_BASED and not ino.real_chunks:
            parts.append(struct.pack("<I", NULL_ADDR) * ino.chunk_count)
        elif ino.real_chunks:
            per_chunk = 1 << (ino.chunk_bits - BLOCK_BITS)
            parts.append(
                b"".join(struct.pack("<I", ino.blkaddr + i * per_chunk) for i in range(ino.chunk_count))
            )
        else:
            parts.append(_read_tail(node, ino.tail))
    return b"".join(parts)


def _read_tail(node: Node, length: int) -> bytes:
    if node.data is not None:
        data = node.data[node.size - length :]
    elif node.source is not None:
        src = node.source
        data = (
            DataRef(src.path, src.offset + src.size - length, length).read() if src.size == node.size else b""
        )
    else:
        data = b""
    if len(data) != length or (node.data is not None and len(node.data) != node.size):
        raise ErofsError(f"file contents do not match the size {node.size}")
    return data


def _data_blocks(ino: _Inode) -> Iterator[bytes]:
    node = ino.node
    if not ino.n_blocks:
        return
    if node.is_dir:
        blocks = _dir_blocks(ino.entries)
        for entries in blocks[: ino.n_blocks]:
            raw = _dirent_bytes(entries)
            yield raw + bytes(BLOCK_SIZE - len(raw))
        return
    if node.kind == stat.S_IFLNK:
        target = node.target or b""
        yield target + bytes(BLOCK_SIZE - len(target))
        return
    if ino.layout == LAYOUT_CHUNK_BASED and not ino.real_chunks:
        yield struct.pack("<I", NULL_ADDR) * (BLOCK_SIZE // 4)
        return
    want = ino.n_blocks * BLOCK_SIZE if ino.real_chunks else node.size - ino.tail
    got = 0
    for chunk in node.chunks():
        take = chunk[: max(0, want - got)]
        got += len(take)
        if take:
            yield take
        if got >= want:
            break
    if got < min(want, node.size):
        raise ErofsError(f"file contents end after {got} bytes, its size says {node.size}")
    yield bytes(ino.n_blocks * BLOCK_SIZE - got)


def write_image(
    root: Node,
    out: BinaryIO,
    *,
    header: bytes = b"",
    metadata_only: bool = False,
    chunk_bits: int | None = None,
    primary: Mapping[int, tuple[int, bytes]] | None = None,
) -> ImageInfo:
    """Write the EROFS image of ``root`` to ``out``; return its size, inode count and fs-verity digest.

    ``header``: up to 1024 bytes placed at offset 0 (composefs puts its header there).
    ``metadata_only``: regular files without in-memory ``data`` become holes of the right size.
    ``chunk_bits``: store files larger than a block chunk-based (chunks of ``2**chunk_bits`` bytes).
    ``primary``: where a node with several names is stored, ``id(node)`` → (``id`` of a directory node, name)
    (default: its first name in breadth-first order). A node's ``nlink``, when set, is the link count stored.
    """
    if len(header) > SUPER_OFFSET:
        raise ErofsError("header larger than 1024 bytes")
    lay = _Layout(root, metadata_only=metadata_only, chunk_bits=chunk_bits, primary=primary)
    sink = _Sink(out)
    incompat = FEATURE_INCOMPAT_CHUNKED_FILE if any(i.real_chunks for i in lay.inodes) else 0
    sb = _SUPER.pack(
        SUPER_MAGIC, 0, FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER, BLOCK_BITS, 0,
        lay.inodes[0].nid, len(lay.inodes), lay.build_time[0] & ((1 << 64) - 1), lay.build_time[1],
        lay.total_blocks, 0, lay.inodes_end // BLOCK_SIZE, bytes(16), bytes(16), incompat,
        0, 0, 0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    meta = bytearray(header)
    meta += bytes(SUPER_OFFSET - len(meta))
    meta += sb
    data_end = [lay.data_start]
    for ino in lay.inodes:
        meta += _inode_bytes(lay, ino, data_end)
        if len(meta) >= 1 << 22:
            sink.write(meta)
            meta = bytearray()
    pos = sink.written + len(meta)
    meta += bytes(lay.inodes_end - pos)
    meta += lay.shared_area
    meta += bytes(lay.data_start - lay.inodes_end - len(lay.shared_area))
    sink.write(meta)
    for ino in lay.inodes:
        for block in _data_blocks(ino):
            sink.write(block)
    expected = lay.total_blocks * BLOCK_SIZE
    if sink.written != expected:
        raise ErofsError(f"internal layout error: wrote {sink.written} bytes, planned {expected}")
    return ImageInfo(
        size=sink.written, inodes=len(lay.inodes), blocks=lay.total_blocks, digest=sink.hasher.digest()
    )


def build_image(
    root: Node,
    dest: Path,
    *,
    header: bytes = b"",
    metadata_only: bool = False,
    chunk_bits: int | None = None,
) -> ImageInfo:
    """Write the image of ``root`` to ``dest`` atomically (options as for :func:`write_image`)."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        info = write_image(root, f, header=header, metadata_only=metadata_only, chunk_bits=chunk_bits)
    return info
