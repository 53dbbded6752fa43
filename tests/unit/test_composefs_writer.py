"""composefs images (mkcomposefs 1.0.x semantics) from tarballs and directories, and Stage 2."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.errors import FormatError, UsageError
from diskci.formats import composefs, fstree
from diskci.formats.fstree import Node
from diskci.formats.fsverity import digest_file
from diskci.image import composefs_stage
from diskci.image.pipeline import BuildContext
from diskci.manifest import BuildManifest
from diskci.mediatypes import COMPOSEFS_IMAGE
from diskci.spec import Architecture, load_spec
from host_tools import needs_tool

REPO = Path(__file__).resolve().parents[2]
FSCK = shutil.which("fsck.erofs")
BIG = bytes(range(256)) * 40  # 10240 bytes: goes to the object store
SMALL = b"inline me\n"


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_700_000_000
    for key, value in kw.items():
        setattr(info, key, value)
    return info, data


def make_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def sample_entries() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        entry("./", tarfile.DIRTYPE),
        entry("./etc", tarfile.DIRTYPE, uid=0, gid=0),
        entry("./etc/big", data=BIG, uid=1000, gid=1001, pax_headers={"mtime": "1700000000.123456789"}),
        entry("./etc/small", data=SMALL, pax_headers={"SCHILY.xattr.user.note": "hello"}),
        entry("./etc/empty", data=b""),
        entry("./etc/hard", tarfile.LNKTYPE, linkname="./etc/big"),
        entry("./etc/sym", tarfile.SYMTYPE, linkname="big"),
        entry("./dev", tarfile.DIRTYPE),
        entry("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        entry("./dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
        entry("./dev/fifo", tarfile.FIFOTYPE),
        entry(
            "./opaque",
            tarfile.DIRTYPE,
            pax_headers={
                "SCHILY.xattr.trusted.overlay.opaque": "y",
                "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00",
            },
        ),
        entry("./opaque/copy", data=BIG),
    ]


def test_tar_reader_keeps_every_attribute(tmp_path: Path) -> None:
    tree = fstree.from_tar(make_tar(tmp_path / "t.tar", sample_entries()))
    etc = tree.children[b"etc"]  # type: ignore[index]
    big = etc.children[b"big"]  # type: ignore[index]
    assert big is etc.children[b"hard"]  # type: ignore[index]
    assert (big.uid, big.gid, big.mtime, big.mtime_nsec, big.size) == (
        1000,
        1001,
        1_700_000_000,
        123456789,
        len(BIG),
    )
    assert big.read() == BIG
    assert etc.children[b"small"].xattrs == {b"user.note": b"hello"}  # type: ignore[index]
    assert etc.children[b"sym"].target == b"big"  # type: ignore[index]
    null = tree.children[b"dev"].children[b"null"]  # type: ignore[index]
    assert stat.S_ISCHR(null.mode) and null.rdev == os.makedev(1, 3) and stat.S_IMODE(null.mode) == 0o666
    caps = tree.children[b"opaque"].xattrs[b"security.capability"]  # type: ignore[index]
    assert caps == bytes([1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0])


def test_composefs_tree_semantics(tmp_path: Path) -> None:
    tree = fstree.from_tar(make_tar(tmp_path / "t.tar", sample_entries()))
    store = tmp_path / "objects"
    out, version, n_objects, nbytes = composefs.prepare_tree(tree, digest_store=store)
    assert version == 0 and n_objects == 1 and nbytes == 2 * len(BIG)
    digest = digest_file(store / composefs.object_path(_digest_of(BIG, tmp_path)))
    big = out.children[b"etc"].children[b"big"]  # type: ignore[index]
    assert big.data is None and big.source is None and big.size == len(BIG)
    assert big.xattrs[b"trusted.overlay.metacopy"] == bytes([0, 36, 0, 1]) + digest
    assert big.xattrs[b"trusted.overlay.redirect"] == f"/{digest.hex()[:2]}/{digest.hex()[2:]}".encode()
    small = out.children[b"etc"].children[b"small"]  # type: ignore[index]
    assert small.data == SMALL and b"trusted.overlay.metacopy" not in small.xattrs
    opaque = out.children[b"opaque"]  # type: ignore[index]
    assert opaque.xattrs[b"trusted.overlay.overlay.opaque"] == b"y"
    assert b"trusted.overlay.opaque" not in opaque.xattrs
    assert out.xattrs[b"trusted.overlay.opaque"] == b"y"
    whiteouts = [n for n in out.children if len(n) == 2]  # type: ignore[union-attr]
    assert len(whiteouts) == 256
    wo = out.children[b"7f"]  # type: ignore[index]
    assert stat.S_ISCHR(wo.mode) and wo.rdev == 0 and wo.mtime == out.mtime
    assert sorted(p.name for p in store.iterdir()) == [digest.hex()[:2]]
    assert (store / composefs.object_path(digest)).read_bytes() == BIG
    assert stat.S_IMODE((store / composefs.object_path(digest)).stat().st_mode) == 0o644
    # the input tree is left as it was
    assert b"trusted.overlay.opaque" in tree.children[b"opaque"].xattrs  # type: ignore[index]
    assert b"00" not in tree.children  # type: ignore[operator]


def _digest_of(data: bytes, tmp_path: Path) -> bytes:
    path = tmp_path / "digest-input"
    path.write_bytes(data)
    return digest_file(path)


def test_whiteouts_epoch_and_versions(tmp_path: Path) -> None:
    entries = [*sample_entries(), entry("./etc/gone", tarfile.CHRTYPE, devmajor=0, devminor=0)]
    tree = fstree.from_tar(make_tar(tmp_path / "w.tar", entries))
    out, version, _, _ = composefs.prepare_tree(tree, use_epoch=True)
    assert version == 1
    gone = out.children[b"etc"].children[b"gone"]  # type: ignore[index]
    assert stat.S_ISREG(gone.mode) and gone.size == 0
    assert gone.xattrs == {b"trusted.overlay.overlay.whiteout": b"", b"user.overlay.whiteout": b""}
    etc = out.children[b"etc"]  # type: ignore[index]
    assert (
        etc.xattrs[b"trusted.overlay.overlay.opaque"] == b"x" and etc.xattrs[b"user.overlay.opaque"] == b"x"
    )
    assert all(n.mtime == 0 and n.mtime_nsec == 0 for _, n in fstree.walk(out))
    _, v0, _, _ = composefs.prepare_tree(tree, min_version=0, max_version=0)
    assert v0 == 0
    out0, _, _, _ = composefs.prepare_tree(tree, max_version=0)
    assert b"trusted.overlay.overlay.opaque" not in out0.children[b"etc"].xattrs  # type: ignore[index]
    with pytest.raises(UsageError):
        composefs.prepare_tree(tree, min_version=2)


@needs_tool("fsck.erofs", "Debian package 'erofs-utils'")
def test_image_passes_fsck_and_is_reproducible(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "t.tar", sample_entries())
    a = composefs.build(tar, tmp_path / "a.cfs", digest_store=tmp_path / "objects")
    b = composefs.build(tar, tmp_path / "b.cfs")
    assert (tmp_path / "a.cfs").read_bytes() == (tmp_path / "b.cfs").read_bytes()
    assert a.digest == b.digest == digest_file(tmp_path / "a.cfs").hex()
    raw = (tmp_path / "a.cfs").read_bytes()
    assert raw[:16] == bytes.fromhex("9a6278d0010000000000000000000000")
    assert raw[1024:1028] == bytes.fromhex("e2e1f5e0")
    proc = subprocess.run([str(FSCK), str(tmp_path / "a.cfs")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tarball_and_directory_give_the_same_image(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(BIG)
    (src / "a" / "small").write_bytes(SMALL)
    os.link(src / "a" / "b" / "f", src / "a" / "g")
    os.symlink("b/f", src / "a" / "s")
    for p in (src / "a" / "b" / "f", src / "a" / "small", src / "a" / "s", src / "a" / "b", src / "a", src):
        os.utime(p, ns=(0, 1_700_000_000_123_456_789), follow_symlinks=False)
    tar = tmp_path / "src.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(src.rglob("*")):
            info = tf.gettarinfo(path, "./" + path.relative_to(src).as_posix())
            info.pax_headers["mtime"] = (
                f"{path.lstat().st_mtime_ns // 10**9}.{path.lstat().st_mtime_ns % 10**9:09d}"
            )
            with open(path, "rb") if info.isreg() else io.BytesIO() as f:
                tf.addfile(info, f if info.isreg() else None)
        root = tf.gettarinfo(src, "./")
        root.pax_headers["mtime"] = "1700000000.123456789"
        tf.addfile(root)
    from_dir, from_tar = io.BytesIO(), io.BytesIO()
    composefs.write(fstree.from_directory(src), from_dir)
    composefs.write(fstree.from_tar(tar), from_tar)
    assert from_dir.getvalue() == from_tar.getvalue()


BAD_INPUTS = {
    "long-name": ([entry("./" + "n" * 256, data=b"x")], "longer than 255"),
    "absolute": ([entry("/etc/passwd", data=b"x")], "absolute"),
    "dotdot": ([entry("./a/../../escape", data=b"x")], "'..'"),
    "unsupported": ([entry("./multi", b"M", data=b"")], "unsupported entry type"),
    "duplicate": ([entry("./a", data=b"1"), entry("./a", data=b"2")], "duplicate"),
    "dangling-hardlink": ([entry("./h", tarfile.LNKTYPE, linkname="./nowhere")], "hardlink target"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_tarballs_name_the_entry_and_leave_nothing(tmp_path: Path, case: str) -> None:
    entries, message = BAD_INPUTS[case]
    tar = make_tar(tmp_path / "bad.tar", entries)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FormatError, match=message) as excinfo:
        composefs.build(tar, out / "image.cfs", digest_store=out / "objects")
    assert entries[-1][0].name in str(excinfo.value) or case == "dangling-hardlink"
    assert not (out / "image.cfs").exists()
    assert [p.name for p in out.iterdir() if p.name != "objects"] == []


@pytest.mark.parametrize("cut", ["in-data", "at-header"])
def test_truncated_tarball(tmp_path: Path, cut: str) -> None:
    tar = make_tar(tmp_path / "t.tar", [entry("./first", data=b"1" * 100), entry("./second", data=BIG * 4)])
    raw = tar.read_bytes()
    with tarfile.open(tar) as tf:
        second = tf.getmember("./second")
    # in the middle of a file's data, or right after it (no end-of-archive blocks)
    end = second.offset_data + 1000 if cut == "in-data" else second.offset_data + second.size
    tar.write_bytes(raw[:end])
    with pytest.raises(FormatError, match=r"second|ends early|truncated"):
        composefs.build(tar, tmp_path / "image.cfs")
    assert not (tmp_path / "image.cfs").exists()


def test_cli_build_and_print_digest(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "t.tar", sample_entries())
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["composefs", "build", str(tar), str(tmp_path / "x.cfs"), "--digest-store", str(tmp_path / "o"),
         "--print-digest"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == digest_file(tmp_path / "x.cfs").hex()
    result = runner.invoke(
        app, ["composefs", "build", str(tar), str(tmp_path / "y.cfs"), "--use-epoch", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["digest"] == digest_file(tmp_path / "y.cfs").hex() and data["objects"] == 1
    result = runner.invoke(
        app, ["composefs", "build", str(tar), str(tmp_path / "z.cfs"), "--max-version", "3"]
    )
    assert result.exit_code == 2


def test_stage_writes_image_objects_and_manifest(tmp_path: Path) -> None:
    spec_path = REPO / "platforms" / "debian-12-amd64.yaml"
    spec = load_spec(spec_path)
    manifest = BuildManifest(
        platform=spec.name,
        version=spec.version,
        spec_digest=spec.digest(),
        spec=spec.normalized(),
        source_date_epoch=1_700_000_000,
    )
    ctx = BuildContext(
        spec=spec,
        spec_path=spec_path,
        arch=Architecture.amd64,
        build_dir=tmp_path / "build",
        cache_dir=tmp_path / "cache",
        source_date_epoch=1_700_000_000,
        use_cache=True,
        manifest=manifest,
    )
    ctx.arch_dir.mkdir(parents=True)
    make_tar(ctx.arch_dir / "rootfs.tar", sample_entries())
    composefs_stage.stage(ctx)
    image = ctx.arch_dir / "rootfs.cfs"
    art = ctx.record.artifact("rootfs.cfs")
    assert art.media_type == COMPOSEFS_IMAGE and art.path == "amd64/rootfs.cfs"
    assert art.fsverity == ctx.record.composefs_digest == digest_file(image).hex()
    objects = sorted(p.relative_to(ctx.arch_dir / "objects") for p in (ctx.arch_dir / "objects").rglob("*"))
    assert len([p for p in objects if len(p.parts) == 2]) == 1
    assert stat.S_IMODE((ctx.arch_dir / "objects").stat().st_mode) == 0o755
    first = image.read_bytes()
    composefs_stage.stage(ctx)  # again: same bytes, no leftovers
    assert image.read_bytes() == first
    assert sorted(p.name for p in ctx.arch_dir.iterdir()) == ["objects", "rootfs.cfs", "rootfs.tar"]


def test_stage_without_rootfs_fails(tmp_path: Path) -> None:
    spec_path = REPO / "platforms" / "debian-12-amd64.yaml"
    spec = load_spec(spec_path)
    manifest = BuildManifest(
        platform=spec.name, version=spec.version, spec_digest=spec.digest(), spec=spec.normalized(),
        source_date_epoch=0,
    )  # fmt: skip
    ctx = BuildContext(spec, spec_path, Architecture.amd64, tmp_path, tmp_path / "c", 0, True, manifest)
    with pytest.raises(Exception, match="rootfs stage"):
        composefs_stage.stage(ctx)


def test_in_memory_tree(tmp_path: Path) -> None:
    root = Node.directory(mtime=5)
    root.add(
        b"f", Node(mode=stat.S_IFREG | 0o644, size=len(BIG), source=fstree.DataRef(str(tmp_path / "x"), 0, 0))
    )
    (tmp_path / "x").write_bytes(BIG)
    root.children[b"f"].source = fstree.DataRef(str(tmp_path / "x"), 0, len(BIG))  # type: ignore[index]
    result = composefs.write(root, io.BytesIO())
    assert result.objects == 1 and result.object_bytes == len(BIG) and result.inodes == 2 + 256


def test_directory_hardlinks_are_separate_inodes_tarball_ones_are_not(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(BIG)
    os.link(src / "a", src / "b")
    # as mkcomposefs 1.0.x reads a directory: root, a, b and the 256 root whiteouts
    assert composefs.build(src, tmp_path / "dir.cfs").inodes == 3 + 256
    entries = [entry("./a", data=BIG), entry("./b", tarfile.LNKTYPE, linkname="./a")]
    tar = make_tar(tmp_path / "t.tar", entries)
    assert composefs.build(tar, tmp_path / "tar.cfs").inodes == 2 + 256
