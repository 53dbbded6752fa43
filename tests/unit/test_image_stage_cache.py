"""Every stage cached by its inputs, and the stages run concurrently: with fake stages.

- a stage's key changes exactly when something it reads changes (an artifact, a spec field, a tool, the
  epoch, its code), and only the stages that read a changed kernel command line rerun;
- a hit restores the same bytes and the same build.json records as running the stage;
- a damaged entry is detected, removed and rebuilt, never used;
- two builds sharing one cache at once both succeed with identical artifacts, each key built once;
- the stages run concurrently but never before what they need; a failure stops new stages.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from diskci.errors import UsageError
from diskci.image import cache as cache_mod
from diskci.image import pipeline, stagekey
from diskci.image.cache import Cache
from diskci.image.pipeline import STAGES, BuildContext, Stage, run_build
from diskci.manifest import BuildManifest
from diskci.spec import Architecture, parse_spec

ROOT = Path(__file__).resolve().parents[2]
RUNS: list[str] = []
_runs_lock = threading.Lock()
ACTIVE: dict[str, int] = {"now": 0, "peak": 0}
DELAY = {"value": 0.0}


def _ran(name: str) -> None:
    with _runs_lock:
        RUNS.append(name)


def _busy() -> None:
    """Hold the stage a moment, counting how many stages are inside at once."""
    with _runs_lock:
        ACTIVE["now"] += 1
        ACTIVE["peak"] = max(ACTIVE["peak"], ACTIVE["now"])
    time.sleep(DELAY["value"])
    with _runs_lock:
        ACTIVE["now"] -= 1


def base_stage(ctx: BuildContext) -> None:
    """The root: a tarball standing for rootfs.tar, from the spec's packages."""
    _ran("base")
    dest = ctx.arch_dir / "base.tar"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(" ".join(ctx.spec.packages) + f" {ctx.source_date_epoch}\n")
    ctx.add_artifact(dest, "application/x-tar")


def tree_stage(ctx: BuildContext) -> None:
    """A directory output (like composefs's object store) and a record field."""
    _ran("tree")
    _busy()
    src = (ctx.arch_dir / "base.tar").read_text()
    objects = ctx.arch_dir / "objects"
    (objects / "ab").mkdir(parents=True, exist_ok=True)
    (objects / "ab" / "cdef").write_text(src.upper())
    (objects / "ab" / "cdef").chmod(0o600)
    (ctx.arch_dir / "image.cfs").write_text(f"image of {src}")
    ctx.add_artifact(ctx.arch_dir / "image.cfs", "application/x-cfs", with_fsverity=True)
    ctx.record.composefs_digest = "c" * 64
    ctx.tool("fake-mkfs", "1.0")


def kern_stage(ctx: BuildContext) -> None:
    _ran("kern")
    _busy()
    (ctx.arch_dir / "kern").write_text("kernel from " + (ctx.arch_dir / "base.tar").read_text())
    ctx.record.kernel_version = "6.1.0-fake"
    ctx.add_artifact(ctx.arch_dir / "kern", "application/x-kernel")


def boot_stage(ctx: BuildContext) -> None:
    """Embeds the kernel command line, like ipxe/raw/iso."""
    _ran("boot")
    kern = ctx.record.artifact("kern")
    (ctx.arch_dir / "boot.txt").write_text(f"kernel {kern.sha256} {ctx.spec.cmdline_for(ctx.arch)}\n")
    ctx.add_artifact(ctx.arch_dir / "boot.txt", "text/plain")
    ctx.tool("fake-boot", "2.0")


def broken_stage(ctx: BuildContext) -> None:
    _ran("broken")
    raise UsageError("broken stage")


FAKE = (
    Stage("base", f"{__name__}:base_stage", (), outputs=("base.tar",), spec_fields=("packages",)),
    Stage("tree", f"{__name__}:tree_stage", ("base",), reads=("base.tar",),
          outputs=("image.cfs", "objects"), sets=("composefs_digest",)),
    Stage("kern", f"{__name__}:kern_stage", ("base",), reads=("base.tar",), outputs=("kern",),
          sets=("kernel_version",)),
    Stage("boot", f"{__name__}:boot_stage", ("kern",), reads=("kern",), spec_fields=("cmdline",),
          outputs=("boot.txt",)),
)  # fmt: skip


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    RUNS.clear()
    ACTIVE.update(now=0, peak=0)
    DELAY["value"] = 0.0
    monkeypatch.setattr(pipeline, "STAGES", FAKE)


def write_spec(tmp_path: Path, name: str = "s.yaml", **change: Any) -> Path:
    data = yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text()) | change
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def build(spec: Path, out: Path, cache: Path, **kw: Any) -> BuildManifest:
    return run_build(spec, None, out, cache, 42, None, **kw)


def tree_bytes(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "build.json"
    }


def records(manifest: BuildManifest) -> dict[str, Any]:
    """build.json without the cache hit/miss flags (which say how, not what)."""
    data = json.loads(manifest.dumps())
    for arch in data["architectures"].values():
        arch.pop("cache")
    return data


# --- keys ---------------------------------------------------------------------------------------


def key_of(stage: Stage, **change: Any) -> str:
    spec = parse_spec(yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text()))
    args: dict[str, Any] = {
        "stage": stage.name,
        "module": stage.module,
        "arch": Architecture.amd64,
        "source_date_epoch": 1,
        "spec": spec,
        "spec_fields": stage.spec_fields,
        "reads": {n: "0" * 64 for n in stage.reads},
        "tools": stage.tools,
    }
    args.update(change)
    return cache_mod.canonical_digest(stagekey.stage_key_inputs(**args))


def test_a_stage_key_follows_exactly_what_the_stage_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = next(s for s in STAGES if s.name == "raw")
    data = yaml.safe_load((ROOT / "platforms" / "debian-12-amd64.yaml").read_text())
    base = key_of(raw)
    assert key_of(raw) == base
    # what raw reads
    assert key_of(raw, reads={n: "1" * 64 for n in raw.reads}) != base
    assert key_of(raw, source_date_epoch=2) != base
    assert key_of(raw, arch=Architecture.arm64) != base
    assert key_of(raw, spec=parse_spec(data | {"kernel_cmdline": "console=ttyS0"})) != base
    assert key_of(raw, spec=parse_spec(data | {"version": "9.9.9"})) != base
    monkeypatch.setitem(stagekey._tool_versions, "sfdisk", "sfdisk from util-linux 9.99")
    assert key_of(raw) != base
    monkeypatch.undo()
    # what it does not read
    assert key_of(raw, spec=parse_spec(data | {"hostname": "other"})) == base
    assert key_of(raw, spec=parse_spec(data | {"registry_repository": "x/y"})) == base
    # its code: another module's source is another key
    assert key_of(raw, module="diskci.image.artifacts.iso") != base


def test_the_declarations_put_the_command_line_only_where_it_is_embedded() -> None:
    reads_cmdline = sorted(s.name for s in STAGES if "cmdline" in s.spec_fields)
    assert reads_cmdline == ["ipxe", "iso", "raw", "uki"]
    for st in STAGES:
        assert st.outputs, f"{st.name} declares no outputs: it would never be cached"
        assert all(n in pipeline.STAGE_NAMES for n in st.needs)
        assert set(st.tools) <= set(stagekey.TOOL_VERSION_ARGV), st.name


def test_code_digest_covers_imported_modules_and_data_files() -> None:
    digest = stagekey.code_digest("diskci.image.initramfs.builder")
    assert len(digest) == 64 and digest == stagekey.code_digest("diskci.image.initramfs.builder")
    closure = {n for n in stagekey._imports if n.startswith("diskci.")}
    assert {"diskci.formats.cpio", "diskci.image.artifacts.kernel"} <= closure


# --- hits, misses, damage -----------------------------------------------------------------------


def test_a_rebuild_with_nothing_changed_hits_every_stage_with_identical_results(
    tmp_path: Path, fake: None
) -> None:
    spec = write_spec(tmp_path)
    cold = build(spec, tmp_path / "a", tmp_path / "cache")
    assert sorted(RUNS) == ["base", "boot", "kern", "tree"]
    RUNS.clear()
    warm = build(spec, tmp_path / "b", tmp_path / "cache")
    assert RUNS == []
    assert all(info["hit"] for info in warm.arch("amd64").cache.values())
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert records(cold) == records(warm)
    assert records(warm) == records(BuildManifest.load(tmp_path / "b"))
    assert warm.arch("amd64").kernel_version == "6.1.0-fake"
    assert warm.tools["fake-mkfs"] == "1.0" and warm.tools["fake-boot"] == "2.0"


def test_a_changed_command_line_reruns_only_what_embeds_it(tmp_path: Path, fake: None) -> None:
    build(write_spec(tmp_path), tmp_path / "a", tmp_path / "cache")
    RUNS.clear()
    changed = build(write_spec(tmp_path, "c.yaml", kernel_cmdline="console=ttyS0 debug"), tmp_path / "b",
                    tmp_path / "cache")  # fmt: skip
    assert RUNS == ["boot"]
    assert "debug" in (tmp_path / "b" / "amd64" / "boot.txt").read_text()
    assert changed.arch("amd64").cache["boot"]["hit"] is False
    RUNS.clear()
    build(write_spec(tmp_path, "p.yaml", packages=["busybox-static"]), tmp_path / "c", tmp_path / "cache")
    assert sorted(RUNS) == ["base", "boot", "kern", "tree"]


def test_a_damaged_entry_is_detected_removed_and_rebuilt(tmp_path: Path, fake: None) -> None:
    spec = write_spec(tmp_path)
    build(spec, tmp_path / "a", tmp_path / "cache")
    good = (tmp_path / "a" / "amd64" / "objects" / "ab" / "cdef").read_bytes()
    entry = Cache(tmp_path / "cache", "tree").lookup(
        BuildManifest.load(tmp_path / "a").arch("amd64").cache["tree"]["key"]
    )
    assert entry is not None
    # same size, other bytes, written in place (the entry shares its inode with build a's file)
    stored = entry.file("objects") / "ab" / "cdef"
    stored.write_bytes(bytes(b ^ 0x20 for b in good))
    RUNS.clear()
    again = build(spec, tmp_path / "b", tmp_path / "cache")
    assert RUNS == ["tree"]
    assert again.arch("amd64").cache["tree"]["hit"] is False
    assert (tmp_path / "b" / "amd64" / "objects" / "ab" / "cdef").read_bytes() == good
    # the rebuilt entry is whole again: the next build hits
    RUNS.clear()
    build(spec, tmp_path / "c", tmp_path / "cache")
    assert RUNS == []


def test_restore_verified_places_nothing_from_a_damaged_entry(tmp_path: Path) -> None:
    c = Cache(tmp_path / "cache", "s")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"good")
    entry = c.store("k", {"f": tmp_path / "src" / "f"}, {})
    entry.file("f").unlink()
    entry.file("f").write_bytes(b"evil")
    dest = tmp_path / "out" / "f"
    assert c.restore_verified(entry, {"f": dest}) is None
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert c.lookup("k") is None


def test_no_cache_rebuilds_and_refreshes_the_entries(tmp_path: Path, fake: None) -> None:
    spec = write_spec(tmp_path)
    build(spec, tmp_path / "a", tmp_path / "cache")
    RUNS.clear()
    fresh = build(spec, tmp_path / "b", tmp_path / "cache", use_cache=False)
    assert sorted(RUNS) == ["base", "boot", "kern", "tree"]
    assert not any(info["hit"] for info in fresh.arch("amd64").cache.values())
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


# --- concurrency --------------------------------------------------------------------------------


def test_two_builds_sharing_one_cache_at_once_both_succeed_identically(tmp_path: Path, fake: None) -> None:
    DELAY["value"] = 0.2
    spec = write_spec(tmp_path)
    results: dict[str, BuildManifest] = {}
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            results[name] = build(spec, tmp_path / name, tmp_path / "cache")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert records(results["a"]) == records(results["b"])
    # each key was built once: the second build of a key waited for the first, then hit
    assert sorted(RUNS) == ["base", "boot", "kern", "tree"]
    for stage in ("base", "tree", "kern", "boot"):
        hits = [results[n].arch("amd64").cache[stage]["hit"] for n in ("a", "b")]
        assert sorted(hits) == [False, True], stage
    # no temporary or half-written entries are left
    assert not [p for p in (tmp_path / "cache").rglob(".*") if p.is_dir()]


def test_stages_run_concurrently_after_what_they_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: None
) -> None:
    DELAY["value"] = 0.3
    order: list[tuple[str, str]] = []
    real = pipeline.run_stage

    def traced(ctx: BuildContext, st: Stage) -> None:
        with _runs_lock:
            order.append(("start", st.name))
        real(ctx, st)
        with _runs_lock:
            order.append(("end", st.name))

    monkeypatch.setattr(pipeline, "run_stage", traced)
    build(write_spec(tmp_path), tmp_path / "a", tmp_path / "cache", jobs=2)
    assert ACTIVE["peak"] == 2  # tree and kern at once
    for st in FAKE:
        for need in st.needs:
            assert order.index(("end", need)) < order.index(("start", st.name)), (need, st.name)


def test_one_job_runs_the_stages_in_order(tmp_path: Path, fake: None) -> None:
    build(write_spec(tmp_path), tmp_path / "a", tmp_path / "cache", jobs=1)
    assert RUNS == ["base", "tree", "kern", "boot"]
    assert ACTIVE["peak"] == 1


def test_a_failure_stops_new_stages_and_build_json_lists_what_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: None
) -> None:
    DELAY["value"] = 0.2
    monkeypatch.setattr(
        pipeline,
        "STAGES",
        (
            *FAKE[:2],
            Stage("broken", f"{__name__}:broken_stage", ("base",)),
            Stage("late", f"{__name__}:boot_stage", ("broken",)),
        ),
    )
    with pytest.raises(UsageError, match="broken stage"):
        build(write_spec(tmp_path), tmp_path / "a", tmp_path / "cache", jobs=2)
    assert "boot" not in RUNS  # never started
    saved = BuildManifest.load(tmp_path / "a")
    names = [a.name for a in saved.arch("amd64").artifacts]
    assert names == ["base.tar", "image.cfs"]  # the running stage (tree) finished and was saved
    assert all((tmp_path / "a" / a.path).is_file() for a in saved.arch("amd64").artifacts)


def test_build_json_lists_artifacts_in_stage_order_whatever_the_timing(tmp_path: Path, fake: None) -> None:
    DELAY["value"] = 0.1
    m = build(write_spec(tmp_path), tmp_path / "a", tmp_path / "cache", jobs=4)
    assert [a.name for a in m.arch("amd64").artifacts] == ["base.tar", "image.cfs", "kern", "boot.txt"]
    assert list(m.arch("amd64").cache) == ["base", "tree", "kern", "boot"]


# --- LRU ----------------------------------------------------------------------------------------


def _entry(root: Path, stage: str, key: str, size: int, used: float) -> None:
    src = root.parent / f"src-{key}"
    src.write_bytes(b"x" * size)
    e = Cache(root, stage).store(key, {"f": src}, {})
    os.utime(e.path, (used, used))


def test_prune_removes_least_recently_used_first(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    now = time.time()
    _entry(root, "raw", "old", 100, now - 300)
    _entry(root, "iso", "mid", 100, now - 200)
    _entry(root, "raw", "new", 100, now - 100)
    assert cache_mod.stats(root)["bytes"] == 300
    # a hit marks an entry used: "old" becomes the newest
    Cache(root, "raw").touch("old")
    result = cache_mod.prune(root, 150)
    assert [r["key"] for r in result["removed"]] == ["mid", "new"]
    assert result["bytes"] == 100
    assert Cache(root, "raw").lookup("old") is not None and Cache(root, "iso").lookup("mid") is None
    assert cache_mod.stats(root)["stages"] == {"raw": {"entries": 1, "bytes": 100}}


def test_prune_keeps_an_entry_in_use(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _entry(root, "raw", "busy", 100, time.time() - 100)
    _entry(root, "raw", "idle", 100, time.time())
    with Cache(root, "raw").lock("busy"):
        result = cache_mod.prune(root, 0)
    assert [r["key"] for r in result["removed"]] == ["idle"]
    assert Cache(root, "raw").lookup("busy") is not None


def test_parse_size() -> None:
    assert cache_mod.parse_size("20G") == 20 << 30
    assert cache_mod.parse_size("512MiB") == 512 << 20
    assert cache_mod.parse_size("1000") == 1000
    with pytest.raises(UsageError, match="not a size"):
        cache_mod.parse_size("lots")


def test_a_large_tree_is_stored_and_verified_file_by_file(tmp_path: Path) -> None:
    src = tmp_path / "objects"
    for i in range(200):
        (src / f"{i % 16:02x}").mkdir(parents=True, exist_ok=True)
        (src / f"{i % 16:02x}" / f"{i:04d}").write_bytes(f"object {i}".encode() * 100)
    c = Cache(tmp_path / "cache", "composefs")
    entry = c.store("k", {"objects": src}, {})
    good = tmp_path / "good" / "objects"
    assert c.restore_verified(entry, {"objects": good}) == {}
    assert tree_bytes(good) == tree_bytes(src)
    victim = entry.file("objects") / "07" / "0199"
    victim.write_bytes(victim.read_bytes().upper())  # in place: every hard link sees it
    bad = tmp_path / "bad" / "objects"
    assert c.restore_verified(entry, {"objects": bad}) is None
    assert not bad.exists() and c.lookup("k") is None
