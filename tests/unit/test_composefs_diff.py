"""Diffs of composefs images: a path is added, removed or changed exactly when the trees say so (file
contents compared as bytes, against the digests the images carry), the listing packs and unpacks to
itself, and ``diskci composefs diff`` prints it for people and as JSON."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_composefs_dump import trees
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.formats import composefs, composefs_diff, composefs_reader, fstree
from diskci.formats.composefs_diff import ListingFormatError
from diskci.formats.composefs_reader import ImageFormatError
from diskci.formats.fstree import Node
from host_tools import needs_tool


def image_of(tree: Node) -> bytes:
    out = io.BytesIO()
    composefs.write(tree, out)
    return out.getvalue()


def listing_of(tree: Node) -> composefs_diff.Listing:
    return composefs_diff.listing(composefs_reader.read(image_of(tree)))


# --- trees described by their paths, for an oracle independent of digests --------------------------

_NAMES = st.sampled_from([b"a", b"b", b"etc", b"x y", b"caf\xc3\xa9", b"bad\xff", b"back\\slash", b"n\nl"])
_XATTRS = st.dictionaries(
    st.sampled_from([b"user.a", b"security.capability"]), st.binary(max_size=6), max_size=2
)
_LEAVES = st.one_of(
    st.tuples(st.just("file"), st.sampled_from([0o644, 0o755]), st.sampled_from([0, 1000]),
              st.binary(max_size=130), _XATTRS),
    st.tuples(st.just("link"), st.just(0o777), st.just(0), st.sampled_from([b"t", b"../u", b"caf\xc3\xa9"]),
              st.just({})),
    st.tuples(st.just("dev"), st.just(0o600), st.just(0), st.sampled_from([b"1", b"2"]), st.just({})),
    st.tuples(st.just("dir"), st.sampled_from([0o755, 0o700]), st.sampled_from([0, 5]), st.just(b""),
              _XATTRS),
)  # fmt: skip
Spec = dict[tuple[bytes, ...], tuple[str, int, int, bytes, dict[bytes, bytes]]]
_SPECS = st.dictionaries(st.lists(_NAMES, min_size=1, max_size=3).map(tuple), _LEAVES, max_size=14)


def tree_of(spec: Spec, mtime: int) -> Node:
    """The tree of ``spec`` (parents made as 0755 directories; a path under a non-directory is dropped)."""
    root = Node.directory(0o755, mtime=mtime)
    for parts in sorted(spec):
        node: Node | None = root
        for p in parts[:-1]:
            if node is None or node.children is None:
                break
            child = node.children.get(p)
            node = child if child is not None else node.add(p, Node.directory(0o755, mtime=mtime))
        if node is None or node.children is None or parts[-1] in node.children:
            continue  # under a file, or a directory made for an earlier path
        kind, mode, uid, value, xattrs = spec[parts]
        if kind == "file":
            leaf = Node.file(value, mode, uid=uid, xattrs=xattrs, mtime=mtime)
        elif kind == "link":
            leaf = Node.symlink(value, mtime=mtime)
        elif kind == "dev":
            leaf = Node(mode=stat.S_IFCHR | mode, rdev=os.makedev(4, int(value)), mtime=mtime)
        else:
            leaf = Node.directory(mode, uid=uid, xattrs=xattrs, mtime=mtime)
        node.add(parts[-1], leaf)
    return root


def plain(tree: Node) -> dict[str, tuple[Any, ...]]:
    """Path → what the diff compares, from the tree itself (contents as bytes, not digests)."""
    return {
        "/" + composefs_diff.show(path): (
            node.kind, node.mode & 0o7777, node.uid, node.gid, node.read() if node.is_reg else None,
            node.target, node.rdev, dict(sorted(node.xattrs.items())),
        )
        for path, node in fstree.walk(tree)
    }  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=_SPECS, patch=_SPECS, drop=st.sets(st.integers(0, 13), max_size=5))
def test_added_removed_and_changed_are_what_the_trees_say(a: Spec, patch: Spec, drop: set[int]) -> None:
    b = {k: v for i, (k, v) in enumerate(sorted(a.items())) if i not in drop} | patch
    tree_a, tree_b = tree_of(a, 1_700_000_000), tree_of(b, 1_800_000_000)  # mtimes differ: not compared
    old, new = plain(tree_a), plain(tree_b)
    result = composefs_diff.diff(listing_of(tree_a), listing_of(tree_b))
    by_kind: dict[str, set[str]] = {"added": set(), "removed": set(), "changed": set()}
    for change in result.changes:
        by_kind[change.change].add(change.path)
    assert by_kind["added"] == new.keys() - old.keys()
    assert by_kind["removed"] == old.keys() - new.keys()
    assert by_kind["changed"] == {p for p in old.keys() & new.keys() if old[p] != new[p]}
    assert result.counts["unchanged"] == len(old.keys() & new.keys()) - len(by_kind["changed"])
    paths = [c.path for c in result.changes]
    assert paths == sorted(paths, key=composefs_diff.tree_order)
    back = composefs_diff.diff(listing_of(tree_b), listing_of(tree_a))  # the other way round: mirrored
    assert {c.path for c in back.changes if c.change == "removed"} == by_kind["added"]
    assert {(c.path, c.fields) for c in back.changes if c.change == "changed"} == {
        (c.path, c.fields) for c in result.changes if c.change == "changed"
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees())
def test_an_image_has_no_diff_with_itself_and_its_listing_packs_to_itself(tree: Node) -> None:
    entries = listing_of(tree)
    assert not composefs_diff.diff(entries, entries)
    assert composefs_diff.diff(entries, entries).counts["unchanged"] == len(entries)
    assert composefs_diff.decode(composefs_diff.encode(entries)) == entries


def sample() -> tuple[Node, Node]:
    def tree(variant: bool) -> Node:
        root = Node.directory()
        etc = root.add(b"etc", Node.directory())
        etc.add(b"hosts", Node.file(b"127.0.0.1 localhost\n", 0o755 if variant else 0o644))
        etc.add(b"motd", Node.file(b"hello\n", uid=1000 if variant else 0))
        usr = root.add(b"usr", Node.directory())
        usr.add(b"tool", Node.file(bytes(range(256)) * (3 if variant else 2)))
        caps = {b"security.capability": b"\x01\x02"} if variant else {}
        usr.add(b"ping", Node.file(b"p" * 100, xattrs=caps))
        usr.add(b"link", Node.symlink(b"tool" if variant else b"ping"))
        if variant:
            root.add(b"new", Node.directory()).add(b"file", Node.file(b""))
        else:
            root.add(b"old", Node(mode=stat.S_IFBLK | 0o660, rdev=os.makedev(8, 1)))
        return root

    return tree(False), tree(True)


def test_fields_of_each_change() -> None:
    a, b = sample()
    result = composefs_diff.diff(listing_of(a), listing_of(b))
    fields = {c.path: (c.change, c.fields) for c in result.changes}
    assert fields == {
        "/etc/hosts": ("changed", ("mode",)),
        "/etc/motd": ("changed", ("uid",)),
        "/new": ("added", ()),
        "/new/file": ("added", ()),
        "/old": ("removed", ()),
        "/usr/link": ("changed", ("target",)),
        "/usr/ping": ("changed", ("xattrs",)),
        "/usr/tool": ("changed", ("size", "content")),
    }
    tool = next(c for c in result.changes if c.path == "/usr/tool")
    assert tool.old is not None and tool.old.content is not None and tool.old.content.startswith("fsverity:")
    assert result.counts == {"added": 2, "removed": 1, "changed": 5, "unchanged": 3}
    assert [c.path for c in composefs_diff.diff(listing_of(a), listing_of(b), under="/etc/").changes] == [
        "/etc/hosts",
        "/etc/motd",
    ]
    page = result.to_json(offset=2, limit=3)
    assert [e["path"] for e in page["entries"]] == ["/new", "/new/file", "/old"]
    assert (page["truncated"], page["next_offset"]) == (True, 5)
    assert result.to_json(offset=5)["truncated"] is False
    lines = {c.path: composefs_diff.describe_change(c) for c in result.changes}
    assert lines["/usr/ping"] == "xattrs +security.capability"
    assert lines["/old"] == "block 0660 0:0 device 8:1"


def test_names_that_are_not_plain_text_are_escaped_unambiguously() -> None:
    assert composefs_diff.show(b"caf\xc3\xa9 x") == "café x"
    assert composefs_diff.show(b"bad\xff") == "bad\\xff"
    assert composefs_diff.show(b"a\\b") == "a\\\\b"
    assert composefs_diff.show(b"a\nb") == "a\\nb"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"nope", "no magic line"),
        (b"diskci-composefs-listing\n" + b"\xfd7zXZ\0garbage", "broken compression"),
        (composefs_diff.encode({})[:-8], "truncated"),
    ],
)
def test_a_broken_listing_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ListingFormatError, match=message):
        composefs_diff.decode(data)


def test_a_listing_of_another_format_is_refused() -> None:
    import lzma

    data = b"diskci-composefs-listing\n" + lzma.compress(json.dumps({"format": 9, "entries": []}).encode())
    with pytest.raises(ListingFormatError, match="format 9"):
        composefs_diff.decode(data)
    row = ["/", "socket?", "0755", 0, 0, None, None, None, None, None]
    bad_row = json.dumps({"format": 1, "entries": [row]})
    with pytest.raises(ListingFormatError, match="entry 0 is malformed"):
        composefs_diff.decode(b"diskci-composefs-listing\n" + lzma.compress(bad_row.encode()))


def test_cli_diff_for_people_and_as_json(tmp_path: Path) -> None:
    a, b = sample()
    (tmp_path / "a.cfs").write_bytes(image_of(a))
    (tmp_path / "b.cfs").write_bytes(image_of(b))
    runner = CliRunner()
    shown = runner.invoke(app, ["composefs", "diff", str(tmp_path / "a.cfs"), str(tmp_path / "b.cfs")])
    assert shown.exit_code == 0, shown.output
    assert "~ /etc/hosts  mode 0644 → 0755" in shown.output
    assert "+ /new/file  file 0644 0:0 0 bytes" in shown.output
    assert "- /old  block 0660 0:0 device 8:1" in shown.output
    assert "2 added, 1 removed, 5 changed, 3 unchanged" in shown.output
    as_json = runner.invoke(
        app, ["composefs", "diff", str(tmp_path / "a.cfs"), str(tmp_path / "b.cfs"), "--json", "--exit-code"]
    )
    assert as_json.exit_code == 1  # --exit-code: they differ
    doc = json.loads(as_json.output)
    assert doc["counts"] == {"added": 2, "removed": 1, "changed": 5, "unchanged": 3}
    assert doc["truncated"] is False and doc["next_offset"] is None
    hosts = doc["entries"][0]
    assert hosts["path"] == "/etc/hosts" and hosts["fields"] == ["mode"]
    assert set(hosts["old"]) == set(composefs_diff.FIELDS)
    same = runner.invoke(
        app, ["composefs", "diff", str(tmp_path / "a.cfs"), str(tmp_path / "a.cfs"), "--exit-code"]
    )
    assert same.exit_code == 0 and "0 added, 0 removed, 0 changed, 9 unchanged" in same.output
    (tmp_path / "bad.cfs").write_bytes(b"\0" * 8192)
    broken = runner.invoke(app, ["composefs", "diff", str(tmp_path / "a.cfs"), str(tmp_path / "bad.cfs")])
    assert isinstance(broken.exception, ImageFormatError) and "no composefs magic" in str(broken.exception)


@needs_tool("mkcomposefs", "make setup builds it on Debian 12; Debian 13: apt-get install composefs")
def test_no_diff_between_diskci_and_mkcomposefs_images_of_one_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "small").write_bytes(b"tiny\n")
    (src / "etc" / "big").write_bytes(os.urandom(100_000))
    os.symlink("small", src / "etc" / "link")
    ours = tmp_path / "ours.cfs"
    composefs.build(src, ours)
    theirs = tmp_path / "theirs.cfs"
    subprocess.run([shutil.which("mkcomposefs") or "mkcomposefs", str(src), str(theirs)], check=True)
    result = composefs_diff.diff(composefs_diff.read_listing(ours), composefs_diff.read_listing(theirs))
    assert not result and result.counts["unchanged"] == 5
