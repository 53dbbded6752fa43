"""A diff between two real builds that differ by one package names exactly that package's files.

The shared debian-12-amd64 build is one side; the other is the same spec with one small leaf package
more (``tree``: only libc6, already in the root), built through the composefs stage only (one extra
mmdebstrap run, with the same cache, mirror state and SOURCE_DATE_EPOCH). Besides the package's own
files, only the package manager's bookkeeping (dpkg and apt state, logs, caches) may differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from diskci.formats import composefs_diff

PACKAGE = "tree"
BOOKKEEPING = ("/var/lib/dpkg/", "/var/lib/apt/", "/var/log/", "/var/cache/")

pytestmark = pytest.mark.slow
_stages = [s.strip() for s in os.environ.get("DISKCI_TEST_STAGES", "").split(",") if s.strip()]
if _stages and "composefs" not in _stages:
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason="DISKCI_TEST_STAGES leaves out composefs")]


def bookkeeping(path: str) -> bool:
    return path.startswith(BOOKKEEPING) or path == "/etc/ld.so.cache"


def canonical(path: str, listing: composefs_diff.Listing) -> str:
    """``path`` through a top-level relative symlink of the root (merged /usr: /bin → usr/bin)."""
    top, _, rest = path.partition("/")[2].partition("/")
    entry = listing.get("/" + top)
    if entry is not None and entry.type == "symlink" and entry.target and not entry.target.startswith("/"):
        return "/" + entry.target + ("/" + rest if rest else "")
    return path


def package_paths(rootfs_tar: Path, package: str) -> set[str]:
    """The paths dpkg installed for ``package`` (its ``.list`` in the root's dpkg database)."""
    with tarfile.open(rootfs_tar) as tf:
        member = next(
            m for m in tf if m.name.lstrip("./") == f"var/lib/dpkg/info/{package}.list" or
            m.name.lstrip("./") == f"var/lib/dpkg/info/{package}:amd64.list"
        )  # fmt: skip
        f = tf.extractfile(member)
        assert f is not None
        return {line for line in f.read().decode().splitlines() if line and line != "/."}


def test_one_package_more_is_exactly_that_packages_files(
    diskci: Callable[..., subprocess.CompletedProcess[str]],
    amd64_build: Path,
    platform_specs: dict[str, Path],
    test_cache: Path,
    source_date_epoch: int,
    tmp_path: Path,
) -> None:
    spec = yaml.safe_load(platform_specs["debian-12-amd64"].read_text())
    spec["packages"] = [*spec["packages"], PACKAGE]
    spec_file = tmp_path / "debian-12-amd64.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "build"
    built = diskci(
        "build", spec_file, "--arch", "amd64", "--out", out, "--stages", "composefs",
        "--cache", test_cache, "--source-date-epoch", str(source_date_epoch),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-6000:]
    old_image, new_image = amd64_build / "amd64" / "rootfs.cfs", out / "amd64" / "rootfs.cfs"

    proc = diskci("composefs", "diff", old_image, new_image, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["truncated"] is False
    by_kind: dict[str, set[str]] = {"added": set(), "removed": set(), "changed": set()}
    for entry in doc["entries"]:
        by_kind[entry["change"]].add(entry["path"])

    old, new = composefs_diff.read_listing(old_image), composefs_diff.read_listing(new_image)
    owned = {canonical(p, new) for p in package_paths(out / "amd64" / "rootfs.tar", PACKAGE)}
    expected = {p for p in owned if p in new and p not in old}  # the package's paths the old root lacked
    assert f"/usr/bin/{PACKAGE}" in expected
    assert {p for p in by_kind["added"] if p in owned or not bookkeeping(p)} == expected
    others = by_kind["changed"] | by_kind["removed"]
    unexplained = {p for p in others if not bookkeeping(p) and p not in owned}
    assert not unexplained, f"changed beyond {PACKAGE} and dpkg's bookkeeping: {sorted(unexplained)}"
    tool = next(e for e in doc["entries"] if e["path"] == f"/usr/bin/{PACKAGE}")
    assert tool["new"]["type"] == "file" and tool["new"]["mode"] == "0755"
    assert tool["new"]["content"].startswith("fsverity:")

    shown = diskci("composefs", "diff", old_image, new_image, "--under", "/usr/bin", "--exit-code")
    assert shown.returncode == 1 and f"+ /usr/bin/{PACKAGE}  file 0755 0:0" in shown.stdout
