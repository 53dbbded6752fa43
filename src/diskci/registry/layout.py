"""``RegistryClient`` for an OCI image layout directory (the embedded default registry).

Layout: https://github.com/opencontainers/image-spec/blob/main/image-layout.md — ``oci-layout``,
``index.json`` (tags are ``org.opencontainers.image.ref.name`` annotations) and ``blobs/sha256/<hex>``.
Blobs are written through a temporary file and renamed into place after their digest is checked;
``index.json`` is rewritten atomically under an exclusive lock, so concurrent pushes never lose a tag.
Referrers use the ``sha256-<hex>`` tag schema, as for registries without the referrers API.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from diskci import mediatypes as mt
from diskci.atomic import atomic_path
from diskci.errors import RegistryError, VerificationFailed
from diskci.registry.reference import Reference
from diskci.registry.store import (
    BlobSource,
    Descriptor,
    check_digest,
    download_verified,
    fallback_tag,
    referrer_descriptor,
    referrers_index,
    sha256_digest,
    write_json_file,
)


class LayoutRegistry:
    """An OCI image layout directory used like a registry repository."""

    def __init__(self, reference: Reference) -> None:
        assert reference.layout_path is not None
        self.reference = reference
        self.root = reference.layout_path

    # --- structure -----------------------------------------------------------------------------
    def _ensure(self) -> None:
        if (self.root / "oci-layout").exists():
            return
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root}: exists and is not a directory")
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        if not (self.root / "index.json").exists():
            write_json_file(
                self.root / "index.json", {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
            )
        write_json_file(self.root / "oci-layout", {"imageLayoutVersion": mt.OCI_LAYOUT_VERSION})

    def _blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64:
            raise RegistryError(f"unsupported digest {digest!r}")
        return self.root / "blobs" / algo / hexpart

    @contextlib.contextmanager
    def _index_locked(self) -> Iterator[dict[str, Any]]:
        """The parsed index.json, written back (atomically) when the block succeeds."""
        self._ensure()
        with open(self.root / ".index.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self._read_index()
            before = json.dumps(index, sort_keys=True)
            yield index
            if json.dumps(index, sort_keys=True) != before:
                write_json_file(self.root / "index.json", index)

    def _read_index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        try:
            index: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise RegistryError(f"{self.root}: not an OCI image layout (no index.json)") from None
        except ValueError as exc:
            raise VerificationFailed("manifest_invalid", f"{path}: not JSON: {exc}") from None
        if not isinstance(index.get("manifests"), list):
            raise VerificationFailed("manifest_invalid", f"{path}: no manifests list")
        return index

    # --- blobs ---------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def push_blob(self, desc: Descriptor, source: BlobSource) -> bool:
        self._ensure()
        dest = self._blob_path(desc.digest)
        if dest.is_file() and dest.stat().st_size == desc.size:
            return False
        download_verified(source.chunks(), desc, dest)
        return True

    def fetch_blob(
        self, desc: Descriptor, dest: Path, *, on_chunk: Callable[[int], None] | None = None
    ) -> None:
        path = self._blob_path(desc.digest)
        if not path.is_file():
            raise VerificationFailed("digest_mismatch", f"blob {desc.digest} is missing from {self.root}")
        source = BlobSource(path=path, size=path.stat().st_size)
        download_verified(source.chunks(), desc, dest, on_chunk=on_chunk)

    def read_blob(self, desc: Descriptor) -> bytes:
        path = self._blob_path(desc.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise VerificationFailed(
                "digest_mismatch", f"blob {desc.digest} is missing from {self.root}"
            ) from None
        if len(data) != desc.size or sha256_digest(data) != desc.digest:
            raise VerificationFailed(
                "digest_mismatch", f"blob {desc.digest}: content does not match its digest"
            )
        return data

    # --- manifests -----------------------------------------------------------------------------
    def push_manifest(self, data: bytes, media_type: str, *, tag: str | None = None) -> str:
        self._ensure()
        digest = sha256_digest(data)
        path = self._blob_path(digest)
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        if tag:
            entry = Descriptor.for_bytes(
                media_type, data, annotations={mt.ANNOTATION_REF_NAME: tag}
            ).to_json()
            doc = json.loads(data)
            if doc.get("artifactType"):
                entry["artifactType"] = doc["artifactType"]
            with self._index_locked() as index:
                names = [(m.get("annotations") or {}).get(mt.ANNOTATION_REF_NAME) for m in index["manifests"]]
                if tag in names:  # re-tag in place: a re-push leaves index.json byte-identical
                    index["manifests"][names.index(tag)] = entry
                else:
                    index["manifests"].append(entry)
        return digest

    def _tagged(self, tag: str) -> Descriptor | None:
        for m in self._read_index()["manifests"]:
            if (m.get("annotations") or {}).get(mt.ANNOTATION_REF_NAME) == tag:
                return Descriptor.from_json(m)
        return None

    def resolve(self, tag_or_digest: str) -> Descriptor:
        if tag_or_digest.startswith("sha256:"):
            path = self._blob_path(tag_or_digest)
            if not path.is_file():
                raise RegistryError(f"{self.reference.at(tag_or_digest)}: not found")
            media_type = json.loads(path.read_bytes()).get("mediaType", mt.OCI_MANIFEST)
            return Descriptor(media_type=media_type, digest=tag_or_digest, size=path.stat().st_size)
        if not (self.root / "index.json").exists():
            raise RegistryError(f"{self.root}: not an OCI image layout (no index.json)")
        desc = self._tagged(tag_or_digest)
        if desc is None:
            raise RegistryError(f"{self.reference.at(tag_or_digest)}: not found")
        return desc

    def get_manifest(self, tag_or_digest: str) -> tuple[bytes, Descriptor]:
        desc = self.resolve(tag_or_digest)
        path = self._blob_path(desc.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise VerificationFailed(
                "manifest_invalid", f"manifest {desc.digest} is missing from {self.root}"
            ) from None
        check_digest(data, desc.digest, "manifest")
        return data, Descriptor(media_type=desc.media_type, digest=desc.digest, size=len(data))

    def tags(self) -> list[str]:
        if not (self.root / "index.json").exists():
            return []
        names = [
            (m.get("annotations") or {}).get(mt.ANNOTATION_REF_NAME) for m in self._read_index()["manifests"]
        ]
        return [n for n in names if n]

    # --- referrers -----------------------------------------------------------------------------
    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        if not (self.root / "index.json").exists():
            return []
        if self._tagged(fallback_tag(digest)) is None:
            return []
        data, _ = self.get_manifest(fallback_tag(digest))
        found = [Descriptor.from_json(m) for m in json.loads(data).get("manifests", [])]
        return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]

    def add_referrer(self, manifest: bytes, subject: Descriptor) -> Descriptor:
        desc = referrer_descriptor(manifest)
        self.push_manifest(manifest, desc.media_type)
        existing = self.referrers(subject.digest)
        if not any(d.digest == desc.digest for d in existing):
            self.push_manifest(
                referrers_index([*existing, desc]), mt.OCI_INDEX, tag=fallback_tag(subject.digest)
            )
        return desc

    # --- deletion ------------------------------------------------------------------------------
    def delete_manifest(self, digest: str) -> None:
        with self._index_locked() as index:
            index["manifests"] = [m for m in index["manifests"] if m.get("digest") != digest]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._blob_path(digest))

    def delete_tag(self, tag: str) -> None:
        with self._index_locked() as index:
            index["manifests"] = [
                m
                for m in index["manifests"]
                if (m.get("annotations") or {}).get(mt.ANNOTATION_REF_NAME) != tag
            ]
