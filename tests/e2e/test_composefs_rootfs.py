"""Stage 2 on the real Stage-1 debian-12-amd64 root filesystem (the shared e2e build)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from diskci.formats import composefs, fstree
from diskci.formats.fsverity import digest_file
from diskci.manifest import BuildManifest
from diskci.mediatypes import COMPOSEFS_IMAGE
from mount_support import composefs_mounted, needs_mount

pytestmark = pytest.mark.slow

_stages = [s.strip() for s in os.environ.get("DISKCI_TEST_STAGES", "").split(",") if s.strip()]
if _stages and "composefs" not in _stages:
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason="DISKCI_TEST_STAGES leaves out composefs")]


@pytest.fixture(scope="module")
def arch_dir(amd64_build: Path) -> Path:
    d = amd64_build / "amd64"
    assert (d / "rootfs.cfs").is_file(), "the shared build did not run the composefs stage"
    return d


def test_image_passes_fsck(arch_dir: Path) -> None:
    fsck = shutil.which("fsck.erofs")
    assert fsck is not None, "fsck.erofs (erofs-utils) is a dependency of diskci's test suite"
    proc = subprocess.run([fsck, str(arch_dir / "rootfs.cfs")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_json_records_the_composefs_digest(amd64_build: Path, arch_dir: Path) -> None:
    record = BuildManifest.load(amd64_build).architectures["amd64"]
    art = record.artifact("rootfs.cfs")
    digest = digest_file(arch_dir / "rootfs.cfs").hex()
    assert art.media_type == COMPOSEFS_IMAGE
    assert art.fsverity == record.composefs_digest == digest
    assert art.size == (arch_dir / "rootfs.cfs").stat().st_size


def test_building_again_gives_identical_bytes(arch_dir: Path, tmp_path: Path) -> None:
    first = composefs.build(arch_dir / "rootfs.tar", tmp_path / "again.cfs")
    second = composefs.build(arch_dir / "rootfs.tar", tmp_path / "once-more.cfs")
    assert (tmp_path / "again.cfs").read_bytes() == (arch_dir / "rootfs.cfs").read_bytes()
    assert first.digest == second.digest == digest_file(arch_dir / "rootfs.cfs").hex()
    assert (tmp_path / "once-more.cfs").read_bytes() == (tmp_path / "again.cfs").read_bytes()


def test_object_store_holds_every_redirect(arch_dir: Path) -> None:
    tree, _, n_objects, _ = composefs.prepare_tree(fstree.from_tar(arch_dir / "rootfs.tar"))
    redirects = {
        n.xattrs[b"trusted.overlay.redirect"] for _, n in fstree.walk(tree) if n.is_reg and n.size > 64
    }
    stored = {
        b"/" + p.relative_to(arch_dir / "objects").as_posix().encode() for p in arch_dir.glob("objects/*/*")
    }
    assert redirects == stored and len(stored) == n_objects


@pytest.mark.root
@needs_mount("erofs", "overlay")
def test_mounted_tree_equals_the_tarball(arch_dir: Path, tmp_path: Path) -> None:
    want = fstree.describe(fstree.from_tar(arch_dir / "rootfs.tar"))
    with composefs_mounted(arch_dir / "rootfs.cfs", arch_dir / "objects", tmp_path) as merged:
        got = fstree.describe(fstree.from_directory(merged))
    assert len(want) > 10_000
    assert sorted(want) == sorted(got)
    assert {os.fsdecode(p): (want[p], got[p]) for p in want if want[p] != got[p]} == {}
