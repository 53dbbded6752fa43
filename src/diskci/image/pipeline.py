"""The stage graph of ``diskci build``: which stages run, in what order, for which architecture.

Each stage is a function ``stage(ctx: BuildContext) -> None`` in its own module; it reads its inputs
from ``ctx.arch_dir`` (and the cache), writes its outputs through ``atomic_path`` and records them
with ``ctx.add_artifact``. Stages are imported only when they run. build.json is written after every
architecture, so what it lists always exists on disk.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diskci.console import Step, step
from diskci.errors import BuildError, UsageError
from diskci.manifest import ArchBuild, Artifact, BuildManifest
from diskci.process import run
from diskci.spec import Architecture, PlatformSpec, load_spec


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function"
    needs: tuple[str, ...] = ()
    description: str = ""

    def load(self) -> Callable[[BuildContext], None]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: tuple[Stage, ...] = (
    Stage("rootfs", "diskci.image.rootfs:stage", (), "root filesystem tarball (mmdebstrap)"),
    Stage("composefs", "diskci.image.composefs_stage:stage", ("rootfs",), "composefs image + object store"),
    Stage("kernel", "diskci.image.artifacts.kernel:stage", ("rootfs",), "the kernel (vmlinuz)"),
    Stage("rootimage", "diskci.image.artifacts.rootimage:stage", ("rootfs",), "compressed root image"),
    Stage("initramfs", "diskci.image.initramfs.builder:stage", ("rootfs", "kernel"), "netboot initramfs"),
    Stage("ipxe", "diskci.image.artifacts.ipxe:stage", ("kernel", "initramfs", "rootimage"), "boot.ipxe"),
    Stage("raw", "diskci.image.artifacts.raw:stage", ("kernel", "initramfs", "rootimage"), "GPT disk"),
    Stage("qcow2", "diskci.image.artifacts.qcow2:stage", ("raw",), "qcow2 disk"),
    Stage("iso", "diskci.image.artifacts.iso:stage", ("kernel", "initramfs", "rootimage"), "hybrid ISO"),
    Stage("oci", "diskci.image.artifacts.oci:stage", ("rootfs",), "OCI image layout"),
)
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
class BuildContext:
    """Everything a stage may use for one architecture of one build."""

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
        return self.record.add(art)

    def tool(self, name: str, version: str) -> None:
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


def run_build(
    spec_path: Path,
    archs: Sequence[str] | None,
    out: Path,
    cache: Path,
    source_date_epoch: int | None,
    stages: Sequence[str] | None,
    use_cache: bool = True,
) -> BuildManifest:
    """Run the chosen stages (with what they need) for every chosen architecture; returns build.json.

    build.json is saved after every stage, so what it lists always exists on disk; an arch whose stage
    fails keeps the artifacts of the stages before it, and the error propagates.
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
        for st in plan:
            func = st.load()
            with step(f"{st.name} ({arch.value})") as progress:
                ctx.progress = progress
                try:
                    func(ctx)
                finally:
                    ctx.progress = None
            manifest.save(out)
        manifest.save(out)
    return manifest
