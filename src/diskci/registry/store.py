"""What a registry store is and what its two back ends share (``layout.py`` and ``remote.py`` import it).

``RegistryClient`` is the one interface over an OCI distribution registry (``RemoteRegistry``, through
oras-py) and an OCI image layout directory (``LayoutRegistry``): ``has_blob``, ``push_blob``,
``push_manifest``, ``resolve``, ``get_manifest``, ``fetch_blob``, ``read_blob``, ``referrers``,
``add_referrer``, ``delete_manifest``, ``delete_tag``, ``tags``. Beside it: ``Descriptor``, ``BlobSource``
(and ``BlobBody``, a source as a streamed request body), and the helpers both back ends use. Pick a back
end with ``diskci.registry.open_registry(ref)``.

Everything read is checked against its digest (manifests and blobs); every manifest is sent as the exact
bytes whose digest we computed, so the registry's ``Docker-Content-Digest`` must agree. Referrers use the
OCI 1.1 referrers API when the registry has it, else the ``sha256-<hex>`` tag schema: an image index
tagged with the subject's digest listing its referrers (what registries without the API, such as
distribution 2.8, need; the OCI layout uses the same schema).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from diskci import mediatypes as mt
from diskci.atomic import atomic_path, write_bytes
from diskci.canonical import canonical_json
from diskci.errors import RegistryError, VerificationFailed
from diskci.registry.reference import Reference

MANIFEST_TYPES = (mt.OCI_MANIFEST, mt.OCI_INDEX)
_CHUNK = 1 << 20


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = dict(self.platform)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Descriptor:
        try:
            return cls(
                media_type=str(d["mediaType"]),
                digest=str(d["digest"]),
                size=int(d["size"]),
                artifact_type=d.get("artifactType"),
                annotations=dict(d.get("annotations") or {}),
                platform=dict(d["platform"]) if d.get("platform") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationFailed("manifest_invalid", f"malformed descriptor {d!r}: {exc}") from None

    @classmethod
    def for_bytes(cls, media_type: str, data: bytes, **kw: Any) -> Descriptor:
        return cls(media_type=media_type, digest=sha256_digest(data), size=len(data), **kw)


@dataclass(frozen=True)
class BlobSource:
    """Where a blob's bytes come from: in-memory ``data``, or ``size`` bytes of ``path`` at ``offset``."""

    data: bytes | None = None
    path: Path | None = None
    offset: int = 0
    size: int = 0

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        import io

        if self.data is not None:
            yield io.BytesIO(self.data)
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            yield f

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        with self.open() as f:
            left = self.size
            while left > 0:
                chunk = f.read(min(_CHUNK * 4, left))
                if not chunk:
                    raise RegistryError(f"{self.path}: file ended {left} bytes early")
                left -= len(chunk)
                yield chunk


class BlobBody:
    """A BlobSource as a sized, iterable request body: requests streams it and sends Content-Length."""

    def __init__(self, source: BlobSource, size: int) -> None:
        self._source = source
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        return self._source.chunks()


class RegistryClient(Protocol):
    """What push, pull, verify and retention need of a registry or a layout."""

    reference: Reference

    def has_blob(self, digest: str) -> bool: ...
    def push_blob(self, desc: Descriptor, source: BlobSource) -> bool: ...
    def push_manifest(self, data: bytes, media_type: str, *, tag: str | None = None) -> str: ...
    def resolve(self, tag_or_digest: str) -> Descriptor: ...
    def get_manifest(self, tag_or_digest: str) -> tuple[bytes, Descriptor]: ...
    def fetch_blob(
        self, desc: Descriptor, dest: Path, *, on_chunk: Callable[[int], None] | None = None
    ) -> None: ...
    def read_blob(self, desc: Descriptor) -> bytes: ...
    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]: ...
    def add_referrer(self, manifest: bytes, subject: Descriptor) -> Descriptor: ...
    def delete_manifest(self, digest: str) -> None: ...
    def delete_tag(self, tag: str) -> None: ...
    def tags(self) -> list[str]: ...


# --- shared helpers ------------------------------------------------------------------------------
def parse_manifest(data: bytes, digest: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise VerificationFailed("manifest_invalid", f"manifest {digest} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise VerificationFailed(
            "manifest_invalid", f"manifest {digest} is not an OCI schemaVersion 2 document"
        )
    return doc


def check_digest(data: bytes, digest: str, what: str) -> None:
    if sha256_digest(data) != digest:
        raise VerificationFailed(
            "manifest_invalid",
            f"{what} {digest}: content does not match its digest (got {sha256_digest(data)})",
        )


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for ``digest``: ``sha256-<hex>``."""
    algo, _, hexpart = digest.partition(":")
    return f"{algo}-{hexpart}"


def referrers_index(referrers: list[Descriptor]) -> bytes:
    return canonical_json(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [r.to_json() for r in referrers]}
    )


def referrer_descriptor(manifest: bytes) -> Descriptor:
    doc = json.loads(manifest)
    return Descriptor.for_bytes(
        doc.get("mediaType", mt.OCI_MANIFEST),
        manifest,
        artifact_type=doc.get("artifactType") or doc.get("config", {}).get("mediaType"),
        annotations=doc.get("annotations") or {},
    )


def download_verified(
    chunks: Iterator[bytes],
    desc: Descriptor,
    dest: Path,
    *,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Write ``chunks`` to ``dest`` atomically, checking size and sha256 against ``desc``;
    ``on_chunk(n)`` is told each chunk's length as it is written (byte progress)."""
    h = hashlib.sha256()
    n = 0
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                n += len(chunk)
                if n > desc.size:
                    raise VerificationFailed(
                        "digest_mismatch", f"blob {desc.digest}: more than the {desc.size} bytes announced"
                    )
                h.update(chunk)
                f.write(chunk)
                if on_chunk is not None:
                    on_chunk(len(chunk))
        got = "sha256:" + h.hexdigest()
        if n != desc.size or got != desc.digest:
            raise VerificationFailed(
                "digest_mismatch",
                f"blob {desc.digest} ({desc.annotations.get(mt.ANNOTATION_TITLE, desc.media_type)}): "
                f"received {n} bytes with digest {got}, expected {desc.size} bytes",
            )


def write_json_file(path: Path, data: Any) -> None:
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def retrying(attempts: int = 4, first_delay: float = 0.5) -> Iterator[int]:
    """Attempt numbers with exponential back-off sleeps between them."""
    for i in range(attempts):
        if i:
            time.sleep(first_delay * 2 ** (i - 1))
        yield i
