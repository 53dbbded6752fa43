"""The Stage-1 cache: the key follows every input; entries appear whole or not at all; a hit restores."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from diskci.image import cache as cache_mod
from diskci.image.cache import Cache, rootfs_key, rootfs_key_inputs
from diskci.image.pipeline import BuildContext
from diskci.image.rootfs import _restore
from diskci.manifest import BuildManifest
from diskci.spec import Architecture, PlatformSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def spec(**change: Any) -> PlatformSpec:
    data = yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text())
    data.update(change)
    return parse_spec(data)


BASE: dict[str, Any] = {
    "spec": spec(),
    "arch": Architecture.amd64,
    "mirror": "http://deb.debian.org/debian",
    "release": b"Origin: Debian\nSuite: stable\n",
    "mmdebstrap_version": "mmdebstrap 1.3.5",
    "source_date_epoch": 1764000000,
    "files": {},
    "command": ["mmdebstrap", "--variant=minbase"],
}


def key(**change: Any) -> str:
    return rootfs_key(**(BASE | change))


def test_key_is_stable_for_the_same_inputs() -> None:
    assert key() == key()
    assert key(spec=spec()) == key()
    assert len(key()) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"spec": spec(hostname="other")},
        {"spec": spec(packages=["busybox-static"])},
        {"arch": Architecture.arm64},
        {"mirror": "http://mirror.example/debian"},
        {"release": b"Origin: Debian\nSuite: stable\nDate: later\n"},
        {"mmdebstrap_version": "mmdebstrap 1.4.0"},
        {"source_date_epoch": 1764000001},
        {"files": {"motd": "0" * 64}},
        {"command": ["mmdebstrap", "--variant=minbase", "--customize-hook=true"]},
    ],
    ids=[
        "spec-hostname",
        "spec-packages",
        "arch",
        "mirror",
        "release",
        "mmdebstrap",
        "sde",
        "files",
        "command",
    ],
)
def test_key_changes_with_each_input(change: dict[str, Any]) -> None:
    assert key(**change) != key()


@pytest.mark.parametrize(
    "change",
    [
        {"version": "2026.12.0"},
        {"kernel_cmdline": "console=ttyS0 debug"},
        {"registry_repository": "ops/other"},
    ],
    ids=["version", "cmdline", "registry"],
)
def test_key_ignores_what_the_root_filesystem_does_not_read(change: dict[str, Any]) -> None:
    assert key(spec=spec(**change)) == key()


def test_key_inputs_record_release_digest_not_content() -> None:
    inputs = rootfs_key_inputs(**BASE)
    assert inputs["release_sha256"] == hashlib.sha256(BASE["release"]).hexdigest()
    assert inputs["architecture"] == "amd64" and inputs["source_date_epoch"] == 1764000000
    normalized = BASE["spec"].normalized()
    assert inputs["spec"] == {f: normalized[f] for f in cache_mod.ROOTFS_SPEC_FIELDS}


def make_outputs(tmp: Path, payload: bytes = b"tarball bytes") -> dict[str, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "rootfs.tar").write_bytes(payload)
    (tmp / "packages.json").write_text("[]\n")
    return {"rootfs.tar": tmp / "rootfs.tar", "packages.json": tmp / "packages.json"}


def test_store_lookup_restore_roundtrip(tmp_path: Path) -> None:
    c = Cache(tmp_path / "cache", "rootfs")
    assert c.lookup("k1") is None
    outputs = make_outputs(tmp_path / "out")
    entry = c.store("k1", outputs, {"why": "test"})
    found = c.lookup("k1")
    assert found is not None and found.meta["inputs"] == {"why": "test"}
    assert found.meta["files"]["rootfs.tar"]["size"] == len(b"tarball bytes")
    # same filesystem: the entry shares the output's inode (no copy of a large tarball)
    assert os.stat(entry.file("rootfs.tar")).st_ino == os.stat(outputs["rootfs.tar"]).st_ino
    dests = {
        "rootfs.tar": tmp_path / "again" / "rootfs.tar",
        "packages.json": tmp_path / "again" / "packages.json",
    }
    c.restore(found, dests)
    assert dests["rootfs.tar"].read_bytes() == b"tarball bytes"
    assert dests["packages.json"].read_text() == "[]\n"


def test_store_replaces_an_entry_whole(tmp_path: Path) -> None:
    c = Cache(tmp_path / "cache", "rootfs")
    c.store("k", make_outputs(tmp_path / "a", b"old"), {})
    c.store("k", make_outputs(tmp_path / "b", b"newer"), {})
    found = c.lookup("k")
    assert found is not None and found.file("rootfs.tar").read_bytes() == b"newer"
    assert sorted(p.name for p in c.dir.iterdir()) == ["k"]


def test_interrupted_store_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Cache(tmp_path / "cache", "rootfs")
    real_place = cache_mod.place
    calls = []

    def interrupted(src: Path, dest: Path) -> str:
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed ^C while the entry was being assembled
        return real_place(src, dest)

    monkeypatch.setattr(cache_mod, "place", interrupted)
    with pytest.raises(KeyboardInterrupt):
        c.store("k", make_outputs(tmp_path / "out"), {})
    assert c.lookup("k") is None
    assert list(c.dir.iterdir()) == []  # neither the entry nor its temporary directory


def test_incomplete_or_damaged_entries_are_not_hits(tmp_path: Path) -> None:
    c = Cache(tmp_path / "cache", "rootfs")
    (c.dir / "nometa").mkdir(parents=True)
    (c.dir / "nometa" / "rootfs.tar").write_bytes(b"x")
    assert c.lookup("nometa") is None
    entry = c.store("short", make_outputs(tmp_path / "out"), {})
    entry.file("rootfs.tar").unlink()
    entry.file("rootfs.tar").write_bytes(b"truncated")
    assert c.lookup("short") is None


def _ctx(tmp_path: Path) -> BuildContext:
    s = spec()
    manifest = BuildManifest(
        platform=s.name, version=s.version, spec_digest=s.digest(), spec=s.normalized(), source_date_epoch=1
    )
    return BuildContext(
        spec=s,
        spec_path=ROOT / "platforms" / "debian-12-amd64.yaml",
        arch=Architecture.amd64,
        build_dir=tmp_path / "build",
        cache_dir=tmp_path / "cache",
        source_date_epoch=1,
        use_cache=True,
        manifest=manifest,
    )


def test_a_hit_restores_and_records_artifacts(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    c = Cache(ctx.cache_dir, "rootfs")
    c.store("key", make_outputs(tmp_path / "made"), {})
    outputs = {"rootfs.tar": ctx.arch_dir / "rootfs.tar", "packages.json": ctx.arch_dir / "packages.json"}
    assert _restore(ctx, c, "key", outputs) is True
    assert outputs["rootfs.tar"].read_bytes() == b"tarball bytes"
    art = ctx.record.artifact("rootfs.tar")
    assert art.path == "amd64/rootfs.tar" and art.size == len(b"tarball bytes")


def test_a_damaged_hit_is_discarded(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    c = Cache(ctx.cache_dir, "rootfs")
    entry = c.store("key", make_outputs(tmp_path / "made"), {})
    # same size, different bytes: only the sha256 check can tell
    entry.file("rootfs.tar").unlink()
    entry.file("rootfs.tar").write_bytes(b"TARBALL BYTES")
    outputs = {"rootfs.tar": ctx.arch_dir / "rootfs.tar", "packages.json": ctx.arch_dir / "packages.json"}
    assert _restore(ctx, c, "key", outputs) is False
    assert c.lookup("key") is None
    assert not outputs["rootfs.tar"].exists()


def test_place_copies_across_filesystems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"data")

    def no_link(a: object, b: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert cache_mod.place(src, tmp_path / "dest") == "copy"
    assert (tmp_path / "dest").read_bytes() == b"data"
