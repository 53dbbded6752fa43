"""Deterministic "newc" cpio archives (the format the Linux kernel unpacks as an initramfs).

Format (Linux Documentation/driver-api/early-userspace/buffer-format.rst, cpio(5) "New ASCII"): each
entry is the magic ``070701``, thirteen 8-digit hexadecimal fields (ino, mode, uid, gid, nlink, mtime,
filesize, devmajor, devminor, rdevmajor, rdevminor, namesize including the NUL, check = 0), the name and
its NUL padded to a multiple of four bytes, then the data padded to a multiple of four bytes. The
archive ends with an entry named ``TRAILER!!!``.

Determinism: entries are written sorted by path components (so every directory precedes its
contents), every entry is owned by 0:0, carries the same mtime (SOURCE_DATE_EPOCH), and inode numbers
are assigned 1, 2, 3, ... in write order. The same set of entries always gives the same bytes,
whatever order they were added in.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from diskci.errors import FormatError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_MAX_FIELD = 0xFFFFFFFF


@dataclass(frozen=True)
class Entry:
    """One archive member: ``mode`` holds the file type bits and the permissions."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @property
    def kind(self) -> str:
        return {
            stat.S_IFDIR: "directory",
            stat.S_IFREG: "file",
            stat.S_IFLNK: "symlink",
            stat.S_IFCHR: "character device",
            stat.S_IFBLK: "block device",
        }[stat.S_IFMT(self.mode)]


def _normalize(path: str) -> str:
    """``/bin/sh`` and ``./bin/sh`` become ``bin/sh``; empty parts, ``.`` and ``..`` are refused."""
    parts = path.strip().lstrip("/").split("/")
    if parts and parts[0] == ".":
        parts = parts[1:]
    if not parts or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise FormatError(f"cpio: invalid member path {path!r}")
    return "/".join(parts)


def _sort_key(path: str) -> list[str]:
    return path.split("/")


class CpioArchive:
    """A set of entries, written as a deterministic newc archive by ``write()`` or ``to_bytes()``.

    Parent directories are created (mode 0755) when a member is added below them; adding a path twice
    is an error, except for a directory that was only created implicitly.
    """

    def __init__(self, *, mtime: int) -> None:
        if not 0 <= mtime <= _MAX_FIELD:
            raise FormatError(f"cpio: mtime {mtime} does not fit the newc header")
        self.mtime = mtime
        self._entries: dict[str, Entry] = {}
        self._implicit: set[str] = set()

    # --- building -------------------------------------------------------------------------------
    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._add(Entry(_normalize(path), stat.S_IFDIR | (mode & 0o7777)))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(Entry(_normalize(path), stat.S_IFREG | (mode & 0o7777), data))

    def add_symlink(self, path: str, target: str) -> None:
        if not target or "\0" in target:
            raise FormatError(f"cpio: invalid symlink target {target!r} for {path!r}")
        self._add(Entry(_normalize(path), stat.S_IFLNK | 0o777, target.encode()))

    def add_device(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        types = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}
        if kind not in types:
            raise FormatError(f"cpio: device kind must be 'c' or 'b', not {kind!r}")
        self._add(Entry(_normalize(path), types[kind] | (mode & 0o7777), b"", (major, minor)))

    def __contains__(self, path: str) -> bool:
        return _normalize(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """The entries in archive order."""
        return [self._entries[p] for p in sorted(self._entries, key=_sort_key)]

    def _add(self, entry: Entry) -> None:
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            existing = self._entries.get(parent)
            if existing is None:
                self._entries[parent] = Entry(parent, stat.S_IFDIR | 0o755)
                self._implicit.add(parent)
            elif not stat.S_ISDIR(existing.mode):
                raise FormatError(f"cpio: {entry.path!r} is below {parent!r}, which is a {existing.kind}")
        old = self._entries.get(entry.path)
        if old is not None:
            if entry.path in self._implicit and stat.S_ISDIR(entry.mode):
                self._implicit.discard(entry.path)
            else:
                raise FormatError(f"cpio: {entry.path!r} added twice (already a {old.kind})")
        if len(entry.data) > _MAX_FIELD:
            raise FormatError(f"cpio: {entry.path!r} is larger than 4 GiB, which newc cannot hold")
        self._entries[entry.path] = entry

    # --- writing --------------------------------------------------------------------------------
    def chunks(self) -> Iterator[bytes]:
        """The archive, piece by piece."""
        for ino, entry in enumerate(self.entries(), start=1):
            nlink = 2 if stat.S_ISDIR(entry.mode) else 1
            yield _header(entry.path, ino, entry.mode, nlink, self.mtime, len(entry.data), entry.rdev)
            if entry.data:
                yield entry.data + _pad(len(entry.data))
        yield _header(TRAILER, 0, 0, 1, 0, 0, (0, 0))

    def write(self, out: BinaryIO) -> int:
        """Write the archive to ``out``; returns the number of bytes written."""
        total = 0
        for chunk in self.chunks():
            out.write(chunk)
            total += len(chunk)
        return total

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(
    name: str, ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int]
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
    head = MAGIC + b"".join(b"%08X" % f for f in fields) + encoded
    return head + _pad(len(head))
