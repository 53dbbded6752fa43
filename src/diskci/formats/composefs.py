"""The composefs image (metadata-only EROFS) and its object store, as mkcomposefs 1.0.x makes them.

What mkcomposefs does to a tree before writing it (containers/composefs, libcomposefs/lcfs-writer-erofs.c):
1. every existing ``trusted.overlay.*`` xattr is escaped to ``trusted.overlay.overlay.*``;
2. a regular file of at most 64 bytes is stored inline; a larger one becomes a hole of the right size with
   ``trusted.overlay.metacopy`` (header {0, 36, 0, 1} + its fs-verity digest) and
   ``trusted.overlay.redirect`` = ``/XX/<rest of the digest>``, its bytes going to the object store;
3. an overlay whiteout (char device 0/0) becomes an empty regular file with the escaped whiteout xattrs,
   and its directory is marked (format version 1 also marks it opaque "x");
4. the root gets ``trusted.overlay.opaque=y`` and whiteouts ``00``..``ff`` (so the image works as an
   overlay lower layer over the object store as a data-only layer);
5. the EROFS image starts with the 32-byte composefs header (magic, version, flags, format version).
The image digest is the fs-verity digest of the image file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

from diskci.atomic import atomic_path
from diskci.errors import UsageError
from diskci.formats import erofs, fstree
from diskci.formats.fstree import Node
from diskci.formats.ingest import Ingest, object_path

MAGIC = 0xD078629A
HEADER_VERSION = 1
FLAG_HAS_ACL = 1
VERSION_MAX = 1
DEFAULT_MIN_VERSION = 0
DEFAULT_MAX_VERSION = 1
FS_VERITY_HASH_ALG_SHA256 = 1

OVERLAY = b"trusted.overlay."
ESCAPED = b"trusted.overlay.overlay."
USER_OVERLAY = b"user.overlay."
_HEADER = struct.Struct("<IIII16x")


@dataclass(frozen=True)
class Result:
    """A written composefs image: its fs-verity digest (hex), size, inode count and external objects."""

    digest: str
    size: int
    inodes: int
    format_version: int
    objects: int
    object_bytes: int


def load_source(source: Path, on_file: Callable[[Node], None] | None = None) -> Node:
    """A directory is walked as mkcomposefs 1.0.x walks it (every name its own inode, hardlinks too); a
    file is read as an (uncompressed) tarball, whose hardlinks stay one inode. ``on_file`` sees each
    regular file as soon as it is read."""
    if source.is_dir():
        return fstree.from_directory(source, hardlinks=False, on_file=on_file)
    if source.is_file():
        return fstree.from_tar(source, on_file=on_file)
    raise UsageError(f"{source}: no such directory or tarball")


def _format_version(nodes: list[Node], min_version: int, max_version: int) -> int:
    if not 0 <= min_version <= VERSION_MAX or not 0 <= max_version <= VERSION_MAX:
        raise UsageError(f"composefs format versions are 0..{VERSION_MAX}")
    max_version = max(max_version, min_version)
    version = min_version
    if version < 1 <= max_version and any(_is_whiteout(n) for n in nodes):
        version = 1
    return version


def _is_whiteout(node: Node) -> bool:
    return node.kind == stat.S_IFCHR and node.rdev == 0


def _escape(xattrs: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {(ESCAPED + k[len(OVERLAY) :] if k.startswith(OVERLAY) else k): v for k, v in xattrs.items()}


@dataclass(eq=False)
class BackedNode(Node):
    """A regular file of a composefs image told by its backing file rather than its bytes: ``payload``, the
    path the redirect xattr names (relative to the object store), and ``digest``, the fs-verity digest the
    metacopy xattr carries; either may be missing (a dump may leave them out)."""

    payload: bytes | None = None
    digest: bytes | None = None


@dataclass
class Described:
    """What a composefs image holds, as the dump format tells it: ``root`` is the tree before the overlay
    rewrite (files larger than the inline limit are :class:`BackedNode`, whiteouts char devices 0/0,
    xattrs unescaped, no ``00``..``ff``); ``primary`` says where a node with several names is stored
    (``id(node)`` → (``id`` of its directory node, name)); a node missing there is stored at its first
    breadth-first name."""

    root: Node
    primary: dict[int, tuple[int, bytes]] = field(default_factory=dict)


def describe(
    root: Node,
    *,
    digest_store: Path | None = None,
    use_epoch: bool = False,
    ingest: Ingest | None = None,
) -> tuple[Described, int, int]:
    """``root`` as a composefs image describes it (a new tree; ``root`` is left as it was), and the number
    and bytes of external objects (copied into ``digest_store`` when given, or into the store of
    ``ingest``, which may have read the files already)."""
    unique: dict[int, Node] = {}
    for _, node in fstree.walk(root):
        unique.setdefault(id(node), node)
    nodes = list(unique.values())
    files = [n for n in nodes if n.is_reg and n.size > 0]
    if ingest is None:
        with Ingest(digest_store) as own:
            content = own.results(files)
    else:
        content = ingest.results(files)
    new: dict[int, Node] = {}
    for node in nodes:
        copy = replace(node, data=None, source=None)
        if node.is_reg and node.size > 0:
            blob, external = content[id(node)]
            if external:
                copy = BackedNode(**_fields(copy), payload=object_path(blob).encode(), digest=blob)
            else:
                copy.data = blob
        if use_epoch:
            copy.mtime = copy.mtime_nsec = 0
        new[id(node)] = copy
    for node in nodes:
        if node.children is not None:
            new[id(node)].children = {name: new[id(child)] for name, child in node.children.items()}
    n_objects = len({d for d, size in content.values() if size})
    return Described(new[id(root)]), n_objects, sum(size for _, size in content.values())


def _fields(node: Node) -> dict[str, Any]:
    return {f.name: getattr(node, f.name) for f in fields(Node)}


def image_tree(described: Described, version: int) -> tuple[Node, dict[int, tuple[int, bytes]]]:
    """The tree mkcomposefs writes for ``described`` at format ``version`` (a new tree): overlay xattrs
    escaped, metacopy and redirect xattrs, whiteouts as marked empty files, the opaque root and its
    ``00``..``ff`` whiteouts; and ``described.primary`` for the new nodes."""
    root = described.root
    unique: dict[int, Node] = {}
    parents: dict[int, Node] = {}
    for _, node in fstree.walk(root):
        unique.setdefault(id(node), node)
        if node.children:
            for name, child in node.children.items():
                place = described.primary.get(id(child))
                if place is None or place == (id(node), name):
                    parents.setdefault(id(child), node)
    new: dict[int, Node] = {}
    for node in unique.values():
        copy = Node(**_fields(node) | {"xattrs": _escape(node.xattrs)})
        if node.is_reg and node.size > 0 and node.data is None:
            digest = node.digest if isinstance(node, BackedNode) else None
            copy.xattrs[OVERLAY + b"metacopy"] = (
                b"" if digest is None else bytes((0, 4 + len(digest), 0, FS_VERITY_HASH_ALG_SHA256)) + digest
            )
            payload = node.payload if isinstance(node, BackedNode) else None
            if payload:
                copy.xattrs[OVERLAY + b"redirect"] = b"/" + payload
        new[id(node)] = copy
    for node in unique.values():
        if node.children is not None:
            new[id(node)].children = {name: new[id(child)] for name, child in node.children.items()}
    for node in unique.values():
        if node is root or not _is_whiteout(node):
            continue
        copy = new[id(node)]
        copy.mode = stat.S_IFREG | stat.S_IMODE(node.mode)
        copy.size = 0
        copy.xattrs[ESCAPED + b"whiteout"] = b""
        copy.xattrs[USER_OVERLAY + b"whiteout"] = b""
        parent = new[id(parents[id(node)])]
        parent.xattrs[ESCAPED + b"whiteouts"] = b""
        parent.xattrs[USER_OVERLAY + b"whiteouts"] = b""
        if version >= 1:
            parent.xattrs[ESCAPED + b"opaque"] = b"x"
            parent.xattrs[USER_OVERLAY + b"opaque"] = b"x"

    top = new[id(root)]
    top.xattrs[OVERLAY + b"opaque"] = b"y"
    assert top.children is not None
    selinux = top.xattrs.get(b"security.selinux")
    for i in range(256):
        name = b"%02x" % i
        if name not in top.children:
            top.children[name] = Node(
                mode=stat.S_IFCHR | 0o644,
                uid=top.uid,
                gid=top.gid,
                mtime=top.mtime,
                mtime_nsec=top.mtime_nsec,
                xattrs={} if selinux is None else {b"security.selinux": selinux},
            )
    primary = {id(new[key]): (id(new[d]), name) for key, (d, name) in described.primary.items() if d in new}
    return top, primary


def prepare_tree(
    root: Node,
    *,
    digest_store: Path | None = None,
    use_epoch: bool = False,
    min_version: int = DEFAULT_MIN_VERSION,
    max_version: int = DEFAULT_MAX_VERSION,
    ingest: Ingest | None = None,
) -> tuple[Node, int, int, int]:
    """The tree mkcomposefs would write for ``root`` (a new tree; ``root`` is left as it was), its format
    version, and the number and bytes of external objects (copied into ``digest_store`` when given, or
    into the store of ``ingest``, which may have read the files already)."""
    version = _format_version([n for _, n in fstree.walk(root)], min_version, max_version)
    described, n_objects, object_bytes = describe(
        root, digest_store=digest_store, use_epoch=use_epoch, ingest=ingest
    )
    top, _ = image_tree(described, version)
    return top, version, n_objects, object_bytes


def write_described(
    described: Described,
    out: BinaryIO,
    *,
    min_version: int = DEFAULT_MIN_VERSION,
    max_version: int = DEFAULT_MAX_VERSION,
) -> Result:
    """Write the composefs image of an already described tree (a dump's, an image's): no file is read."""
    version = _format_version([n for _, n in fstree.walk(described.root)], min_version, max_version)
    tree, primary = image_tree(described, version)
    info = erofs.write_image(tree, out, header=header(version, tree), metadata_only=True, primary=primary)
    return Result(info.digest.hex(), info.size, info.inodes, version, 0, 0)


def build_described(
    described: Described,
    image: Path,
    *,
    min_version: int = DEFAULT_MIN_VERSION,
    max_version: int = DEFAULT_MAX_VERSION,
) -> Result:
    """:func:`write_described` to ``image``, written atomically."""
    _format_version([], min_version, max_version)
    with atomic_path(image) as tmp, open(tmp, "wb") as f:
        return write_described(described, f, min_version=min_version, max_version=max_version)


def header(version: int, tree: Node) -> bytes:
    acl = any(
        k in (b"system.posix_acl_access", b"system.posix_acl_default")
        for _, n in fstree.walk(tree)
        for k in n.xattrs
    )
    return _HEADER.pack(MAGIC, HEADER_VERSION, FLAG_HAS_ACL if acl else 0, version)


def write(
    root: Node,
    out: BinaryIO,
    *,
    digest_store: Path | None = None,
    use_epoch: bool = False,
    min_version: int = DEFAULT_MIN_VERSION,
    max_version: int = DEFAULT_MAX_VERSION,
    ingest: Ingest | None = None,
) -> Result:
    """Write the composefs image of ``root`` to ``out`` (objects to ``digest_store`` when given, or to the
    store of ``ingest``)."""
    tree, version, n_objects, object_bytes = prepare_tree(
        root,
        digest_store=digest_store,
        use_epoch=use_epoch,
        min_version=min_version,
        max_version=max_version,
        ingest=ingest,
    )
    info = erofs.write_image(tree, out, header=header(version, tree), metadata_only=True)
    return Result(info.digest.hex(), info.size, info.inodes, version, n_objects, object_bytes)


def build(
    source: Path,
    image: Path,
    *,
    digest_store: Path | None = None,
    use_epoch: bool = False,
    min_version: int = DEFAULT_MIN_VERSION,
    max_version: int = DEFAULT_MAX_VERSION,
    workers: int | None = None,
) -> Result:
    """``mkcomposefs SOURCE IMAGE``: SOURCE is a directory or a tarball; IMAGE is written atomically.

    Files are hashed (and copied to the store) while SOURCE is still being read. A ``digest_store`` that
    does not exist yet is made beside its final place and renamed there with the image; an existing one
    gets the missing objects, each renamed into place when complete.
    """
    _format_version([], min_version, max_version)  # refuse bad versions before any work
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(image))
        store, fresh = digest_store, False
        if digest_store is not None and not digest_store.exists():
            store, fresh = stack.enter_context(atomic_path(digest_store, directory=True)), True
            os.chmod(store, 0o755)
        ingest = stack.enter_context(Ingest(store, fresh=fresh, workers=workers))
        tree = load_source(source, ingest.submit)
        with open(tmp, "wb") as f:
            result = write(
                tree, f, ingest=ingest, use_epoch=use_epoch, min_version=min_version, max_version=max_version
            )
    return result
