"""What changed between two composefs images: a compact listing of each, and the diff of two listings.

A *listing* maps every path of an image (``/`` for the root, ``/etc/hosts``...) to an :class:`Entry`:
file type, permission bits, owner, size (regular files only), content (``fsverity:<hex>``, the digest of
an external file's object, or ``sha256:<hex>`` of an inline file's bytes; none for an empty file),
symlink target, device number and xattrs (name → ``sha256:<hex>`` of the value). Modification times,
link counts and directory sizes are left out: they change with every build and say nothing of what a
node would run. Paths, targets and xattr names are text: as they are when valid UTF-8 without a
backslash or control character, otherwise escaped as composefs-dump(5) escapes them (so a backslash
always means an escaped form, and two different byte strings never show the same).

:func:`encode` packs a listing into a few hundred kilobytes for a whole Debian root (JSON, then
:mod:`lzma`); :func:`decode` reads it back, refusing anything else. :func:`diff` compares two listings;
:meth:`Diff.to_json` is the shape ``diskci composefs diff --json`` prints and the platform's
``system_diff_disk_image_publications`` returns (see docs/composefs.md).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diskci.errors import FormatError
from diskci.formats import composefs_dump, composefs_reader, fstree
from diskci.formats.composefs import BackedNode, Described

LISTING_FORMAT = 1
MAX_LISTING_BYTES = 256 << 20  # what decode() unpacks at most (a listing of millions of files)
FIELDS = ("type", "mode", "uid", "gid", "size", "content", "target", "rdev", "xattrs")
ChangeKind = Literal["added", "removed", "changed"]

_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}
_TYPE_NAMES = frozenset(_TYPES.values())
_PLAIN = re.compile(r"[^\\\x00-\x1f\x7f]*")
_MAGIC = b"diskci-composefs-listing\n"


class ListingFormatError(FormatError):
    """Bytes that are not a listing :func:`encode` wrote (or one of a format this diskci does not read)."""


def show(value: bytes) -> str:
    """``value`` as text: itself when valid UTF-8 without a backslash or control character, otherwise
    escaped as composefs-dump(5) does (the escaped form always holds a backslash)."""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return composefs_dump.escape(value).decode("ascii")
    if _PLAIN.fullmatch(text):
        return text
    return composefs_dump.escape(value).decode("ascii")


@dataclass(frozen=True)
class Entry:
    """One path of a listing (see the module docstring); ``mode`` is the permission bits in octal."""

    type: str
    mode: str
    uid: int
    gid: int
    size: int | None = None
    content: str | None = None
    target: str | None = None
    rdev: str | None = None  # "major:minor"
    xattrs: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {f: (dict(v) if isinstance(v := getattr(self, f), Mapping) else v) for f in FIELDS}

    def differing(self, other: Entry) -> tuple[str, ...]:
        """The fields (in :data:`FIELDS` order) whose values differ."""
        return tuple(f for f in FIELDS if getattr(self, f) != getattr(other, f))


Listing = dict[str, Entry]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def entry_of(node: fstree.Node) -> Entry:
    """The listing entry of one node of a tree read from an image (or described for one)."""
    kind = node.kind
    size = content = target = rdev = None
    if kind == stat.S_IFREG:
        size = node.size
        if isinstance(node, BackedNode) and node.digest is not None:
            content = "fsverity:" + node.digest.hex()
        elif isinstance(node, BackedNode) and node.payload is not None:
            content = "payload:" + show(node.payload)
        elif node.size:
            content = _sha256(node.read())
    elif kind == stat.S_IFLNK:
        target = show(node.target or b"")
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        rdev = f"{os.major(node.rdev)}:{os.minor(node.rdev)}"
    xattrs = {show(k): _sha256(v) for k, v in sorted(node.xattrs.items())} or None
    return Entry(
        type=_TYPES.get(kind, oct(kind)),
        mode=f"{node.mode & 0o7777:04o}",
        uid=node.uid,
        gid=node.gid,
        size=size,
        content=content,
        target=target,
        rdev=rdev,
        xattrs=xattrs,
    )


def listing(described: Described | fstree.Node) -> Listing:
    """Every path of a tree (a :class:`Described` image tree, or its root) and its entry."""
    root = described.root if isinstance(described, Described) else described
    return {"/" + show(path): entry_of(node) for path, node in fstree.walk(root)}


def read_listing(image: Path) -> Listing:
    """The listing of a composefs image file (read with the bounds-checked reader)."""
    return listing(composefs_reader.read_file(image))


# --- the stored form ------------------------------------------------------------------------------


def encode(entries: Listing) -> bytes:
    """``entries`` packed: a magic line, then lzma-compressed JSON ``{"format": 1, "entries": [[path,
    type, mode, uid, gid, size, content, target, rdev, xattrs], ...]}`` in path order."""
    rows = [[path, *(getattr(e, f) for f in FIELDS)] for path, e in sorted(entries.items())]
    for row in rows:
        if row[-1] is not None:
            row[-1] = dict(row[-1])
    text = json.dumps({"format": LISTING_FORMAT, "entries": rows}, separators=(",", ":"), ensure_ascii=False)
    return _MAGIC + lzma.compress(text.encode(), preset=6)


def decode(data: bytes) -> Listing:
    """The listing :func:`encode` packed into ``data``; anything else raises :class:`ListingFormatError`."""
    if not data.startswith(_MAGIC):
        raise ListingFormatError("not a composefs listing (no magic line)")
    unpacker = lzma.LZMADecompressor()
    try:
        text = unpacker.decompress(data[len(_MAGIC) :], max_length=MAX_LISTING_BYTES)
    except lzma.LZMAError as exc:
        raise ListingFormatError(f"composefs listing: broken compression ({exc})") from None
    if not unpacker.eof:
        raise ListingFormatError(f"composefs listing: truncated, or larger than {MAX_LISTING_BYTES} bytes")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ListingFormatError(f"composefs listing: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != LISTING_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise ListingFormatError(f"composefs listing format {got!r}, this diskci reads {LISTING_FORMAT}")
    out: Listing = {}
    for i, row in enumerate(doc.get("entries") or []):
        try:
            out[row[0]] = _entry_from_row(row)
        except (TypeError, ValueError, IndexError) as exc:
            raise ListingFormatError(f"composefs listing: entry {i} is malformed ({exc})") from None
    return out


def _entry_from_row(row: list[Any]) -> Entry:
    if len(row) != 1 + len(FIELDS) or not isinstance(row[0], str):
        raise ValueError(f"{len(row)} fields")
    values = dict(zip(FIELDS, row[1:], strict=True))
    if values["type"] not in _TYPE_NAMES:
        raise ValueError(f"type {values['type']!r}")
    for name in ("uid", "gid"):
        if not isinstance(values[name], int):
            raise ValueError(f"{name} {values[name]!r}")
    xattrs = values["xattrs"]
    if xattrs is not None and not isinstance(xattrs, dict):
        raise ValueError("xattrs")
    return Entry(**values)


# --- the diff -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One path that differs: ``added`` (only ``new``), ``removed`` (only ``old``) or ``changed`` (both,
    with the ``fields`` that differ, in :data:`FIELDS` order)."""

    path: str
    change: ChangeKind
    fields: tuple[str, ...]
    old: Entry | None
    new: Entry | None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.change,
            "fields": list(self.fields),
            "old": self.old.to_json() if self.old else None,
            "new": self.new.to_json() if self.new else None,
        }


@dataclass(frozen=True)
class Diff:
    """Every changed path of two listings, in tree order (a directory, then what lies under it)."""

    changes: tuple[Change, ...]
    unchanged: int

    @property
    def counts(self) -> dict[str, int]:
        out = {"added": 0, "removed": 0, "changed": 0}
        for c in self.changes:
            out[c.change] += 1
        return out | {"unchanged": self.unchanged}

    def __bool__(self) -> bool:
        return bool(self.changes)

    def to_json(self, *, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        """``{"counts": {added, removed, changed, unchanged}, "entries": [change...], "offset",
        "next_offset", "truncated"}``: the changes from ``offset``, at most ``limit`` of them;
        ``truncated`` says more follow (from ``next_offset``)."""
        end = len(self.changes) if limit is None else min(len(self.changes), offset + limit)
        page = self.changes[offset:end]
        more = end < len(self.changes)
        return {
            "counts": self.counts,
            "entries": [c.to_json() for c in page],
            "offset": offset,
            "next_offset": end if more else None,
            "truncated": more,
        }


def tree_order(path: str) -> tuple[str, ...]:
    """The sort key that puts a directory just before what lies under it."""
    return tuple(path.split("/"))


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/") or prefix == "/"


def diff(old: Listing, new: Listing, *, under: str | None = None) -> Diff:
    """What changed from ``old`` to ``new`` (only at and below the path ``under``, when given)."""
    prefix = "/" + under.strip("/") if under is not None else None
    changes: list[Change] = []
    unchanged = 0
    for path in sorted(old.keys() | new.keys(), key=tree_order):
        if prefix is not None and not _under(path, prefix):
            continue
        a, b = old.get(path), new.get(path)
        if a is None:
            changes.append(Change(path, "added", (), None, b))
        elif b is None:
            changes.append(Change(path, "removed", (), a, None))
        elif a != b:
            changes.append(Change(path, "changed", a.differing(b), a, b))
        else:
            unchanged += 1
    return Diff(tuple(changes), unchanged)


def describe_entry(e: Entry) -> str:
    """One line for people: ``file 0644 0:0 1234 bytes``, ``symlink → target``, ``char 1:3``..."""
    parts = [e.type, e.mode, f"{e.uid}:{e.gid}"]
    if e.size is not None:
        parts.append(f"{e.size} bytes")
    if e.target is not None:
        parts.append(f"→ {e.target}")
    if e.rdev is not None:
        parts.append(f"device {e.rdev}")
    return " ".join(parts)


def describe_change(c: Change) -> str:
    """What a change is, in one line: the entry for an added or removed path, ``field old → new`` each."""
    if c.old is None or c.new is None:
        return describe_entry(c.new or c.old)  # type: ignore[arg-type]
    out: list[str] = []
    for f in c.fields:
        a, b = getattr(c.old, f), getattr(c.new, f)
        if f == "xattrs":
            out.append(_xattr_change(a or {}, b or {}))
        elif f == "content":
            out.append(f"content {_short(a)} → {_short(b)}")
        else:
            out.append(f"{f} {a} → {b}")
    return "; ".join(out)


def _short(value: str | None) -> str:
    if value is None:
        return "(none)"
    kind, _, digest = value.partition(":")
    return f"{kind}:{digest[:12]}…" if len(digest) > 12 else value


def _xattr_change(a: Mapping[str, str], b: Mapping[str, str]) -> str:
    added = sorted(b.keys() - a.keys())
    removed = sorted(a.keys() - b.keys())
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    words = [f"+{k}" for k in added] + [f"-{k}" for k in removed] + [f"~{k}" for k in changed]
    return "xattrs " + " ".join(words)
