"""The composefs dump format (composefs-dump(5)), read into and written from a :class:`Described` tree.

One line per file: PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST, then ``KEY=VALUE``
xattrs, separated by single spaces. Bytes outside ``!``..``~``, and ``\\``, are escaped as ``\\xHH`` (or
``\\\\``, ``\\n``, ``\\r``, ``\\t``); ``=`` too in xattrs; ``-`` is an absent optional field (a field that
*is* ``-`` is written ``\\x2d``). MODE starts with ``@`` on a hardlink, whose PAYLOAD is its target's path.

:func:`parse` reads a dump as mkcomposefs 1.0.8 ``--from-file`` does, refusing exactly what it refuses
(bad escapes, a missing or non-directory parent, an inline content that does not match its size or is
larger than 5000 bytes, a hardlink to a missing path...), each refusal naming the line, the field and what
was expected; the C quirks that decide bytes are kept (numbers read like ``strtoull``, names cut at a NUL,
fields wrapped to the widths libcomposefs stores). Strict mode (mkcomposefs: ``CFS_PARSE_STRICT`` set)
also refuses a device number on a non-device, a symlink whose size or content disagrees with its
target, and a last line without a newline; diskci's strict mode also refuses an unreadable GID or RDEV,
which mkcomposefs reads as 0 when the UID is not 0. diskci always refuses a DIGEST that is not 64 hex
digits (mkcomposefs would store unset bytes), and a hardlink loop or a hardlink to a directory (which
mkcomposefs refuses only when writing).

:func:`write` prints a described tree as ``composefs-info dump`` 1.0.8 prints an image.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from diskci.errors import FormatError
from diskci.formats import fstree
from diskci.formats.composefs import BackedNode, Described
from diskci.formats.fstree import Node

STRICT_ENV = "CFS_PARSE_STRICT"  # the environment variable mkcomposefs 1.0.8 reads
INLINE_CONTENT_MAX = 5000
PATH_MAX = 4096
NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_BUDGET = 0xFFFF // 2  # libcomposefs' cap on one file's xattrs read from a dump
_XATTR_HEADER, _XATTR_COST = 12, 7  # its accounting: a header, then 2 * 4 - 1 bytes per entry
MAX_STUB_SIZE = 1024 << 43  # 1024 chunks of the largest chunk size
DIGEST_SIZE = 32
FIELDS = ("PATH", "SIZE", "MODE", "NLINK", "UID", "GID", "RDEV", "MTIME", "PAYLOAD", "CONTENT", "DIGEST")
_U32, _U64 = (1 << 32) - 1, (1 << 64) - 1
_VALID_TYPES = {
    stat.S_IFREG,
    stat.S_IFDIR,
    stat.S_IFLNK,
    stat.S_IFBLK,
    stat.S_IFCHR,
    stat.S_IFSOCK,
    stat.S_IFIFO,
}
_METACOPY, _REDIRECT = b"trusted.overlay.metacopy", b"trusted.overlay.redirect"


class DumpFormatError(FormatError):
    """A composefs dump that mkcomposefs would refuse (or could not write deterministically)."""

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.line = line


def _refusal(field: str, message: str, line: int | None = None) -> DumpFormatError:
    """A refusal inside a line, its line number given by :func:`parse` unless known already."""
    return DumpFormatError(message, field=field, line=line)


@dataclass
class _Fixup:
    line: int
    link: Node  # the placeholder standing at the hardlink's name until it is resolved
    parent: Node
    name: bytes
    target: bytes | None


# --- escapes --------------------------------------------------------------------------------------

_HEX = {c: i for i, c in enumerate(b"0123456789abcdef")} | {c: 10 + i for i, c in enumerate(b"ABCDEF")}
_SIMPLE = {ord("\\"): b"\\", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}


def unescape(text: bytes, field: str) -> bytes:
    """The bytes an escaped field stands for (mkcomposefs' rules)."""
    if b"\\" not in text:
        return text
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        j = text.find(b"\\", i)
        if j < 0:
            out += text[i:]
            break
        out += text[i:j]
        if j + 1 >= n:
            raise _refusal(field, "No character after escape (a lone '\\' at the end)")
        c = text[j + 1]
        if c == ord("x"):
            if j + 3 >= n:
                raise _refusal(field, "No hex characters after hex escape (expected \\xHH)")
            hi, lo = _HEX.get(text[j + 2], -1), _HEX.get(text[j + 3], -1)
            if hi < 0 or lo < 0:
                raise _refusal(field, "Invalid hex characters after hex escape (expected \\xHH)")
            out.append(hi << 4 | lo)
            i = j + 4
        elif c in _SIMPLE:
            out += _SIMPLE[c]
            i = j + 2
        else:
            raise _refusal(field, f"Unsupported escape type {chr(c)} (expected \\\\, \\n, \\r, \\t or \\xHH)")
    return bytes(out)


def _show(value: bytes) -> str:
    return value.decode(errors="replace")


def _cstr(value: bytes) -> bytes:
    """What C sees of a string: everything before the first NUL."""
    cut = value.find(b"\0")
    return value if cut < 0 else value[:cut]


def _optional(text: bytes, field: str) -> bytes | None:
    return None if text == b"-" else unescape(text, field)


_GRAPH = re.compile(rb"[^\x21-\x5b\x5d-\x7e]")  # anything but printable non-space ASCII, or a backslash
_GRAPH_EQ = re.compile(rb"[^\x21-\x3c\x3e-\x5b\x5d-\x7e]")  # ... or '='
_SPECIAL = {0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}
_ESCAPES = [_SPECIAL.get(b, b"\\x%02x" % b) for b in range(256)]


def escape(value: bytes, *, equal: bool = False, lone_dash: bool = False) -> bytes:
    """``value`` escaped as composefs-info writes it (``equal``: '=' too; ``lone_dash``: '-' alone too)."""
    if lone_dash and value == b"-":
        return b"\\x2d"
    pattern = _GRAPH_EQ if equal else _GRAPH
    if pattern.search(value) is None:
        return value
    return pattern.sub(lambda m: _ESCAPES[m[0][0]], value)


# --- numbers --------------------------------------------------------------------------------------

_SPACE = b" \t\n\v\f\r"


def _strtoull(text: bytes, base: int, field: str) -> int:
    """``strtoull`` as mkcomposefs uses it: leading white space and a sign allowed, overflow saturates,
    anything left over (or nothing at all) refused."""
    i, n = 0, len(text)
    while i < n and text[i] in _SPACE:
        i += 1
    neg = False
    if i < n and text[i] in b"+-":
        neg, i = text[i] == ord("-"), i + 1
    start = i
    digits = b"01234567" if base == 8 else b"0123456789"
    while i < n and text[i] in digits:
        i += 1
    if not text or i == start or i != n:
        what = "an octal number" if base == 8 else "a decimal number"
        raise _refusal(field, f"Invalid integer {text.decode(errors='replace')} (expected {what})")
    value = int(text[start:i], base)
    if value > _U64:
        return _U64
    return (-value) & _U64 if neg else value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


# --- parsing --------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.root: Node | None = None
        self.fixups: list[_Fixup] = []
        self.home: dict[int, tuple[int, bytes]] = {}  # where each line's own node was added

    def lookup_parent(self, path: bytes) -> tuple[Node | None, bytes]:
        """The directory a new path goes in and its name there (mkcomposefs skips runs of '/')."""
        assert self.root is not None
        node, names = self.root, path.lstrip(b"/")
        while True:
            head, sep, rest = names.partition(b"/")
            if not sep:
                return node, head
            child = None if node.children is None else node.children.get(head)
            if child is None:
                return None, b""
            node, names = child, rest.lstrip(b"/")

    def lookup(self, path: bytes) -> Node | None:
        assert self.root is not None
        node = self.root
        for name in path.split(b"/"):
            if not name:
                continue
            child = (node.children or {}).get(name)
            if child is None:
                return None
            node = child
        return node

    def add(self, path: bytes, node: Node) -> tuple[Node, bytes]:
        shown = path.decode(errors="replace")
        if path == b"/":
            if not node.is_dir:
                raise _refusal("MODE", "Root must be a directory (expected a mode of type 040000)")
            if self.root is not None:
                raise _refusal("PATH", "Can't have multiple roots (a second line for '/')")
            self.root = node
            return node, b""
        if self.root is None:
            raise _refusal("PATH", "Root node not present (the first line must be '/')")
        parent, name = self.lookup_parent(path)
        if parent is None:
            raise _refusal(
                "PATH", f"Parent directory missing for {shown} (a parent must come on an earlier line)"
            )
        if not parent.is_dir or parent.children is None:
            raise _refusal("PATH", f"Parent must be a directory for {shown}")
        if name in (b".", b".."):
            raise _refusal("PATH", f"Invalid . or .. in path: {shown}")
        if not name:
            raise _refusal("PATH", f"Can't add child: {shown} has an empty file name")
        if len(name) > NAME_MAX:
            raise _refusal("PATH", f"Can't add child: a file name of {len(name)} bytes (at most {NAME_MAX})")
        if name in parent.children:
            raise _refusal("PATH", f"Path {shown} already exist")
        parent.children[name] = node
        return parent, name

    def line(self, number: int, line: bytes) -> None:
        nul = line.find(b"\0")
        if nul >= 0:
            raise _refusal("line", f"Invalid embedded NUL character at position {nul}")
        fields = line.split(b" ", len(FIELDS))
        rest = fields[len(FIELDS)] if len(fields) > len(FIELDS) else b""
        fields = fields[: len(FIELDS)] + [b""] * (len(FIELDS) - len(fields))
        path = _cstr(unescape(fields[0], "PATH"))
        if not path:
            raise _refusal("PATH", "Invalid empty path")
        mode_text = fields[2]
        hardlink = mode_text.startswith(b"@")
        if hardlink:
            mode_text = mode_text[1:]
        mode = _strtoull(mode_text, 8, "MODE") & _U32
        if stat.S_IFMT(mode) not in _VALID_TYPES:
            raise _refusal(
                "MODE", f"Invalid mode {mode:o} (expected a file type: 01, 02, 04, 06, 010, 012 or 014)"
            )
        node: Node
        if stat.S_ISREG(mode):
            node = BackedNode(mode=mode)
        else:
            node = Node(mode=mode, children={} if stat.S_ISDIR(mode) else None)
        parent, name = self.add(path, node)
        if hardlink:
            if node.is_dir:
                raise _refusal("MODE", "Directories can't be hardlinked")
            target = _optional(fields[8], "PAYLOAD")
            self.fixups.append(_Fixup(number, node, parent, name, None if target is None else _cstr(target)))
            return
        self.home[id(node)] = (id(parent), name)
        size = _strtoull(fields[1], 10, "SIZE")
        node.nlink = _strtoull(fields[3], 10, "NLINK") & _U32
        node.uid = _strtoull(fields[4], 10, "UID") & _U32
        node.gid, rdev = self.quirky(fields, node.uid)
        sec_text, dot, nsec_text = fields[7].partition(b".")
        node.mtime = _signed64(_strtoull(sec_text, 10, "MTIME"))
        node.mtime_nsec = _strtoull(nsec_text if dot else b"", 10, "MTIME") & _U32
        payload = _optional(fields[8], "PAYLOAD")
        content = _optional(fields[9], "CONTENT")
        if content is not None and len(content) != size:
            raise _refusal("CONTENT", f"Invalid content size {len(content)}, must match size {size}")
        digest_text = _optional(fields[10], "DIGEST")
        kind = node.kind
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = rdev & _U32
        elif self.strict and rdev != 0:
            raise _refusal("RDEV", "Non-zero devnum on non-device (expected 0)")
        if kind == stat.S_IFLNK:
            target = None if payload is None else _cstr(payload)
            if not target or len(target) >= PATH_MAX:
                raise _refusal("PAYLOAD", f"Invalid symlink (expected a target of 1 to {PATH_MAX - 1} bytes)")
            if self.strict and size != len(target):
                raise _refusal("SIZE", f"Invalid symlink size {len(target)}, must match size {size}")
            if self.strict and content:
                raise _refusal("CONTENT", "Symlink cannot have content")
            node.target, node.size = target, len(target)
        else:
            node.size = size
            if payload is not None and len(_cstr(payload)) >= PATH_MAX:
                raise _refusal("PAYLOAD", f"Invalid payload (expected less than {PATH_MAX} bytes)")
            if content is not None and len(content) > INLINE_CONTENT_MAX:
                raise _refusal(
                    "CONTENT",
                    f"Inline content size {len(content)} exceeds maximum {INLINE_CONTENT_MAX}",
                )
        backed = kind == stat.S_IFREG and size > 0 and not content
        # only a stub's digest reaches the image; mkcomposefs would store unset bytes for a bad one
        digest = _digest(digest_text) if backed and digest_text is not None else None
        if kind == stat.S_IFREG:
            if content:
                node.data = content
            elif backed and size > MAX_STUB_SIZE:
                raise _refusal(
                    "SIZE", f"File too large: {size} bytes (a composefs stub holds at most {MAX_STUB_SIZE})"
                )
        if len(rest) > 0xFFFF:
            raise _refusal("xattrs", f"Too many xattrs ({len(rest)} bytes of them; at most {0xFFFF})")
        cost = self.xattrs(node, rest)
        if backed:
            extra = _XATTR_COST + len(_METACOPY) + (4 + DIGEST_SIZE if digest is not None else 0)
            if payload:
                extra += _XATTR_COST + len(_REDIRECT) + 1 + len(_cstr(payload))
            if (cost or _XATTR_HEADER) + extra > XATTR_BUDGET:
                raise _refusal(
                    "xattrs", f"xattrs too large with the overlay ones added (at most {XATTR_BUDGET})"
                )
        if isinstance(node, BackedNode):
            node.payload = None if payload is None else _cstr(payload)
            node.digest = digest

    def quirky(self, fields: list[bytes], uid: int) -> tuple[int, int]:
        """GID and RDEV: mkcomposefs checks their errors only when the UID is 0 (reading 0 otherwise)."""
        values = []
        for index, field in ((5, "GID"), (6, "RDEV")):
            try:
                values.append(_strtoull(fields[index], 10, field))
            except DumpFormatError:
                if uid == 0 or self.strict:
                    raise
                values.append(0)
        return values[0] & _U32, values[1]

    def xattrs(self, node: Node, rest: bytes) -> int:
        tokens = rest.split(b" ") if rest else []
        if rest.endswith(b" "):
            tokens.pop()
        cost = 0
        for token in tokens:
            key_text, eq, value_text = token.partition(b"=")
            if not eq:
                raise _refusal("xattrs", f"Missing = in xattr {_show(token)!r} (expected KEY=VALUE)")
            key = _cstr(unescape(key_text, "xattrs"))
            value = unescape(value_text, "xattrs")
            if not key or len(key) > XATTR_NAME_MAX:
                raise _refusal("xattrs", f"Can't set xattr: a name of {len(key)} bytes (1 to 255)")
            if len(value) > 0xFFFF:
                raise _refusal(
                    "xattrs",
                    f"Can't set xattr {_show(key)}: a value of {len(value)} bytes (at most {0xFFFF})",
                )
            old = node.xattrs.pop(key, None)
            if old is not None:
                cost = 0 if not node.xattrs else cost - (_XATTR_COST + len(key) + len(old))
            entry = _XATTR_COST + len(key) + len(value) + (0 if node.xattrs else _XATTR_HEADER)
            if cost + entry > XATTR_BUDGET:
                raise _refusal(
                    "xattrs",
                    f"Can't set xattr {_show(key)}: more than {XATTR_BUDGET} bytes of xattrs",
                )
            node.xattrs[key] = value
            cost += entry
        return cost

    def resolve(self) -> dict[int, tuple[int, bytes]]:
        """Point every hardlink at its target (mkcomposefs resolves them last, from the last one back)."""
        assert self.root is not None
        links = {id(f.link): f for f in self.fixups}
        final: dict[int, Node] = {}
        for fix in reversed(self.fixups):
            if fix.target is None:
                raise _refusal_at(
                    fix.line, "PAYLOAD", "No target path for the hardlink (expected the path of another line)"
                )
            target = self.lookup(fix.target)
            shown = fix.target.decode(errors="replace")
            if target is None:
                raise _refusal_at(fix.line, "PAYLOAD", f"No target at {shown} for hardlink")
            if target is fix.link:
                raise _refusal_at(fix.line, "PAYLOAD", f"Self-referential hardlink {shown}")
            seen = {id(fix.link)}
            while id(target) in links:
                if id(target) in seen:
                    raise _refusal_at(fix.line, "PAYLOAD", f"Hardlink loop through {shown}")
                seen.add(id(target))
                nxt = links[id(target)]
                target = self.lookup(nxt.target) if nxt.target is not None else None
                if target is None:
                    raise _refusal_at(nxt.line, "PAYLOAD", "No target path for the hardlink")
            if target.is_dir:
                raise _refusal_at(
                    fix.line,
                    "PAYLOAD",
                    f"Hardlink to the directory {shown} (directories can't be hardlinked)",
                )
            final[id(fix.link)] = target
        for fix in self.fixups:
            assert fix.parent.children is not None
            fix.parent.children[fix.name] = final[id(fix.link)]
        # the line that is not a hardlink is the name the inode is stored at
        return {id(node): self.home[id(node)] for node in final.values()}


def _refusal_at(line: int, field: str, message: str) -> DumpFormatError:
    return _refusal(field, message, line)


def _digest(text: bytes) -> bytes:
    if len(text) != 2 * DIGEST_SIZE or any(c not in _HEX for c in text):
        raise _refusal("DIGEST", f"Invalid digest {text.decode(errors='replace')!r} (expected 64 hex digits)")
    return bytes.fromhex(text.decode())


def strict_from_env() -> bool:
    """Whether mkcomposefs 1.0.8 would parse strictly here (``CFS_PARSE_STRICT`` set, to anything)."""
    return STRICT_ENV in os.environ


def parse(data: bytes, *, strict: bool = False, source: str = "dump") -> Described:
    """The tree a dump describes (see the module docstring for what is refused)."""
    parser = _Parser(strict)
    lines = data.split(b"\n")
    last = lines.pop()
    if last:
        if strict:
            raise DumpFormatError(f"{source}: line {len(lines) + 1}: Missing trailing newline")
        lines.append(last)
    number = 0
    try:
        for number, line in enumerate(lines, 1):
            parser.line(number, line)
        if parser.root is None:
            raise DumpFormatError(f"{source}: No files in dump file")
        primary = parser.resolve()
    except DumpFormatError as exc:
        if exc.field is None:
            raise
        at = number if exc.line is None else exc.line
        raise DumpFormatError(
            f"{source}: line {at}: {exc.field}: {exc.message}", field=exc.field, line=at
        ) from None
    return Described(parser.root, primary)


def read(path: str, *, strict: bool = False) -> Described:
    """:func:`parse` of a file, or of standard input for ``-``."""
    import sys

    if path == "-":
        return parse(sys.stdin.buffer.read(), strict=strict, source="<stdin>")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DumpFormatError(f"{path}: cannot read the dump: {exc.strerror}") from exc
    return parse(data, strict=strict, source=path)


# --- writing --------------------------------------------------------------------------------------


def _nlinks(root: Node) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, node in fstree.walk(root):
        if node.is_dir:
            counts[id(node)] = 2 + sum(1 for c in (node.children or {}).values() if c.is_dir)
        else:
            counts[id(node)] = counts.get(id(node), 0) + 1
    return counts


def lines(described: Described) -> Iterator[bytes]:
    """The dump's lines (each ending in a newline), depth first, children by name, as composefs-info."""
    root = described.root
    counts = _nlinks(root)
    where: dict[int, bytes] = {}  # the path each node with several names is stored at
    dirs: dict[int, bytes] = {}
    for path, node in fstree.walk(root):
        if node.is_dir:
            dirs[id(node)] = path
        elif counts[id(node)] > 1:
            where.setdefault(id(node), path)
    for key, (parent_id, name) in described.primary.items():
        base = dirs.get(parent_id)
        if base is not None and key in where:
            where[key] = base + b"/" + name if base else name
    stack: list[tuple[bytes, Node]] = [(b"", root)]
    while stack:
        path, node = stack.pop()
        home = where.get(id(node))
        link = home is not None and home != path
        yield _line(path, node, counts, b"/" + home if link and home is not None else None)
        if node.children and not link:
            for name in sorted(node.children, reverse=True):
                stack.append((path + b"/" + name if path else name, node.children[name]))


def _line(path: bytes, node: Node, counts: dict[int, int], link: bytes | None) -> bytes:
    kind = node.kind
    nlink = node.nlink if node.nlink is not None else counts[id(node)]
    rdev = node.rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
    if link is not None:
        payload: bytes | None = link
    elif kind == stat.S_IFLNK:
        payload = node.target
    else:
        payload = node.payload if isinstance(node, BackedNode) else None
    content = node.data if kind == stat.S_IFREG and node.data else None
    digest = node.digest if isinstance(node, BackedNode) else None
    parts = [
        escape(b"/" + path if path else b"/"),
        b"%d" % node.size,
        (b"@" if link is not None else b"") + b"%o" % node.mode,
        b"%d %d %d %d %d.%d" % (nlink, node.uid, node.gid, rdev, node.mtime, node.mtime_nsec),
        b"-" if payload is None else escape(payload, lone_dash=True),
        b"-" if content is None else escape(content, lone_dash=True),
        b"-" if digest is None else digest.hex().encode(),
    ]
    for key, value in node.xattrs.items():
        parts.append(escape(key, equal=True) + b"=" + escape(value, equal=True))
    return b" ".join(parts) + b"\n"


def write(described: Described, out: BinaryIO) -> None:
    """Write the dump of ``described`` to ``out``."""
    batch: list[bytes] = []
    for text in lines(described):
        batch.append(text)
        if len(batch) >= 4096:
            out.write(b"".join(batch))
            batch.clear()
    out.write(b"".join(batch))


def dumps(described: Described) -> bytes:
    return b"".join(lines(described))
