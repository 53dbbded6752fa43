"""The composefs dump format: a tree's dump builds the tree's own image, images go to dumps and back byte
for byte, and every refusal mkcomposefs makes is made here too, naming the line and the field."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.errors import UsageError
from diskci.formats import composefs, composefs_dump, composefs_reader
from diskci.formats.composefs_dump import DumpFormatError
from diskci.formats.composefs_reader import ImageFormatError
from diskci.formats.fstree import Node

ROOT_LINE = b"/ 4096 40755 2 0 0 0 1700000000.0 - - -\n"
DIGEST = "35d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408"

_NAME = st.binary(min_size=1, max_size=12).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
_XATTRS = st.dictionaries(
    st.sampled_from([b"user.a", b"user.=b", b"trusted.overlay.opaque", b"security.selinux", b"user.x y"]),
    st.binary(max_size=20),
    max_size=3,
)


@st.composite
def trees(draw: st.DrawFn) -> Node:
    """Random trees of every kind of file, with shared xattrs, hardlinks and whiteouts."""
    root = Node.directory(0o755, mtime=1_700_000_000, xattrs=draw(_XATTRS))
    dirs, files = [root], []
    for _ in range(draw(st.integers(0, 25))):
        parent = draw(st.sampled_from(dirs))
        name = draw(_NAME)
        assert parent.children is not None
        if name in parent.children:
            continue
        kind = draw(st.sampled_from(["dir", "file", "file", "link", "dev", "fifo", "whiteout", "hardlink"]))
        mtime = draw(st.sampled_from([1_700_000_000, 1_600_000_000, -5, 2**40]))
        common = {
            "mtime": mtime,
            "mtime_nsec": draw(st.integers(0, 999_999_999)),
            "xattrs": draw(_XATTRS),
            "uid": draw(st.sampled_from([0, 1000, 70000])),
            "gid": draw(st.sampled_from([0, 5, 2**31])),
        }
        if kind == "dir":
            node = Node.directory(0o750, **common)
            dirs.append(node)
        elif kind == "file":
            node = Node.file(draw(st.binary(max_size=200)), 0o644, **common)
            files.append(node)
        elif kind == "link":
            node = Node.symlink(
                draw(st.binary(min_size=1, max_size=300).filter(lambda t: b"\0" not in t)), **common
            )
        elif kind == "dev":
            node = Node(mode=stat.S_IFBLK | 0o660, rdev=os.makedev(8, draw(st.integers(1, 300))), **common)
        elif kind == "fifo":
            node = Node(mode=stat.S_IFIFO | 0o644, **common)
        elif kind == "whiteout":
            node = Node(mode=stat.S_IFCHR, **common)
        elif files:
            node = draw(st.sampled_from(files))
        else:
            continue
        parent.children[name] = node
    return root


def image_of(tree: Node, **kw: int) -> bytes:
    out = io.BytesIO()
    composefs.write(tree, out, **kw)
    return out.getvalue()


def build(dump: bytes, **kw: int) -> bytes:
    out = io.BytesIO()
    composefs.write_described(composefs_dump.parse(dump), out, **kw)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(tree=trees(), max_version=st.sampled_from([0, 1]))
def test_a_trees_dump_builds_the_trees_image_and_images_round_trip(tree: Node, max_version: int) -> None:
    image = image_of(tree, min_version=0, max_version=max_version)
    described, _, _ = composefs.describe(tree)
    assert build(composefs_dump.dumps(described), max_version=max_version) == image
    read_back = composefs_reader.read(image)
    dump = composefs_dump.dumps(read_back)
    assert build(dump, max_version=max_version) == image
    assert composefs_dump.dumps(composefs_reader.read(build(dump, max_version=max_version))) == dump


@given(st.binary(max_size=64), st.booleans(), st.booleans())
def test_escapes_round_trip(value: bytes, equal: bool, dash: bool) -> None:
    text = composefs_dump.escape(value, equal=equal, lone_dash=dash)
    assert b" " not in text and b"\n" not in text and (not equal or b"=" not in text)
    assert composefs_dump.unescape(text, "X") == value


def test_fields_and_escapes_are_read_as_written() -> None:
    dump = ROOT_LINE + (
        b"/a\\x20b 5 100600 1 1000 1001 0 1700000001.5 - a\\tb\\\\c -\n"
        b"/big 100000 100644 2 0 0 0 1700000001.0 ab/cd - " + DIGEST.encode() + b" user.k\\x3d=v=1\n"
        b"/hard 0 @100644 0 0 0 0 0.0 /big - -\n"
        b"/dash 10 100644 1 0 0 0 0.0 \\x2d - -\n"
        b"/sym 99 120777 1 0 0 0 0.0 \\x2d - -\n"
    )
    root = composefs_dump.parse(dump).root
    assert root.children is not None
    small = root.children[b"a b"]
    assert (small.data, small.mtime, small.mtime_nsec, small.uid, small.gid) == (
        b"a\tb\\c",
        1700000001,
        5,
        1000,
        1001,
    )
    big = root.children[b"big"]
    assert isinstance(big, composefs.BackedNode)
    assert (big.payload, big.digest, big.xattrs, big.nlink) == (
        b"ab/cd",
        bytes.fromhex(DIGEST),
        {b"user.k=": b"v=1"},
        2,
    )
    assert root.children[b"hard"] is big
    assert root.children[b"sym"].target == b"-" and root.children[b"sym"].size == 1


def test_hardlinks_are_stored_at_the_line_that_is_not_a_hardlink() -> None:
    dump = ROOT_LINE + (
        b"/a 0 @100644 1 0 0 0 0.0 /z/deep/f - -\n"
        b"/z 0 40755 2 0 0 0 0.0 - - -\n"
        b"/z/deep 0 40755 2 0 0 0 0.0 - - -\n"
        b"/z/deep/f 100 100644 2 0 0 0 0.0 - - " + DIGEST.encode() + b"\n"
    )
    image = build(dump)
    again = composefs_dump.dumps(composefs_reader.read(image))
    assert b"/a 100 @100644 2 0 0 0 0.0 /z/deep/f - " in again
    assert build(again) == image


REFUSALS = {
    "escape": (b"/a\\q 0 100644 1 0 0 0 0.0 - - -\n", r"line 2: PATH: Unsupported escape type q"),
    "hex": (b"/a\\xg0 0 100644 1 0 0 0 0.0 - - -\n", r"line 2: PATH: Invalid hex characters"),
    "short hex": (b"/a 0 100644 1 0 0 0 0.0 \\x4 - -\n", r"line 2: PAYLOAD: No hex characters"),
    "lone backslash": (
        b"/a 0 100644 1 0 0 0 0.0 - - - user.a=\\\n",
        r"line 2: xattrs: No character after escape",
    ),
    "nul": (b"/a\0 0 100644 1 0 0 0 0.0 - - -\n", r"Invalid embedded NUL character at position 2"),
    "parent": (b"/no/a 0 100644 1 0 0 0 0.0 - - -\n", r"line 2: PATH: Parent directory missing for /no/a"),
    "not dir": (
        b"/f 0 100644 1 0 0 0 0.0 - - -\n/f/a 0 100644 1 0 0 0 0.0 - - -\n",
        r"line 3: PATH: Parent must be",
    ),
    "dot": (b"/. 0 40755 1 0 0 0 0.0 - - -\n", r"Invalid \. or \.\. in path"),
    "twice": (
        b"/a 0 40755 1 0 0 0 0.0 - - -\n/a 0 40755 1 0 0 0 0.0 - - -\n",
        r"line 3: PATH: Path /a already exist",
    ),
    "empty name": (b"// 0 40755 1 0 0 0 0.0 - - -\n", r"Can't add child"),
    "mode": (b"/a 0 644 1 0 0 0 0.0 - - -\n", r"line 2: MODE: Invalid mode 644"),
    "integer": (b"/a 1x 100644 1 0 0 0 0.0 - - -\n", r"line 2: SIZE: Invalid integer 1x"),
    "mtime": (b"/a 0 100644 1 0 0 0 5 - - -\n", r"line 2: MTIME: Invalid integer"),
    "content size": (b"/a 3 100644 1 0 0 0 0.0 - ab -\n", r"Invalid content size 2, must match size 3"),
    "big inline": (
        b"/a 5001 100644 1 0 0 0 0.0 - " + b"x" * 5001 + b" -\n",
        r"Inline content size 5001 exceeds",
    ),
    "empty symlink": (b"/l 0 120777 1 0 0 0 0.0 - - -\n", r"line 2: PAYLOAD: Invalid symlink"),
    "long payload": (b"/f 9 100644 1 0 0 0 0.0 " + b"p" * 4096 + b" - -\n", r"Invalid payload"),
    "digest": (b"/f 99 100644 1 0 0 0 0.0 - - abc\n", r"line 2: DIGEST: Invalid digest 'abc'"),
    "too big": (b"/f 9500000000000000 100644 1 0 0 0 0.0 - - -\n", r"File too large"),
    "no =": (b"/a 0 100644 1 0 0 0 0.0 - - - user.a\n", r"line 2: xattrs: Missing = in xattr"),
    "empty key": (b"/a 0 100644 1 0 0 0 0.0 - - - =v\n", r"Can't set xattr"),
    "xattr budget": (
        b"/a 0 100644 1 0 0 0 0.0 - - - user.a=" + b"v" * 40000 + b"\n",
        r"more than 32767 bytes",
    ),
    "dir link": (b"/a 0 @40755 1 0 0 0 0.0 / - -\n", r"line 2: MODE: Directories can't be hardlinked"),
    "link target": (
        b"/a 0 @100644 1 0 0 0 0.0 /gone - -\n",
        r"line 2: PAYLOAD: No target at /gone for hardlink",
    ),
    "link none": (b"/a 0 @100644 1 0 0 0 0.0 - - -\n", r"line 2: PAYLOAD: No target path for the hardlink"),
    "self link": (b"/a 0 @100644 1 0 0 0 0.0 /a - -\n", r"Self-referential hardlink /a"),
    "loop": (b"/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n", r"Hardlink loop"),
    "to dir": (
        b"/d 0 40755 1 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /d - -\n",
        r"Hardlink to the directory",
    ),
    "blank line": (b"\n", r"line 2: PATH: Invalid empty path"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_line_field_and_reason(case: str) -> None:
    body, message = REFUSALS[case]
    with pytest.raises(DumpFormatError, match=message):
        composefs_dump.parse(ROOT_LINE + body, source="x.dump")


@pytest.mark.parametrize(
    ("dump", "message"),
    [
        (b"/ 4096 100644 1 0 0 0 0.0 - - -\n", "Root must be a directory"),
        (b"/a 0 100644 1 0 0 0 0.0 - - -\n", "Root node not present"),
        (ROOT_LINE * 2, "Can't have multiple roots"),
        (b"", "No files in dump file"),
    ],
)
def test_refusals_about_the_root(dump: bytes, message: str) -> None:
    with pytest.raises(DumpFormatError, match=message):
        composefs_dump.parse(dump)


def test_strict_mode() -> None:
    lax = ROOT_LINE + b"/l 1 120777 1 0 0 5 0.0 target x -\n/z 0 100644 1 1 zz 0 0.0 - - -"
    described = composefs_dump.parse(lax)  # the GID quirk: read as 0 when the UID is not 0
    assert described.root.children is not None and described.root.children[b"z"].gid == 0
    for text, message in [
        (ROOT_LINE + b"/a 0 100644 1 0 0 5 0.0 - - -\n", "Non-zero devnum on non-device"),
        (ROOT_LINE + b"/l 7 120777 1 0 0 0 0.0 target - -\n", "Invalid symlink size 6, must match size 7"),
        (ROOT_LINE + b"/l 6 120777 1 0 0 0 0.0 target xxxxxx -\n", "Symlink cannot have content"),
        (ROOT_LINE + b"/z 0 100644 1 1 zz 0 0.0 - - -\n", "GID: Invalid integer zz"),
        (ROOT_LINE.rstrip(b"\n"), "Missing trailing newline"),
    ]:
        with pytest.raises(DumpFormatError, match=message):
            composefs_dump.parse(text, strict=True)


def test_cli_build_from_stdin_and_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    dump = ROOT_LINE + b"/f 100 100644 1 0 0 0 1.1 ab/cd - " + DIGEST.encode() + b"\n"
    image = tmp_path / "x.cfs"
    result = runner.invoke(
        app, ["composefs", "build", "--from-file", "--print-digest", "-", str(image)], input=dump
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip()) == 64
    assert image.read_bytes() == build(dump)
    dumped = runner.invoke(app, ["composefs", "dump", str(image)])
    assert dumped.exit_code == 0 and dumped.stdout_bytes.startswith(
        b"/ 4096 40755 2 0 0 0 1700000000.0 - - -\n"
    )
    refused = runner.invoke(
        app,
        ["composefs", "build", "--from-file", "--digest-store", str(tmp_path / "o"), "-", str(image)],
        input=dump,
    )
    assert isinstance(refused.exception, UsageError) and "a dump has none" in str(refused.exception)
    monkeypatch.setenv(composefs_dump.STRICT_ENV, "1")
    strict = runner.invoke(
        app, ["composefs", "build", "--from-file", "-", str(tmp_path / "y.cfs")], input=dump.rstrip()
    )
    assert isinstance(strict.exception, DumpFormatError) and "Missing trailing newline" in str(
        strict.exception
    )
    bad = tmp_path / "bad.cfs"
    bad.write_bytes(b"\0" * 8192)
    broken = runner.invoke(app, ["composefs", "dump", str(bad)])
    assert isinstance(broken.exception, ImageFormatError) and "no composefs magic" in str(broken.exception)
