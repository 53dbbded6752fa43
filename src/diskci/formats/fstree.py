"""An in-memory file tree (what the EROFS and composefs writers consume) and its two readers.

A tree is made of :class:`Node` objects; a directory maps child names (bytes) to nodes, and a hardlink is
the *same* node object under two names, so it is one inode wherever the tree is written. Names, symlink
targets, xattr names and values are bytes, exactly as the kernel sees them.

Readers:
- :func:`from_directory` walks a directory (lstat, xattrs, hardlinks by device and inode number).
- :func:`from_tar` reads an uncompressed tarball directly with :mod:`tarfile`, without extracting it:
  ownership, device numbers, hardlinks, nanosecond PAX mtimes and PAX xattrs (``SCHILY.xattr.*``,
  ``LIBARCHIVE.xattr.*``) come from the headers, and file contents stay in the tarball (a
  :class:`DataRef` of offset and size), so no privileges are needed. Bad input (absolute or ``..`` paths,
  names over 255 bytes, unsupported entry types, duplicates, a tarball that ends early) raises
  :class:`TreeFormatError` naming the entry.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tarfile
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from diskci.errors import FormatError

NAME_MAX = 255
_READ_CHUNK = 1 << 20


class TreeFormatError(FormatError):
    """The source of a tree (a tarball or a directory) cannot be represented."""


@dataclass(frozen=True)
class DataRef:
    """Where a regular file's bytes live: ``size`` bytes at ``offset`` of the file at ``path``;
    ``shared`` when that file holds many files' bytes (a tarball), so readers map it once."""

    path: str
    offset: int
    size: int
    shared: bool = False

    def chunks(self, chunk_size: int = _READ_CHUNK) -> Iterator[bytes]:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pos, end = self.offset, self.offset + self.size
            while pos < end:
                data = os.pread(fd, min(chunk_size, end - pos), pos)
                if not data:
                    raise TreeFormatError(f"{self.path}: ends before byte {end} (file changed or truncated)")
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    def read(self) -> bytes:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, self.size, self.offset)
        finally:
            os.close(fd)
        if len(data) != self.size:  # a short read: fall back to reading piecewise
            data = b"".join(self.chunks())
        return data


@dataclass(eq=False)
class Node:
    """One inode. ``mode`` holds the file type bits and the permission bits, like ``st_mode``."""

    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    rdev: int = 0
    size: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    target: bytes | None = None  # symlink target
    data: bytes | None = None  # contents held in memory
    source: DataRef | None = None  # contents held elsewhere
    children: dict[bytes, Node] | None = None  # directories only
    nlink: int | None = None  # a recorded link count (a dump's or an image's); None: count the names

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def is_reg(self) -> bool:
        return self.kind == stat.S_IFREG

    def read(self) -> bytes:
        """The contents of a regular file (empty when it has none)."""
        if self.data is not None:
            return self.data
        if self.source is not None:
            return self.source.read()
        return b""

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            if self.data:
                yield self.data
        elif self.source is not None:
            yield from self.source.chunks()

    @classmethod
    def directory(cls, mode: int = 0o755, **kw: object) -> Node:
        return cls(mode=stat.S_IFDIR | mode, children={}, **kw)  # type: ignore[arg-type]

    @classmethod
    def file(cls, data: bytes, mode: int = 0o644, **kw: object) -> Node:
        return cls(mode=stat.S_IFREG | mode, size=len(data), data=data, **kw)  # type: ignore[arg-type]

    @classmethod
    def symlink(cls, target: bytes, **kw: object) -> Node:
        return cls(mode=stat.S_IFLNK | 0o777, size=len(target), target=target, **kw)  # type: ignore[arg-type]

    def add(self, name: bytes, child: Node) -> Node:
        check_name(name, name)
        assert self.children is not None, "only directories have children"
        if name in self.children:
            raise TreeFormatError(f"{name.decode(errors='replace')}: duplicate entry")
        self.children[name] = child
        return child


def check_name(name: bytes, where: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise TreeFormatError(f"{_show(where)}: invalid file name {name!r}")
    if len(name) > NAME_MAX:
        raise TreeFormatError(f"{_show(where)}: file name longer than {NAME_MAX} bytes ({len(name)})")


def _show(path: bytes) -> str:
    return os.fsdecode(path) if path else "."


def walk(root: Node) -> Iterator[tuple[bytes, Node]]:
    """Every (path, node) in breadth-first order, children sorted by name; hardlinks appear per name."""
    queue: deque[tuple[bytes, Node]] = deque([(b"", root)])
    while queue:
        path, node = queue.popleft()
        yield path, node
        if node.children:
            for name in sorted(node.children):
                queue.append((path + b"/" + name if path else name, node.children[name]))


def link_counts(root: Node) -> dict[int, int]:
    """Number of names of each non-directory node (by ``id``)."""
    counts: dict[int, int] = {}
    for _, node in walk(root):
        if not node.is_dir:
            counts[id(node)] = counts.get(id(node), 0) + 1
    return counts


def describe(root: Node, *, contents: bool = True, nlink: bool = True) -> dict[bytes, dict[str, object]]:
    """A comparable description of every path: type, mode, owner, size, mtime, target, rdev, xattrs and
    (``contents``) the sha256 of each regular file. Two trees are equal when their descriptions are."""
    counts = link_counts(root) if nlink else {}
    out: dict[bytes, dict[str, object]] = {}
    for path, node in walk(root):
        entry: dict[str, object] = {
            "mode": oct(node.mode),
            "uid": node.uid,
            "gid": node.gid,
            "mtime": (node.mtime, node.mtime_nsec),
            "xattrs": dict(sorted(node.xattrs.items())),
        }
        if node.is_reg:
            entry["size"] = node.size
            if contents:
                h = hashlib.sha256()
                for chunk in node.chunks():
                    h.update(chunk)
                entry["sha256"] = h.hexdigest()
            if nlink:
                entry["nlink"] = counts[id(node)]
        elif node.kind == stat.S_IFLNK:
            entry["target"] = node.target
        elif node.kind in (stat.S_IFCHR, stat.S_IFBLK):
            entry["rdev"] = (os.major(node.rdev), os.minor(node.rdev))
        out[path] = entry
    return out


# --- reading a directory --------------------------------------------------------------------------


def _read_xattrs(path: str) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (95, 61):  # EOPNOTSUPP, ENODATA
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for name in names:
        try:
            out[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:  # user.* on a symlink or device is listed but unreadable
            if exc.errno != 61:
                raise
    return out


def _node_from_stat(path: str, st: os.stat_result) -> Node:
    sec, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    node = Node(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime=sec, mtime_nsec=nsec)
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFREG:
        node.size = st.st_size
        node.source = DataRef(path, 0, st.st_size) if st.st_size else None
    elif kind == stat.S_IFLNK:
        node.target = os.fsencode(os.readlink(path))
        node.size = len(node.target)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        node.rdev = st.st_rdev
    elif kind == stat.S_IFDIR:
        node.children = {}
    elif kind not in (stat.S_IFIFO, stat.S_IFSOCK):
        raise TreeFormatError(f"{path}: unsupported file type {oct(kind)}")
    node.xattrs = _read_xattrs(path)
    return node


def from_directory(
    root: str | os.PathLike[str], *, hardlinks: bool = True, on_file: Callable[[Node], None] | None = None
) -> Node:
    """The tree under ``root`` (not following symlinks); files with several names become one node.

    ``hardlinks=False`` reads every name as its own inode, as mkcomposefs does with a directory.
    ``on_file`` is called with each new regular file node as soon as it is read.
    """
    top = os.fspath(root)
    st = os.lstat(top)
    if not stat.S_ISDIR(st.st_mode):
        raise TreeFormatError(f"{top}: not a directory")
    tree = _node_from_stat(top, st)
    inodes: dict[tuple[int, int], Node] = {}
    stack: list[tuple[str, Node]] = [(top, tree)]
    while stack:
        dirpath, dirnode = stack.pop()
        assert dirnode.children is not None
        with os.scandir(dirpath) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            name = os.fsencode(entry.name)
            check_name(name, os.fsencode(entry.path))
            est = entry.stat(follow_symlinks=False)
            if hardlinks and not stat.S_ISDIR(est.st_mode) and est.st_nlink > 1:
                key = (est.st_dev, est.st_ino)
                if key in inodes:
                    dirnode.children[name] = inodes[key]
                    continue
                node = inodes[key] = _node_from_stat(entry.path, est)
            else:
                node = _node_from_stat(entry.path, est)
            dirnode.children[name] = node
            if node.is_dir:
                stack.append((entry.path, node))
            elif on_file is not None and node.is_reg:
                on_file(node)
    return tree


# --- reading a tarball ----------------------------------------------------------------------------

_TAR_KINDS = {
    tarfile.REGTYPE: stat.S_IFREG,
    tarfile.AREGTYPE: stat.S_IFREG,
    tarfile.CONTTYPE: stat.S_IFREG,
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


def _tar_path(name: str, what: str, entry: str) -> tuple[bytes, ...]:
    raw = os.fsencode(name)
    if raw.startswith(b"/"):
        raise TreeFormatError(f"tar entry {entry!r}: absolute {what} {name!r}")
    parts = tuple(p for p in raw.split(b"/") if p not in (b"", b"."))
    for p in parts:
        if p == b"..":
            raise TreeFormatError(f"tar entry {entry!r}: {what} {name!r} contains '..'")
        if len(p) > NAME_MAX:
            raise TreeFormatError(f"tar entry {entry!r}: name longer than {NAME_MAX} bytes ({len(p)})")
    return parts


def _pax_mtime(member: tarfile.TarInfo) -> tuple[int, int]:
    text = member.pax_headers.get("mtime")
    if text is None:
        return int(member.mtime), 0
    neg = text.startswith("-")
    whole, _, frac = text.lstrip("+-").partition(".")
    try:
        sec = int(whole or "0")
        nsec = int((frac + "000000000")[:9]) if frac else 0
    except ValueError:
        raise TreeFormatError(f"tar entry {member.name!r}: bad PAX mtime {text!r}") from None
    if neg:
        sec, nsec = (-sec - 1, 1_000_000_000 - nsec) if nsec else (-sec, 0)
    return sec, nsec


def _pax_xattrs(member: tarfile.TarInfo) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(key[len("LIBARCHIVE.xattr.") :])
            try:
                out.setdefault(name, base64.b64decode(value + "=" * (-len(value) % 4)))
            except ValueError:  # binascii.Error, or not ASCII
                raise TreeFormatError(f"tar entry {member.name!r}: bad base64 in PAX {key!r}") from None
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :].encode("utf-8", "surrogateescape")
            out[name] = value.encode("utf-8", "surrogateescape")
    return out


class _TarBuilder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.root = Node.directory(0o755)
        self.explicit: set[tuple[bytes, ...]] = set()

    def lookup(self, parts: tuple[bytes, ...], entry: str) -> Node | None:
        node = self.root
        for p in parts:
            if node.children is None:
                raise TreeFormatError(f"tar entry {entry!r}: a parent is not a directory")
            child = node.children.get(p)
            if child is None:
                return None
            node = child
        return node

    def parent(self, parts: tuple[bytes, ...], entry: str) -> Node:
        node = self.root
        for p in parts[:-1]:
            assert node.children is not None
            child = node.children.get(p)
            if child is None:
                child = node.children[p] = Node.directory(0o755)
            elif child.children is None:
                raise TreeFormatError(f"tar entry {entry!r}: parent {os.fsdecode(p)!r} is not a directory")
            node = child
        return node

    def add(self, m: tarfile.TarInfo, file_size: int) -> Node | None:
        """Add one entry; returns the new node (None for a hardlink)."""
        parts = _tar_path(m.name, "path", m.name)
        if parts in self.explicit:
            raise TreeFormatError(f"tar entry {m.name!r}: duplicate entry")
        if m.type == tarfile.LNKTYPE:
            target_parts = _tar_path(m.linkname, "hardlink target", m.name)
            target = self.lookup(target_parts, m.name)
            if target is None or target_parts not in self.explicit:
                raise TreeFormatError(
                    f"tar entry {m.name!r}: hardlink target {m.linkname!r} not found before it"
                )
            if target.is_dir or not parts:
                raise TreeFormatError(f"tar entry {m.name!r}: hardlink to a directory")
            self.explicit.add(parts)
            self.parent(parts, m.name).children[parts[-1]] = target  # type: ignore[index]
            return None
        kind = _TAR_KINDS.get(m.type)
        if kind is None or m.sparse is not None:
            raise TreeFormatError(f"tar entry {m.name!r}: unsupported entry type {m.type!r}")
        sec, nsec = _pax_mtime(m)
        node = Node(
            mode=kind | (m.mode & 0o7777),
            uid=m.uid,
            gid=m.gid,
            mtime=sec,
            mtime_nsec=nsec,
            xattrs=_pax_xattrs(m),
        )
        if kind == stat.S_IFREG:
            node.size = m.size
            if m.offset_data + m.size > file_size:
                raise TreeFormatError(f"tar entry {m.name!r}: the tarball ends inside its data (truncated)")
            node.source = DataRef(self.path, m.offset_data, m.size, shared=True) if m.size else None
        elif kind == stat.S_IFLNK:
            if not m.linkname:
                raise TreeFormatError(f"tar entry {m.name!r}: empty symlink target")
            node.target = os.fsencode(m.linkname)
            node.size = len(node.target)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            try:
                node.rdev = os.makedev(m.devmajor, m.devminor)
            except (OverflowError, ValueError):
                raise TreeFormatError(
                    f"tar entry {m.name!r}: device number {m.devmajor}:{m.devminor} out of range"
                ) from None
        elif kind == stat.S_IFDIR:
            node.children = {}
        self.explicit.add(parts)
        if not parts:
            if kind != stat.S_IFDIR:
                raise TreeFormatError(f"tar entry {m.name!r}: the root is not a directory")
            node.children = self.root.children
            self.root = node
            return node
        parent = self.parent(parts, m.name)
        assert parent.children is not None
        existing = parent.children.get(parts[-1])
        if existing is not None:  # a directory created implicitly for an earlier child
            if not (existing.is_dir and kind == stat.S_IFDIR):
                raise TreeFormatError(f"tar entry {m.name!r}: duplicate entry")
            node.children = existing.children
        parent.children[parts[-1]] = node
        return node


def from_tar(path: str | os.PathLike[str], *, on_file: Callable[[Node], None] | None = None) -> Node:
    """The tree an uncompressed tarball describes, read from its headers (contents stay in the file).

    ``on_file`` is called with each new regular file node as soon as its header is read.
    """
    tar_path = os.path.abspath(os.fspath(path))
    file_size = os.stat(tar_path).st_size
    builder = _TarBuilder(tar_path)
    last = "(start of archive)"
    try:
        with tarfile.open(tar_path, mode="r:") as tf:
            while True:
                member = tf.next()
                if member is None:
                    break
                node = builder.add(member, file_size)
                if on_file is not None and node is not None and node.is_reg:
                    on_file(node)
                last = member.name
            end = tf.offset
    except tarfile.ReadError as exc:
        raise TreeFormatError(
            f"{tar_path}: not a readable uncompressed tarball after {last!r}: {exc}"
        ) from exc
    except (tarfile.TarError, EOFError) as exc:
        raise TreeFormatError(f"{tar_path}: broken tarball after entry {last!r}: {exc}") from exc
    if file_size < end + tarfile.BLOCKSIZE:
        raise TreeFormatError(f"{tar_path}: the tarball ends early (no end-of-archive marker) after {last!r}")
    return builder.root
