"""Where the publication verifier reads a publication from: a registry, or a directory.

Public API: ``RegistryReader(reference, fetch=...)`` (a registry repository or OCI layout; every blob
goes through the caller's ``fetch``: the platform's blob cache) and ``DirectoryReader(directory)`` (a
signed build directory, or a pulled one: ``DirectoryReader.pulled(pulled)``). Both have the shape
``diskci.supplychain.verifier.PublicationReader`` asks for; they only read, and check that what they
read is what they were asked for (digests), leaving every judgement to the verifier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path

from diskci import mediatypes as mt
from diskci.errors import VerificationFailed
from diskci.formats import fsverity as fsv
from diskci.manifest import FILENAME, sha256_file
from diskci.registry import Descriptor, RegistryClient, open_registry
from diskci.registry.publication import PUBLICATION_BUNDLE, Publication, bundle_files, plan_publication
from diskci.registry.pull import PulledPublication
from diskci.registry.reference import Reference
from diskci.registry.store import parse_manifest

__all__ = ["BlobFetcher", "DirectoryReader", "RegistryReader"]

# Download ``desc`` whole, its sha256 and size checked (and its fs-verity digest, when given), and
# return where it now is. Raises VerificationFailed(``digest_mismatch`` | ``fsverity_mismatch``).
BlobFetcher = Callable[[RegistryClient, Descriptor, str | None], Path]


class RegistryReader:
    """A publication in a registry repository (or OCI layout), opened only when first read."""

    def __init__(
        self,
        reference: str,
        *,
        fetch: BlobFetcher,
        registry: Callable[[Reference], RegistryClient] = open_registry,
    ) -> None:
        self.ref = Reference.parse(reference)  # UsageError when it does not parse
        self.name = reference
        self._fetch = fetch
        self._registry = registry

    @property
    def repository(self) -> str:
        """The reference without its tag or digest."""
        return str(Reference(self.ref.host, self.ref.repository, layout_path=self.ref.layout_path))

    @cached_property
    def client(self) -> RegistryClient:
        return self._registry(self.ref)

    def resolve(self) -> Descriptor:
        return self.client.resolve(self.ref.target)

    def manifest(self, digest: str) -> bytes:
        data, _ = self.client.get_manifest(digest)
        return data

    def bundles(self, index_digest: str) -> Iterator[tuple[str, bytes]]:
        for ref_desc in self.client.referrers(index_digest, mt.SIGSTORE_BUNDLE_V03):
            data, _ = self.client.get_manifest(ref_desc.digest)
            manifest = parse_manifest(data, ref_desc.digest)
            if (manifest.get("subject") or {}).get("digest") != index_digest:
                continue  # a stale entry of the referrers fallback tag
            layers = manifest.get("layers") or []
            if not layers:
                raise VerificationFailed("bundle_malformed", f"referrer {ref_desc.digest} carries no bundle")
            yield ref_desc.digest, self.client.read_blob(Descriptor.from_json(layers[0]))

    def config(self, desc: Descriptor) -> bytes:
        return self._fetch(self.client, desc, None).read_bytes()

    def blob(self, desc: Descriptor, fsverity: str | None) -> None:
        self._fetch(self.client, desc, fsverity)


class DirectoryReader:
    """A build directory (signed), or a pulled publication, read through ``plan_publication``.

    The index and the manifests are recomputed from build.json. For a pull, ``published_digest`` is
    the index the registry served: a directory that does not give it back is ``manifest_invalid``;
    ``sha256_checked`` says the pull already checked every file's sha256 while downloading.
    """

    repository: str | None = None

    def __init__(
        self, directory: Path, *, published_digest: str | None = None, sha256_checked: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.name = str(directory)
        self.published_digest = published_digest
        self.sha256_checked = sha256_checked

    @classmethod
    def pulled(cls, pulled: PulledPublication) -> DirectoryReader:
        return cls(pulled.directory, published_digest=pulled.index_digest, sha256_checked=True)

    @cached_property
    def publication(self) -> Publication:
        return plan_publication(self.directory)

    def resolve(self) -> Descriptor:
        index = self.publication.index_desc
        if self.published_digest is not None and self.published_digest != index.digest:
            raise VerificationFailed(
                "manifest_invalid",
                f"{self.name}: the registry's index {self.published_digest} is not the index build.json "
                f"describes ({index.digest})",
            )
        return index

    def manifest(self, digest: str) -> bytes:
        pub = self.publication
        if digest == pub.index_desc.digest:
            return pub.index
        for desc, data in pub.manifests:
            if desc.digest == digest:
                return data
        raise VerificationFailed("manifest_invalid", f"{self.name}: no manifest {digest}")

    def bundles(self, index_digest: str) -> Iterator[tuple[str, bytes]]:
        paths = sorted(bundle_files(self.directory), key=lambda p: (p.name != PUBLICATION_BUNDLE, p.name))
        for path in paths:
            yield path.name, path.read_bytes()

    def config(self, desc: Descriptor) -> bytes:
        return (self.directory / FILENAME).read_bytes()

    def blob(self, desc: Descriptor, fsverity: str | None) -> None:
        rel = desc.annotations.get(mt.ANNOTATION_PATH, "")
        path = self.directory / rel
        if not self.sha256_checked and f"sha256:{sha256_file(path)}" != desc.digest:
            raise VerificationFailed("digest_mismatch", f"{rel}: sha256 differs from build.json")
        if fsverity and fsv.hexdigest_file(path) != fsverity:
            raise VerificationFailed("fsverity_mismatch", f"{rel}: fs-verity digest differs from build.json")
