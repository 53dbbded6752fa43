"""Join the per-architecture parts of a publication, already in a registry, into the whole.

Public API: ``plan_assembled(ref, arches, work_dir) -> Publication``.

A CI run builds each architecture in its own job and pushes that part (``diskci push --arch A``: an
index tagged ``arch_tag(version, A)`` whose artifact manifest's build.json lists only ``A``). The last
job reads those parts back: each part's build.json (they must agree on everything but their
architecture), its artifact manifest and its runnable images. The result is the publication
``plan_publication`` gives for one build directory holding every architecture (same build.json, same
manifests, same index digest), so signing, pushing, pulling and verifying treat it alike. Only the
joined build.json and the new manifests are to be pushed: every artifact blob is in the registry already.
The joined build.json is written to ``work_dir`` (and signatures go beside it).
"""

from __future__ import annotations

import json
from pathlib import Path

from diskci import mediatypes as mt
from diskci.errors import BuildError, RegistryError, UsageError, VerificationFailed
from diskci.manifest import Artifact, BuildManifest
from diskci.registry import open_registry
from diskci.registry.publication import AddBlob, Publication, arch_tag, shape_publication
from diskci.registry.reference import Reference
from diskci.registry.store import Descriptor, RegistryClient, parse_manifest

__all__ = ["ArchPart", "plan_assembled", "read_part"]

# build.json fields every architecture's part must agree on (the architectures differ by design).
# ``tools`` is joined instead: each part names the tools its stages ran (an arm64 ISO uses no
# grub-mkimage), and a tool both name must be the same version.
_SHARED_FIELDS = (
    "platform",
    "version",
    "spec_digest",
    "spec",
    "source_date_epoch",
    "diskci_version",
)


class ArchPart:
    """One architecture's part as pushed: its build.json, artifact manifest and runnable images."""

    def __init__(
        self,
        arch: str,
        tag: str,
        build: BuildManifest,
        artifact_manifest: dict[str, object],
        images: list[tuple[Descriptor, bytes]],
    ) -> None:
        self.arch = arch
        self.tag = tag
        self.build = build
        self.artifact_manifest = artifact_manifest
        self.images = images


def read_part(client: RegistryClient, tag: str, arch: str) -> ArchPart:
    """The part of ``arch`` tagged ``tag`` (``RegistryError`` when the registry has no such tag)."""
    try:
        data, desc = client.get_manifest(tag)
    except RegistryError as exc:
        raise RegistryError(
            f"no {arch} part at tag {tag}: {exc}",
            hint=f"the {arch} build job pushes it: diskci push BUILD_DIR --arch {arch} --to REPO",
        ) from None
    index = parse_manifest(data, desc.digest)
    if index.get("mediaType") != mt.OCI_INDEX or index.get("artifactType") != mt.ARTIFACT_TYPE_IMAGE:
        raise VerificationFailed("manifest_invalid", f"tag {tag}: not a diskci publication index")
    artifact: dict[str, object] | None = None
    config: bytes | None = None
    images: list[tuple[Descriptor, bytes]] = []
    for entry in (Descriptor.from_json(m) for m in index.get("manifests", [])):
        body, _ = client.get_manifest(entry.digest)
        manifest = parse_manifest(body, entry.digest)
        if entry.artifact_type != mt.ARTIFACT_TYPE_IMAGE:
            images.append((Descriptor.for_bytes(mt.OCI_MANIFEST, body), body))
            continue
        if artifact is not None:
            raise VerificationFailed("manifest_invalid", f"tag {tag}: more than one artifact manifest")
        artifact = manifest
        cfg = Descriptor.from_json(manifest["config"])
        if cfg.media_type != mt.BUILD_JSON:
            raise VerificationFailed("manifest_invalid", f"tag {tag}: the config is not build.json")
        config = client.read_blob(cfg)
    if artifact is None or config is None:
        raise VerificationFailed("manifest_invalid", f"tag {tag}: lists no diskci artifact manifest")
    try:
        build = BuildManifest.model_validate_json(config)
    except ValueError as exc:
        raise VerificationFailed("manifest_invalid", f"tag {tag}: build.json is invalid: {exc}") from None
    if set(build.architectures) != {arch}:
        raise VerificationFailed(
            "manifest_invalid",
            f"tag {tag}: holds {', '.join(sorted(build.architectures)) or 'no architecture'}, not {arch}",
        )
    return ArchPart(arch, tag, build, artifact, images)


def _join(parts: list[ArchPart]) -> BuildManifest:
    first = parts[0]
    for part in parts[1:]:
        for name in _SHARED_FIELDS:
            mine, theirs = getattr(first.build, name), getattr(part.build, name)
            if mine != theirs:
                shown = (json.dumps(v, sort_keys=True)[:120] for v in (mine, theirs))
                raise BuildError(
                    f"the {first.arch} and {part.arch} builds disagree on build.json {name}: "
                    f"{next(shown)} ({first.tag}) vs {next(shown)} ({part.tag})",
                    hint="build every architecture from the same commit with the same diskci and tools",
                )
    tools: dict[str, str] = {}
    named_by: dict[str, str] = {}
    for part in parts:
        for tool, version in part.build.tools.items():
            if tool in tools and tools[tool] != version:
                raise BuildError(
                    f"the {named_by[tool]} and {part.arch} builds used different {tool}: "
                    f"{tools[tool][:80]!r} vs {version[:80]!r}",
                    hint="build every architecture from the same commit with the same diskci and tools",
                )
            tools.setdefault(tool, version)
            named_by.setdefault(tool, part.arch)
    arches = {p.arch: p.build.architectures[p.arch] for p in sorted(parts, key=lambda p: p.arch)}
    return first.build.model_copy(update={"architectures": arches, "tools": dict(sorted(tools.items()))})


def plan_assembled(
    ref: Reference | str,
    arches: list[str],
    work_dir: Path,
    *,
    client: RegistryClient | None = None,
) -> Publication:
    """The whole publication at ``ref``'s tag from the parts tagged ``arch_tag(tag, arch)``."""
    ref = Reference.parse(ref) if isinstance(ref, str) else ref
    if ref.digest or not ref.tag:
        raise UsageError(f"{ref}: name the publication's tag (host/repo:VERSION) to assemble it")
    if not arches:
        raise UsageError("name the architectures to assemble (--arch)")
    if len(set(arches)) != len(arches):
        raise UsageError(f"--arch: each architecture once ({', '.join(arches)})")
    client = client or open_registry(ref)
    parts = {a: read_part(client, arch_tag(ref.tag, a), a) for a in arches}
    build = _join(list(parts.values()))
    work_dir.mkdir(parents=True, exist_ok=True)
    config_bytes = build.dumps().encode()
    build.save(work_dir)

    def artifact_source(_artifact: Artifact) -> None:
        return None  # pushed with its part

    def images(arch: str, _add_blob: AddBlob) -> list[tuple[Descriptor, bytes]]:
        return parts[arch].images  # their blobs came with the part

    pub = shape_publication(build, config_bytes, work_dir, artifact_source=artifact_source, images=images)
    for desc, data in pub.manifests:  # each artifact manifest must list its part's layers, no more
        if desc.artifact_type != mt.ARTIFACT_TYPE_IMAGE:
            continue
        arch = desc.annotations[mt.ANNOTATION_ARCH]
        if json.loads(data)["layers"] != parts[arch].artifact_manifest.get("layers"):
            raise VerificationFailed(
                "manifest_invalid",
                f"tag {parts[arch].tag}: its artifact manifest's layers are not its build.json's artifacts",
            )
    return pub
