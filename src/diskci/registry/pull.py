"""``diskci pull``: download a publication into a directory shaped like the build directory.

Public API: ``pull_publication(ref, dest) -> PulledPublication``; ``on_bytes(received, expected)`` is
told the bytes received so far and the bytes of the blobs found so far (it grows as manifests are read).

Every manifest is checked against its digest and every blob against its size and sha256 while it
streams to disk; the first mismatch raises ``VerificationFailed`` (``manifest_invalid`` or
``digest_mismatch``) and nothing is left at ``dest``. The result: ``build.json`` (the config, identical
for every architecture), each artifact at its ``dev.diskci.path``, runnable images as OCI layouts at
``<arch>/oci/``, and the sigstore bundle referrers
in ``signatures/``. ``plan_publication(dest)`` then gives back the same index digest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from diskci import mediatypes as mt
from diskci.atomic import atomic_path
from diskci.errors import VerificationFailed
from diskci.manifest import FILENAME, BuildManifest
from diskci.registry import open_registry
from diskci.registry.publication import (
    ANNOTATION_BUNDLE_PREDICATE,
    ANNOTATION_PATH,
    OCI_FAMILY_DIR,
    PROVENANCE_BUNDLE,
    PUBLICATION_BUNDLE,
    SIGNATURES_DIR,
)
from diskci.registry.reference import Reference
from diskci.registry.store import Descriptor, RegistryClient, parse_manifest, write_json_file

log = logging.getLogger("diskci.registry")


@dataclass
class PulledPublication:
    reference: str
    index_digest: str
    directory: Path
    build: BuildManifest
    bundles: list[Path] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0


def _safe_relpath(path: str, digest: str) -> PurePosixPath:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise VerificationFailed("manifest_invalid", f"layer {digest}: unsafe path annotation {path!r}")
    return p


def pull_publication(
    ref: Reference | str,
    dest: Path,
    *,
    client: RegistryClient | None = None,
    progress: Callable[[str], None] | None = None,
    on_bytes: Callable[[int, int], None] | None = None,
) -> PulledPublication:
    """Pull ``ref`` (tag or digest) into ``dest`` (replaced as a whole when the pull succeeds)."""
    ref = Reference.parse(ref) if isinstance(ref, str) else ref
    client = client or open_registry(ref)
    say = progress or (lambda _msg: None)
    transfer = _Transfer(on_bytes)
    index_bytes, index_desc = client.get_manifest(ref.target)
    if ref.digest and index_desc.digest != ref.digest:
        raise VerificationFailed("manifest_invalid", f"{ref}: registry returned {index_desc.digest}")
    index = parse_manifest(index_bytes, index_desc.digest)
    if index.get("mediaType") != mt.OCI_INDEX or index.get("artifactType") != mt.ARTIFACT_TYPE_IMAGE:
        raise VerificationFailed(
            "manifest_invalid", f"{ref}: not a diskci publication index ({index.get('mediaType')})"
        )
    dest = Path(dest)
    result: PulledPublication | None = None
    with atomic_path(dest, directory=True) as tmp:
        config: bytes | None = None
        entries = [Descriptor.from_json(m) for m in index.get("manifests", [])]
        images: dict[str, list[tuple[Descriptor, bytes]]] = {}
        blobs = nbytes = 0
        for entry in entries:
            data, _ = client.get_manifest(entry.digest)
            manifest = parse_manifest(data, entry.digest)
            if entry.artifact_type == mt.ARTIFACT_TYPE_IMAGE:
                cfg = Descriptor.from_json(manifest["config"])
                if cfg.media_type != mt.BUILD_JSON:
                    raise VerificationFailed(
                        "manifest_invalid", f"manifest {entry.digest}: config is not build.json"
                    )
                cfg_bytes = client.read_blob(cfg)
                if config is not None and cfg_bytes != config:
                    raise VerificationFailed(
                        "manifest_invalid", "architectures carry different build.json configs"
                    )
                config = cfg_bytes
                layers = [Descriptor.from_json(layer_json) for layer_json in manifest.get("layers", [])]
                transfer.expect(sum(layer.size for layer in layers))
                for layer in layers:
                    rel = _safe_relpath(layer.annotations.get(ANNOTATION_PATH, ""), layer.digest)
                    say(f"{rel} ({layer.size} bytes)")
                    client.fetch_blob(layer, tmp / rel, on_chunk=transfer.received)
                    blobs += 1
                    nbytes += layer.size
            else:
                arch = (entry.platform or {}).get("architecture", "unknown")
                images.setdefault(arch, []).append((entry, data))
        if config is None:
            raise VerificationFailed(
                "manifest_invalid", f"{ref}: the index lists no diskci artifact manifest"
            )
        (tmp / FILENAME).write_bytes(config)
        try:
            build = BuildManifest.model_validate_json(config)
        except ValueError as exc:
            raise VerificationFailed(
                "manifest_invalid", f"{ref}: build.json config is invalid: {exc}"
            ) from None
        for arch, arch_images in images.items():
            b, n = _write_layout(client, tmp / arch / OCI_FAMILY_DIR, arch_images, transfer)
            blobs += b
            nbytes += n
        bundles = _pull_bundles(client, index_desc, tmp / SIGNATURES_DIR)
        result = PulledPublication(
            reference=str(ref),
            index_digest=index_desc.digest,
            directory=dest,
            build=build,
            bundles=[dest / SIGNATURES_DIR / p.name for p in bundles],
            blobs=blobs,
            bytes=nbytes,
        )
    log.info("pulled %s (%s): %d blobs, %d bytes", ref, index_desc.digest, result.blobs, result.bytes)
    return result


class _Transfer:
    """Counts the bytes of a pull for its ``on_bytes(received, expected)`` callback."""

    def __init__(self, on_bytes: Callable[[int, int], None] | None) -> None:
        self._on_bytes = on_bytes
        self.received_bytes = 0
        self.expected_bytes = 0

    def expect(self, nbytes: int) -> None:
        self.expected_bytes += nbytes
        if self._on_bytes is not None:
            self._on_bytes(self.received_bytes, self.expected_bytes)

    def received(self, nbytes: int) -> None:
        self.received_bytes += nbytes
        if self._on_bytes is not None:
            self._on_bytes(self.received_bytes, self.expected_bytes)


def _write_layout(
    client: RegistryClient, root: Path, images: list[tuple[Descriptor, bytes]], transfer: _Transfer
) -> tuple[int, int]:
    blobs = nbytes = 0
    entries = []
    for entry, data in images:
        manifest = json.loads(data)
        for d in [manifest["config"], *manifest.get("layers", [])]:
            desc = Descriptor.from_json(d)
            path = root / "blobs" / "sha256" / desc.digest.split(":", 1)[1]
            if not path.exists():
                transfer.expect(desc.size)
                client.fetch_blob(desc, path, on_chunk=transfer.received)
                blobs += 1
                nbytes += desc.size
        (root / "blobs" / "sha256" / entry.digest.split(":", 1)[1]).write_bytes(data)
        entries.append({"mediaType": entry.media_type, "digest": entry.digest, "size": entry.size})
    # build.json may list the layout's own index.json (pulled as a layer, byte-exact): keep that one
    if not (root / "index.json").exists():
        write_json_file(
            root / "index.json", {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
        )
    if not (root / "oci-layout").exists():
        write_json_file(root / "oci-layout", {"imageLayoutVersion": mt.OCI_LAYOUT_VERSION})
    return blobs, nbytes


def _pull_bundles(client: RegistryClient, subject: Descriptor, dest: Path) -> list[Path]:
    out: list[Path] = []
    for ref_desc in client.referrers(subject.digest, mt.SIGSTORE_BUNDLE_V03):
        data, _ = client.get_manifest(ref_desc.digest)
        manifest = parse_manifest(data, ref_desc.digest)
        if (manifest.get("subject") or {}).get("digest") != subject.digest:
            continue  # a stale fallback-tag entry; not a referrer of this index
        layers = manifest.get("layers") or []
        if not layers:
            raise VerificationFailed(
                "bundle_malformed", f"referrer {ref_desc.digest} carries no bundle layer"
            )
        bundle = client.read_blob(Descriptor.from_json(layers[0]))
        predicate = (manifest.get("annotations") or {}).get(ANNOTATION_BUNDLE_PREDICATE, "")
        base = PROVENANCE_BUNDLE if predicate == mt.SLSA_PROVENANCE_V1 else PUBLICATION_BUNDLE
        name = base
        n = 1
        while (dest / name).exists():
            n += 1
            name = base.replace(".sigstore.json", f"-{n}.sigstore.json")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(bundle)
        out.append(dest / name)
    return out
