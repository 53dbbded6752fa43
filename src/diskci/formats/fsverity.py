"""fs-verity file digests (SHA-256, 4096-byte blocks, no salt), as ``fsverity digest`` prints them.

Linux Documentation/filesystems/fsverity.rst: the Merkle tree hashes each data block (the last one
zero-padded), packs the hashes into blocks and hashes again until one block remains; the digest is the
SHA-256 of the 256-byte ``fsverity_descriptor`` holding that root hash and the file size.
Memory is bounded: one pending hash block per tree level.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from diskci.errors import FormatError

BLOCK_SIZE = 4096
DIGEST_SIZE = 32
_ZERO_BLOCK = bytes(BLOCK_SIZE)
_ZERO_BLOCK_HASH = hashlib.sha256(_ZERO_BLOCK).digest()
_READ_SIZE = 1 << 20
_FILE_READ_SIZE = 8 << 20


def _level0(mv: memoryview) -> bytes:
    """The concatenated SHA-256 of each whole block of ``mv``."""
    sha = hashlib.sha256
    return b"".join([sha(mv[off : off + BLOCK_SIZE]).digest() for off in range(0, len(mv), BLOCK_SIZE)])


class FsVerityHasher:
    """Incremental fs-verity digest: ``update()`` with data, then ``digest()``/``hexdigest()``."""

    def __init__(self) -> None:
        self._size = 0
        self._partial = b""
        # levels[i]: hashes (concatenated) of level i waiting to fill one block of level i+1
        self._levels: list[bytearray] = []

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def update(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data).cast("B")
        self._size += len(mv)
        if self._partial:
            need = BLOCK_SIZE - len(self._partial)
            self._partial += bytes(mv[:need])
            mv = mv[need:]
            if len(self._partial) < BLOCK_SIZE:
                return
            self._push(0, hashlib.sha256(self._partial).digest())
            self._partial = b""
        full = len(mv) - len(mv) % BLOCK_SIZE
        if full:
            whole = mv[:full]
            self._push_many(0, _level0(whole))
        if full < len(mv):
            self._partial = bytes(mv[full:])

    def update_zeros(self, count: int) -> None:
        """Feed ``count`` zero bytes quickly (sparse regions)."""
        if count <= 0:
            return
        if self._partial:
            need = min(count, BLOCK_SIZE - len(self._partial))
            self.update(bytes(need))
            count -= need
        blocks = count // BLOCK_SIZE
        while blocks:
            batch = min(blocks, 1 << 16)
            self._size += batch * BLOCK_SIZE
            self._push_many(0, _ZERO_BLOCK_HASH * batch)
            blocks -= batch
        if count % BLOCK_SIZE:
            self.update(bytes(count % BLOCK_SIZE))

    def _push_many(self, level: int, hashes: bytes) -> None:
        """Append concatenated hashes to ``level``; hash every block of them that fills up."""
        while hashes:
            if level == len(self._levels):
                self._levels.append(bytearray())
            buf = self._levels[level]
            buf += hashes
            if len(buf) < BLOCK_SIZE:
                return
            nfull = len(buf) - len(buf) % BLOCK_SIZE
            hashes = _level0(memoryview(bytes(buf[:nfull])))
            del buf[:nfull]
            level += 1

    def _push(self, level: int, h: bytes) -> None:
        _push_into(self._levels, level, h)

    def _root_hash(self) -> bytes:
        if self._size == 0:
            return bytes(DIGEST_SIZE)
        levels = [bytearray(b) for b in self._levels]
        if self._partial:
            h = hashlib.sha256(self._partial.ljust(BLOCK_SIZE, b"\0")).digest()
            _push_into(levels, 0, h)
        # Number of blocks at level 0; the tree has as many levels as needed to reach one hash.
        nblocks = -(-self._size // BLOCK_SIZE)
        if nblocks == 1:
            return bytes(levels[0][:DIGEST_SIZE])
        level = 0
        count = nblocks
        while count > 1:
            buf = levels[level]
            if buf:
                _push_into(levels, level + 1, hashlib.sha256(bytes(buf).ljust(BLOCK_SIZE, b"\0")).digest())
                buf.clear()
            count = -(-count // (BLOCK_SIZE // DIGEST_SIZE))
            level += 1
        return bytes(levels[level][:DIGEST_SIZE])

    def digest(self) -> bytes:
        root = self._root_hash()
        descriptor = struct.pack("<BBBBIQ64s32s144s", 1, 1, 12, 0, 0, self._size, root, b"", b"")
        return hashlib.sha256(descriptor).digest()

    def hexdigest(self) -> str:
        return self.digest().hex()


def _push_into(levels: list[bytearray], level: int, h: bytes) -> None:
    while True:
        if level == len(levels):
            levels.append(bytearray())
        buf = levels[level]
        buf += h
        if len(buf) < BLOCK_SIZE:
            return
        h = hashlib.sha256(buf).digest()
        buf.clear()
        level += 1


def digest_stream(stream: BinaryIO) -> bytes:
    h = FsVerityHasher()
    while chunk := stream.read(_READ_SIZE):
        h.update(chunk)
    return h.digest()


def digest_bytes(data: bytes) -> bytes:
    h = FsVerityHasher()
    h.update(data)
    return h.digest()


def _data_regions(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is_data) covering [0, size): holes found with SEEK_DATA/SEEK_HOLE are not data."""
    pos = 0
    while pos < size:
        try:
            data_start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # no more data: the rest is a hole
            data_start = size
        if data_start > pos:
            yield pos, min(data_start, size), False
            pos = data_start
            continue
        try:
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
        except OSError:
            hole = size
        yield pos, hole, True
        pos = hole


def digest_file(path: str | os.PathLike[str]) -> bytes:
    """The fs-verity digest of a file; holes in sparse files are hashed without being read.

    The file is mapped into memory and hashed from there (no copies); measured here this is a little
    faster than ``fsverity digest``, and faster than hashing on two threads, which fight over the GIL.
    """
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        h = FsVerityHasher()
        try:
            mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
        except (OSError, ValueError):
            mapped = None
        if mapped is not None:
            with mapped, memoryview(mapped) as view:
                for start, end, is_data in _data_regions(fd, size):
                    if not is_data:
                        h.update_zeros(end - start)
                        continue
                    for off in range(start, end, _FILE_READ_SIZE):
                        h.update(view[off : min(off + _FILE_READ_SIZE, end)])
            return h.digest()
        while h.size < size:  # not mappable: read what its size says, like fsverity digest
            chunk = f.read(min(_FILE_READ_SIZE, size - h.size))
            if not chunk:
                raise FormatError(f"{os.fspath(path)}: file shrank while being read")
            h.update(chunk)
        return h.digest()


def format_digest(path: str | os.PathLike[str], digest: bytes) -> str:
    """``sha256:<hex> <path>``, exactly as ``fsverity digest`` prints it."""
    return f"sha256:{digest.hex()} {os.fspath(path)}"


def hexdigest_file(path: Path) -> str:
    return digest_file(path).hex()
