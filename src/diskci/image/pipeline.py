"""The stage graph of ``diskci build``: which stages run, in what order, for which architecture.

Each stage is a function ``stage(ctx: BuildContext) -> None`` in its own module; it reads its inputs
from ``ctx.arch_dir`` (and the cache), writes its outputs through ``atomic_path`` and records them
with ``ctx.add_artifact``. Stages are imported only when they run.

Every stage is cached by its inputs (``diskci.image.cache``): next to each Stage below stands what it
reads (artifacts, spec fields, tools) and what it writes, and its key is the digest of exactly that
(``diskci.image.stagekey``), so a hit restores the same bytes and the same build.json records and a
changed input reruns only the stages that read it. (The rootfs stage keys itself: its key needs the
mirror's Release file.)

The stages of one architecture run concurrently where ``needs`` allows, on up to ``jobs`` threads
(they mostly wait on subprocesses). build.json is saved under one lock after every finished stage,
listing what the finished stages made in the stages' order, so it is the same whatever the timing and
what it lists exists on disk. A failing stage stops new stages from starting; the running ones finish,
and the error propagates.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diskci.console import Step, Steps
from diskci.errors import BuildError, CacheError, UsageError
from diskci.image import cache as cache_store
from diskci.image.cache import Cache, canonical_digest
from diskci.image.stagekey import stage_key_inputs
from diskci.manifest import ArchBuild, Artifact, BuildManifest
from diskci.process import run
from diskci.spec import Architecture, PlatformSpec, load_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage and what its cache key covers (see ``diskci.image.stagekey``).

    ``reads``: artifacts (by name) of earlier stages whose bytes it reads; ``spec_fields``: the spec
    fields it uses (``cmdline``: the architecture's kernel command line); ``tools``: host tools whose
    versions shape its output; ``outputs``: what it writes in ``<arch>/`` (files or directories);
    ``sets``: the fields of its build.json record it sets besides its artifacts. A stage with no
    ``outputs`` is not cached; ``self_cached`` ones keep their own cache (rootfs).
    """

    name: str
    target: str  # "module:function"
    needs: tuple[str, ...] = ()
    description: str = ""
    reads: tuple[str, ...] = ()
    spec_fields: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    self_cached: bool = False

    @property
    def module(self) -> str:
        return self.target.split(":")[0]

    @property
    def cached(self) -> bool:
        return bool(self.outputs) and not self.self_cached

    def load(self) -> Callable[[BuildContext], None]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


_ROOT_FILES = ("vmlinuz", "initramfs.img", "rootfs.img", "rootfs.tar")  # what the bootable images read
_BOOT_SPEC = ("name", "version", "cmdline")
STAGES: tuple[Stage, ...] = (
    Stage("rootfs", "diskci.image.rootfs:stage", (), "root filesystem tarball (mmdebstrap)",
          outputs=("rootfs.tar", "packages.json", "sbom.spdx.json"), self_cached=True),
    Stage("composefs", "diskci.image.composefs_stage:stage", ("rootfs",), "composefs image + object store",
          reads=("rootfs.tar",), outputs=("rootfs.cfs", "objects"), sets=("composefs_digest",)),
    Stage("kernel", "diskci.image.artifacts.kernel:stage", ("rootfs",), "the kernel (vmlinuz)",
          reads=("rootfs.tar",), outputs=("vmlinuz",), sets=("kernel_version",)),
    Stage("rootimage", "diskci.image.artifacts.rootimage:stage", ("rootfs",), "compressed root image",
          reads=("rootfs.tar",), spec_fields=("name", "version", "exclude_paths", "include_paths"),
          tools=("mksquashfs", "tar"), outputs=("rootfs.img",)),
    Stage("initramfs", "diskci.image.initramfs.builder:stage", ("rootfs", "kernel"), "netboot initramfs",
          reads=("rootfs.tar",), tools=("zstd",), outputs=("initramfs.img",)),
    Stage("ipxe", "diskci.image.artifacts.ipxe:stage", ("kernel", "initramfs", "rootimage"), "boot.ipxe",
          reads=("rootfs.img",), spec_fields=_BOOT_SPEC, outputs=("boot.ipxe",)),
    Stage("uki", "diskci.image.artifacts.uki:stage", ("kernel", "initramfs", "rootimage"),
          "unified kernel image", reads=_ROOT_FILES, spec_fields=_BOOT_SPEC, tools=("systemd-boot-efi",),
          outputs=("uki.efi",)),
    Stage("raw", "diskci.image.artifacts.raw:stage", ("kernel", "initramfs", "rootimage"), "GPT disk",
          reads=_ROOT_FILES, spec_fields=_BOOT_SPEC,
          tools=("sfdisk", "dosfstools", "mtools", "systemd-boot-efi"), outputs=("disk.raw",)),
    Stage("qcow2", "diskci.image.artifacts.qcow2:stage", ("raw",), "qcow2 disk",
          reads=("disk.raw",), tools=("qemu-img",), outputs=("disk.qcow2",)),
    Stage("iso", "diskci.image.artifacts.iso:stage", ("kernel", "initramfs", "rootimage"), "hybrid ISO",
          reads=_ROOT_FILES, spec_fields=_BOOT_SPEC,
          tools=("xorriso", "grub-mkimage", "grub-pc-bin", "dosfstools", "mtools", "systemd-boot-efi"),
          outputs=("netboot.iso",)),
    Stage("oci", "diskci.image.artifacts.oci:stage", ("rootfs",), "OCI image layout",
          reads=("rootfs.tar",), spec_fields=("name", "version"), tools=("zstd",), outputs=("oci",)),
)  # fmt: skip
STAGE_NAMES = tuple(s.name for s in STAGES)


def resolve_stages(wanted: Sequence[str] | None) -> list[Stage]:
    """The stages to run for ``wanted`` (all by default), with everything they need, in order."""
    by_name = {s.name: s for s in STAGES}
    if not wanted:
        return list(STAGES)
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise UsageError(f"unknown stage(s): {', '.join(unknown)}; known: {', '.join(STAGE_NAMES)}")
    chosen: set[str] = set()

    def add(name: str) -> None:
        if name not in chosen:
            chosen.add(name)
            for dep in by_name[name].needs:
                add(dep)

    for w in wanted:
        add(w)
    return [s for s in STAGES if s.name in chosen]


@dataclass
class StageJournal:
    """What one stage recorded in build.json, in order (replayed to save build.json in stage order)."""

    artifacts: list[Artifact] = field(default_factory=list)
    tools: dict[str, str] = field(default_factory=dict)


@dataclass
class BuildContext:
    """Everything a stage may use for one architecture of one build.

    The build's stages share one context's manifest and lock; each running stage gets its own copy
    (``for_stage``) with its progress line and journal."""

    spec: PlatformSpec
    spec_path: Path
    arch: Architecture
    build_dir: Path
    cache_dir: Path
    source_date_epoch: int
    use_cache: bool
    manifest: BuildManifest
    stages: tuple[str, ...] = ()
    progress: Step | None = None
    extra: dict[str, object] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    journal: StageJournal | None = None

    @property
    def arch_dir(self) -> Path:
        return self.build_dir / self.arch.value

    @property
    def record(self) -> ArchBuild:
        return self.manifest.arch(self.arch.value)

    @property
    def logs_dir(self) -> Path:
        d = self.arch_dir / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def for_stage(self, progress: Step | None) -> BuildContext:
        """A copy for one stage: same manifest and lock, its own progress and journal."""
        return dataclasses.replace(self, progress=progress, journal=StageJournal())

    def env(self) -> dict[str, str]:
        """Environment for reproducible tools."""
        return {"SOURCE_DATE_EPOCH": str(self.source_date_epoch)}

    def add_artifact(
        self,
        path: Path,
        media_type: str,
        *,
        with_fsverity: bool = False,
        annotations: dict[str, str] | None = None,
    ) -> Artifact:
        art = Artifact.from_file(
            self.build_dir, path, media_type, with_fsverity=with_fsverity, annotations=annotations
        )
        return self.record_artifact(art)

    def record_artifact(self, art: Artifact) -> Artifact:
        """Add an artifact record whose digests are already known (a verified cache hit)."""
        with self.lock:
            if self.journal is not None:
                self.journal.artifacts.append(art)
            return self.record.add(art)

    def tool(self, name: str, version: str) -> None:
        with self.lock:
            if self.journal is not None:
                self.journal.tools[name] = version
            self.manifest.tools[name] = version

    def report(self, detail: str) -> None:
        if self.progress is not None:
            self.progress.update(detail)


def source_date_epoch_for(spec: PlatformSpec, spec_path: Path, flag: int | None) -> int:
    """The flag, else $SOURCE_DATE_EPOCH, else the spec's, else the spec file's last commit time."""
    if flag is not None:
        return flag
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH={env!r} is not an integer") from None
    if spec.source_date_epoch is not None:
        return spec.source_date_epoch
    try:
        out = (
            run(
                ["git", "log", "-1", "--format=%ct", "--", spec_path.name],
                cwd=spec_path.resolve().parent,
                check=False,
            )
            .stdout.decode(errors="replace")
            .strip()
        )
    except OSError:
        out = ""
    if out.isdigit():
        return int(out)
    raise UsageError(
        f"no SOURCE_DATE_EPOCH for {spec_path}: pass --source-date-epoch, set $SOURCE_DATE_EPOCH, "
        "add source_date_epoch to the spec, or commit the spec file to git"
    )


def _manifest_for(spec: PlatformSpec, out: Path, source_date_epoch: int) -> BuildManifest:
    """The build directory's build.json when it describes this spec and epoch, else a new one."""
    if (out / "build.json").is_file():
        try:
            old = BuildManifest.load(out)
        except BuildError:
            old = None
        if (
            old is not None
            and old.spec_digest == spec.digest()
            and old.source_date_epoch == source_date_epoch
        ):
            return old
    return BuildManifest(
        platform=spec.name,
        version=spec.version,
        spec_digest=spec.digest(),
        spec=spec.normalized(),
        source_date_epoch=source_date_epoch,
    )


def select_architectures(spec: PlatformSpec, archs: Sequence[str] | None) -> list[Architecture]:
    """``archs`` (default: all of the spec's), each checked against the spec."""
    if not archs:
        return list(spec.architectures)
    chosen: list[Architecture] = []
    for a in archs:
        try:
            arch = Architecture(a)
        except ValueError:
            known = ", ".join(x.value for x in Architecture)
            raise UsageError(f"unknown architecture {a!r}: diskci builds {known}") from None
        if arch not in spec.architectures:
            have = ", ".join(x.value for x in spec.architectures)
            raise UsageError(f"{spec.name} is not defined for {arch.value} (its architectures: {have})")
        if arch not in chosen:
            chosen.append(arch)
    return chosen


# --- running one stage, from the cache when its key is there ---------------------------------------


def stage_key(ctx: BuildContext, st: Stage) -> tuple[str, dict[str, Any]]:
    """(key, inputs) of ``st`` in this build; BuildError when an artifact it reads is not recorded."""
    inputs = stage_key_inputs(
        stage=st.name,
        module=st.module,
        arch=ctx.arch,
        source_date_epoch=ctx.source_date_epoch,
        spec=ctx.spec,
        spec_fields=st.spec_fields,
        reads={name: ctx.record.artifact(name).sha256 for name in st.reads},
        tools=st.tools,
    )
    return canonical_digest(inputs), inputs


def run_stage(ctx: BuildContext, st: Stage) -> None:
    """Run ``st`` (``ctx`` from ``for_stage``): restored from the cache when its key is there (and
    verified), else run and stored. A second build of the same key waits for the first, then hits."""
    func = st.load()
    if not st.cached:
        func(ctx)
        return
    try:
        key, inputs = stage_key(ctx, st)
    except BuildError as exc:  # run outside the pipeline's order (an input not in build.json)
        log.debug("%s %s: not cached (%s)", st.name, ctx.arch.value, exc.message)
        func(ctx)
        return
    cache = Cache(ctx.cache_dir, st.name)
    outputs = {name: ctx.arch_dir / name for name in st.outputs}
    hit = ctx.use_cache and _restore(ctx, st, cache, key, outputs)
    if not hit:
        with cache.lock(key, on_wait=lambda: ctx.report("waiting for another build of the same inputs")):
            hit = ctx.use_cache and _restore(ctx, st, cache, key, outputs)
            if not hit:
                func(ctx)
                _store(ctx, st, cache, key, inputs, outputs)
    with ctx.lock:
        ctx.record.cache[st.name] = {"key": key, "hit": hit}


def _restore(ctx: BuildContext, st: Stage, cache: Cache, key: str, outputs: dict[str, Path]) -> bool:
    entry = cache.lookup(key)
    if entry is None or "artifacts" not in entry.build:
        return False
    ctx.report(f"cache hit (key {key[:16]}): restoring and verifying")
    try:
        if cache.restore_verified(entry, outputs) is None:
            return False
    except OSError as exc:
        raise CacheError(f"cannot restore {st.name} from the cache entry {entry.path}: {exc}") from exc
    recorded = entry.build
    for art in recorded["artifacts"]:
        ctx.record_artifact(Artifact.model_validate(art))
    for name, version in recorded.get("tools", {}).items():
        ctx.tool(name, version)
    with ctx.lock:
        for name, value in recorded.get("record", {}).items():
            setattr(ctx.record, name, value)
    cache.touch(key)
    log.info("%s %s: cache hit (key %s)", st.name, ctx.arch.value, key[:16])
    return True


def _store(
    ctx: BuildContext, st: Stage, cache: Cache, key: str, inputs: dict[str, Any], outputs: dict[str, Path]
) -> None:
    assert ctx.journal is not None
    arts = ctx.journal.artifacts
    inside = [ctx.build_dir / a.path for a in arts]
    declared = [p for p in outputs.values()]
    stray = [str(p) for p in inside if not any(p == d or d in p.parents for d in declared)]
    missing = [str(p) for p in declared if not p.exists()]
    if stray or missing:
        log.warning("%s: not cached: outputs %s not declared, %s missing", st.name, stray, missing)
        return
    build = {
        "artifacts": [a.model_dump(mode="json") for a in arts],
        "tools": dict(ctx.journal.tools),
        "record": {name: getattr(ctx.record, name) for name in st.sets},
    }
    known = {Path(a.path).name: a.sha256 for a in arts if ctx.build_dir / a.path in declared}
    ctx.report("storing in the cache")
    try:
        cache.store(key, outputs, inputs, known, build=build)
    except CacheError as exc:  # the stage itself succeeded: a cache problem only costs time later
        log.warning("%s %s: built, but not cached: %s", st.name, ctx.arch.value, exc.message)


# --- the scheduler -------------------------------------------------------------------------------


def _priority(plan: Sequence[Stage]) -> dict[str, tuple[int, int]]:
    """Stages with more stages waiting on them first (the critical path), then in plan order."""
    dependents: dict[str, set[str]] = {s.name: set() for s in plan}
    for s in reversed(plan):
        for dep in s.needs:
            if dep in dependents:
                dependents[dep] |= {s.name} | dependents[s.name]
    return {s.name: (-len(dependents[s.name]), i) for i, s in enumerate(plan)}


class _ArchBuild:
    """The stages of one architecture: scheduling, and build.json saved in the stages' order."""

    def __init__(self, ctx: BuildContext, plan: Sequence[Stage], jobs: int, steps: Steps) -> None:
        self.ctx, self.plan, self.jobs, self.steps = ctx, list(plan), max(1, jobs), steps
        record = ctx.record
        self.base_artifacts = list(record.artifacts)
        self.base_tools = dict(ctx.manifest.tools)
        self.base_cache = dict(record.cache)
        self.finished: dict[str, StageJournal] = {}

    def _one(self, st: Stage) -> StageJournal:
        with self.steps.step(f"{st.name} ({self.ctx.arch.value})") as progress:
            sctx = self.ctx.for_stage(progress)
            run_stage(sctx, st)
            assert sctx.journal is not None
            return sctx.journal

    def canonical(self) -> BuildManifest:
        """The manifest with what the finished stages recorded, replayed in plan order."""
        with self.ctx.lock:
            manifest = self.ctx.manifest.model_copy(deep=True)
        record = manifest.arch(self.ctx.arch.value)
        replay = ArchBuild(architecture=record.architecture, artifacts=list(self.base_artifacts))
        tools = dict(self.base_tools)
        cache = {k: v for k, v in self.base_cache.items() if k not in self.finished}
        for st in self.plan:
            journal = self.finished.get(st.name)
            if journal is None:
                continue
            for art in journal.artifacts:
                replay.add(art.model_copy(deep=True))
            tools.update(journal.tools)
            if st.name in record.cache:
                cache[st.name] = record.cache[st.name]
        record.artifacts = replay.artifacts
        record.cache = cache
        manifest.tools = tools
        return manifest

    def save(self) -> None:
        self.canonical().save(self.ctx.build_dir)

    def _collect(
        self,
        done: set[Future[StageJournal]],
        running: dict[Future[StageJournal], Stage],
        priority: dict[str, tuple[int, int]],
    ) -> BaseException | None:
        """Record the finished futures (saving build.json when one succeeded); the first failure."""
        error = None
        succeeded = False
        for fut in sorted(done, key=lambda f: priority[running[f].name]):
            st = running.pop(fut)
            failure = fut.exception()
            if failure is not None:
                error = error or failure
            else:
                self.finished[st.name] = fut.result()
                succeeded = True
        if succeeded:
            self.save()
        return error

    def run(self) -> None:
        priority = (
            _priority(self.plan) if self.jobs > 1 else {s.name: (0, i) for i, s in enumerate(self.plan)}
        )
        pending = sorted(self.plan, key=lambda s: priority[s.name])
        names = {s.name for s in self.plan}
        running: dict[Future[StageJournal], Stage] = {}
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="diskci-stage") as pool:
            try:
                while pending or running:
                    ready = [] if error else [
                        s for s in pending if all(n in self.finished for n in s.needs if n in names)
                    ]  # fmt: skip
                    if ready and not running and (len(ready) == 1 or self.jobs == 1):
                        # nothing else can run now: in this thread (^C reaches it as it always did)
                        st = ready[0]
                        pending.remove(st)
                        try:
                            self.finished[st.name] = self._one(st)
                        except Exception as exc:
                            error = exc
                            break
                        self.save()
                        continue
                    for st in ready[: self.jobs - len(running)]:
                        pending.remove(st)
                        running[pool.submit(self._one, st)] = st
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    error = self._collect(done, running, priority) or error
            except BaseException:
                # ^C while stages run on threads: start nothing more, let the running ones end
                wait(running)
                self._collect(set(running), running, priority)
                raise
        final = self.canonical()
        with self.ctx.lock:
            self.ctx.manifest.tools = final.tools
            self.ctx.manifest.architectures[self.ctx.arch.value] = final.arch(self.ctx.arch.value)
        if error is not None:
            raise error


def default_jobs() -> int:
    return os.cpu_count() or 1


def run_build(
    spec_path: Path,
    archs: Sequence[str] | None,
    out: Path,
    cache: Path,
    source_date_epoch: int | None,
    stages: Sequence[str] | None,
    use_cache: bool = True,
    *,
    jobs: int | None = None,
    cache_max_size: int | None = None,
) -> BuildManifest:
    """Run the chosen stages (with what they need) for every chosen architecture; returns build.json.

    The stages of an architecture run on up to ``jobs`` threads (default: the CPU count). build.json is
    saved after every stage, so what it lists always exists on disk; when a stage fails, the stages
    already finished keep their artifacts, no new stage starts, and the error propagates. Afterwards
    the cache is pruned to ``cache_max_size`` bytes (least recently used entries first), when given.
    """
    spec = load_spec(spec_path)
    chosen_archs = select_architectures(spec, archs)
    plan = resolve_stages(stages)
    sde = source_date_epoch_for(spec, spec_path, source_date_epoch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest_for(spec, out, sde)
    manifest.tools["python"] = sys.version.split()[0]
    names = tuple(s.name for s in plan)
    with Steps() as steps:
        for arch in chosen_archs:
            ctx = BuildContext(
                spec=spec,
                spec_path=Path(spec_path),
                arch=arch,
                build_dir=out,
                cache_dir=Path(cache),
                source_date_epoch=sde,
                use_cache=use_cache,
                manifest=manifest,
                stages=names,
            )
            ctx.record.inputs["stages"] = list(names)
            build = _ArchBuild(ctx, plan, jobs or default_jobs(), steps)
            build.run()
            manifest.save(out)
    if cache_max_size is not None:
        try:
            pruned = cache_store.prune(Path(cache), cache_max_size)
        except CacheError as exc:  # the build itself succeeded
            log.warning("%s", exc.message)
            return manifest
        if pruned["removed"]:
            log.info(
                "cache: removed %d least recently used entries (%s) to stay under %s",
                len(pruned["removed"]),
                cache_store.format_size(pruned["removed_bytes"]),
                cache_store.format_size(cache_max_size),
            )
    return manifest
