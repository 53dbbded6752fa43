"""The OCI shape of a publication, computed from a build directory (a pure function of its files).

Public API: ``plan_publication(build_dir) -> Publication``. Signing, pushing, pulling and verifying
all use it, so the index digest that ``diskci sign`` signs is the digest ``diskci push`` publishes and
the digest ``diskci verify`` recomputes from a pulled directory. ``shape_publication`` draws the shape
from a build.json alone (``diskci.registry.assemble`` uses it for parts already in a registry);
``arch_tag(tag, arch)`` names the tag of one architecture's part.

Shape (all JSON serialized with ``canonical_json``):

- per architecture, an artifact manifest: ``artifactType`` ``application/vnd.diskci.image.v1``, config
  = build.json (media type BUILD_JSON), one layer per artifact of that architecture (media type from
  build.json; annotations: title = file name, ``dev.diskci.path`` = path in the build directory,
  fs-verity digest, the artifact's own annotations);
- per architecture with an OCI image family (the OCI layout at ``<arch>/oci/``), its image
  manifest(s), unchanged (same digest), so the image runs with any runtime;
- an image index listing them with ``platform`` {os, architecture}; runnable images first so
  runtimes that pick the first platform match get a runnable image.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diskci import mediatypes as mt
from diskci.canonical import canonical_json
from diskci.errors import BuildError, VerificationFailed
from diskci.manifest import FILENAME, Artifact, BuildManifest
from diskci.registry.store import BlobSource, Descriptor, sha256_digest

ANNOTATION_PATH = mt.ANNOTATION_PATH
OCI_FAMILY_DIR = "oci"
_OCI_ARCH = {"amd64": "amd64", "arm64": "arm64", "x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class PlannedBlob:
    desc: Descriptor
    source: BlobSource


@dataclass
class Publication:
    """Everything to push for one build: blobs, child manifests, and the index (tagged ``version``)."""

    build: BuildManifest
    build_dir: Path
    blobs: list[PlannedBlob] = field(default_factory=list)
    manifests: list[tuple[Descriptor, bytes]] = field(default_factory=list)
    index: bytes = b""
    index_desc: Descriptor = field(default_factory=lambda: Descriptor(mt.OCI_INDEX, "", 0))

    @property
    def tag(self) -> str:
        return self.build.version

    @property
    def total_bytes(self) -> int:
        return sum(b.desc.size for b in self.blobs) + sum(d.size for d, _ in self.manifests) + len(self.index)


class _OciFamily:
    """An OCI image layout directory (the OCI image family of one architecture)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def source(self, name: str) -> BlobSource:
        path = self.directory / name
        if not path.is_file():
            raise BuildError(f"{self.directory}: OCI layout has no {name}")
        return BlobSource(path=path, size=path.stat().st_size)

    def read(self, name: str) -> bytes:
        return b"".join(self.source(name).chunks())

    def blob(self, digest: str) -> BlobSource:
        return self.source("blobs/" + digest.replace(":", "/", 1))


def _created(build: BuildManifest) -> str:
    return dt.datetime.fromtimestamp(build.source_date_epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _oci_families(build_dir: Path, arch: str) -> list[_OciFamily]:
    layout_dir = build_dir / arch / OCI_FAMILY_DIR
    return [_OciFamily(layout_dir)] if (layout_dir / "index.json").is_file() else []


AddBlob = Callable[[Descriptor, BlobSource], None]


def arch_tag(tag: str, arch: str) -> str:
    """The tag one architecture's part of publication ``tag`` is pushed under before assembly."""
    return f"{tag}-{arch}"


def restrict_build(build: BuildManifest, arches: Sequence[str], where: str) -> BuildManifest:
    """``build`` with only ``arches`` (each must be one of its architectures)."""
    missing = [a for a in arches if a not in build.architectures]
    if missing:
        raise BuildError(
            f"{where}: has no {', '.join(missing)} build (it has {', '.join(sorted(build.architectures))})"
        )
    keep = {a: build.architectures[a] for a in sorted(set(arches))}
    return build.model_copy(update={"architectures": keep})


def plan_publication(build_dir: Path, *, arches: Sequence[str] | None = None) -> Publication:
    """The publication of ``build_dir``; checks every listed file exists with its recorded size.

    ``arches``: only those architectures, with a build.json config that lists only them (what
    ``diskci push --arch`` sends; ``plan_assembled`` joins such parts back into the whole).
    """
    build_dir = Path(build_dir)
    build = BuildManifest.load(build_dir)
    config_bytes = (build_dir / FILENAME).read_bytes()
    if arches is not None:
        build = restrict_build(build, arches, str(build_dir / FILENAME))
        config_bytes = build.dumps().encode()

    def artifact_source(artifact: Artifact) -> BlobSource:
        path = build_dir / artifact.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BuildError(f"{path}: listed in build.json but missing") from None
        if size != artifact.size:
            raise VerificationFailed(
                "digest_mismatch", f"{path}: {size} bytes on disk, build.json records {artifact.size}"
            )
        return BlobSource(path=path, size=artifact.size)

    def images(arch: str, add_blob: AddBlob) -> list[tuple[Descriptor, bytes]]:
        return [img for family in _oci_families(build_dir, arch) for img in _family_images(family, add_blob)]

    return shape_publication(build, config_bytes, build_dir, artifact_source=artifact_source, images=images)


def shape_publication(
    build: BuildManifest,
    config_bytes: bytes,
    build_dir: Path,
    *,
    artifact_source: Callable[[Artifact], BlobSource | None],
    images: Callable[[str, AddBlob], list[tuple[Descriptor, bytes]]],
) -> Publication:
    """The OCI shape of ``build`` (its build.json is ``config_bytes``): the one place it is drawn.

    ``artifact_source(artifact)``: where an artifact's bytes are (None: already in the registry, not
    to push); ``images(arch, add_blob)``: the runnable image manifests of ``arch`` (adding their blobs).
    """
    config = Descriptor.for_bytes(mt.BUILD_JSON, config_bytes)
    pub = Publication(build=build, build_dir=build_dir)
    seen: set[str] = set()

    def add_blob(desc: Descriptor, source: BlobSource) -> None:
        if desc.digest not in seen:
            seen.add(desc.digest)
            pub.blobs.append(PlannedBlob(desc, source))

    add_blob(config, BlobSource(data=config_bytes, size=len(config_bytes)))
    created = _created(build)
    common = {
        mt.ANNOTATION_PLATFORM: build.platform,
        mt.ANNOTATION_VERSION: build.version,
        mt.ANNOTATION_CREATED: created,
    }
    runnable: list[Descriptor] = []
    artifact_entries: list[Descriptor] = []
    if not build.architectures:
        raise BuildError(f"{build_dir / FILENAME}: lists no architectures; nothing to publish")
    for arch in sorted(build.architectures):
        ab = build.architectures[arch]
        platform = {"os": "linux", "architecture": _OCI_ARCH.get(arch, arch)}
        layers = []
        for a in ab.artifacts:
            source = artifact_source(a)
            annotations = {mt.ANNOTATION_TITLE: a.name, ANNOTATION_PATH: a.path, **a.annotations}
            if a.fsverity:
                annotations[mt.ANNOTATION_FSVERITY] = a.fsverity
            desc = Descriptor(a.media_type, f"sha256:{a.sha256}", a.size, annotations=annotations)
            layers.append(desc.to_json())
            if source is not None:
                add_blob(desc, source)
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": mt.ARTIFACT_TYPE_IMAGE,
            "config": config.to_json(),
            "layers": layers,
            "annotations": {**common, mt.ANNOTATION_ARCH: arch},
        }
        data = canonical_json(manifest)
        desc = Descriptor.for_bytes(
            mt.OCI_MANIFEST,
            data,
            artifact_type=mt.ARTIFACT_TYPE_IMAGE,
            platform=platform,
            annotations={mt.ANNOTATION_ARCH: arch},
        )
        pub.manifests.append((desc, data))
        artifact_entries.append(desc)
        for image_desc, image_bytes in images(arch, add_blob):
            entry = Descriptor(image_desc.media_type, image_desc.digest, image_desc.size, platform=platform)
            pub.manifests.append((entry, image_bytes))
            runnable.append(entry)
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "artifactType": mt.ARTIFACT_TYPE_IMAGE,
        "manifests": [d.to_json() for d in [*runnable, *artifact_entries]],
        "annotations": common,
    }
    pub.index = canonical_json(index)
    pub.index_desc = Descriptor.for_bytes(mt.OCI_INDEX, pub.index)
    return pub


def _family_images(family: _OciFamily, add_blob: AddBlob) -> list[tuple[Descriptor, bytes]]:
    try:
        layout_index = json.loads(family.read("index.json"))
    except ValueError as exc:
        raise BuildError(f"OCI image family: index.json is not JSON: {exc}") from None
    images = []
    for m in layout_index.get("manifests", []):
        if m.get("mediaType") != mt.OCI_MANIFEST:
            continue
        data = b"".join(family.blob(m["digest"]).chunks())
        if sha256_digest(data) != m["digest"]:
            raise BuildError(f"OCI image family: manifest {m['digest']} does not match its digest")
        manifest = json.loads(data)
        for d in [manifest["config"], *manifest.get("layers", [])]:
            add_blob(Descriptor.from_json(d), family.blob(d["digest"]))
        images.append((Descriptor.for_bytes(mt.OCI_MANIFEST, data), data))
    return images


# --- signatures beside a publication ----------------------------------------------------------------
SIGNATURES_DIR = "signatures"
PUBLICATION_BUNDLE = "publication.sigstore.json"
PROVENANCE_BUNDLE = "provenance.sigstore.json"
ANNOTATION_BUNDLE_CONTENT = mt.ANNOTATION_BUNDLE_CONTENT
ANNOTATION_BUNDLE_PREDICATE = mt.ANNOTATION_BUNDLE_PREDICATE


def bundle_files(directory: Path) -> list[Path]:
    """The sigstore bundles stored beside a build (``signatures/*.sigstore.json``), sorted."""
    return sorted((Path(directory) / SIGNATURES_DIR).glob("*.sigstore.json"))


def bundle_statement(bundle: bytes) -> dict[str, Any]:
    """The in-toto statement inside a bundle's DSSE envelope, unverified (for routing, not trust)."""
    import base64

    try:
        doc = json.loads(bundle)
        statement: dict[str, Any] = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationFailed("bundle_malformed", f"not a DSSE sigstore bundle: {exc}") from None
    if not isinstance(statement, dict):
        raise VerificationFailed("bundle_malformed", "the DSSE payload is not an in-toto statement")
    return statement


def statement_subjects(statement: dict[str, Any]) -> list[str]:
    """``sha256:<hex>`` of every subject of an in-toto statement."""
    out = []
    for s in statement.get("subject") or []:
        h = (s.get("digest") or {}).get("sha256") if isinstance(s, dict) else None
        if h:
            out.append(f"sha256:{h}")
    return out
