"""Two clean amd64 builds (``--no-cache``, same spec and SOURCE_DATE_EPOCH) give the same bytes.

Every artifact build.json lists, in every family, must have the same sha256 in both builds; a family
that does not is named in the failure (and is a defect to fix, see docs/disk-images.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from diskci.manifest import BuildManifest, sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "platforms" / "debian-12-amd64.yaml"
EPOCH = "1764000000"
# The family (build stage) of each artifact file name, to name what is not reproducible.
FAMILY = {
    "disk.raw": "raw",
    "disk.qcow2": "qcow2",
    "netboot.iso": "iso",
    "index.json": "oci",
    "vmlinuz": "kernel",
    "initramfs.img": "initramfs",
    "rootfs.img": "rootimage",
    "rootfs.tar": "rootfs",
}


def clean_build(out: Path, cache: Path) -> tuple[BuildManifest, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "diskci.cli.main", "build", str(SPEC), "--arch", "amd64"),
            *("--out", str(out), "--cache", str(cache), "--source-date-epoch", EPOCH, "--no-cache"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"diskci build failed:\n{proc.stderr[-4000:]}"
    return BuildManifest.load(out), time.monotonic() - start


def test_two_clean_builds_are_identical(tmp_path: Path) -> None:
    first, t1 = clean_build(tmp_path / "a", tmp_path / "cache-a")
    second, t2 = clean_build(tmp_path / "b", tmp_path / "cache-b")
    print(f"clean builds took {t1:.0f}s and {t2:.0f}s")

    a = {(x.path): x for x in first.all_artifacts()}
    b = {(x.path): x for x in second.all_artifacts()}
    assert a.keys() == b.keys(), f"the builds list different artifacts: {sorted(a.keys() ^ b.keys())}"
    for family in ("raw", "qcow2", "iso", "oci"):
        assert any(FAMILY.get(x.name) == family for x in a.values()), f"no {family} artifact in build.json"
    differing = sorted(p for p in a if a[p].sha256 != b[p].sha256)
    families = sorted({FAMILY.get(Path(p).name, Path(p).name) for p in differing})
    assert not differing, f"not reproducible: {', '.join(families)} ({', '.join(differing)})"

    # The OCI layout directory, every blob included, is the same file for file.
    oci_a, oci_b = tmp_path / "a" / "amd64" / "oci", tmp_path / "b" / "amd64" / "oci"
    files_a = sorted(p.relative_to(oci_a).as_posix() for p in oci_a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(oci_b).as_posix() for p in oci_b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert all(sha256_file(oci_a / f) == sha256_file(oci_b / f) for f in files_a)
