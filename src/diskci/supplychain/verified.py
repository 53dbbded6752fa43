"""What a verified publication holds: per architecture, the files the verifier checked.

Public API: ``PublicationArtifacts`` (architecture → ``ArchArtifacts`` → ``ArtifactRecord``), made by
``diskci.supplychain.verifier`` and stored by the platform as ``DiskImagePublication.artifacts`` (a
JSON column) in exactly this shape::

    {"amd64": {"manifest_digest": "sha256:..", "config_sha256": "<hex>",
               "composefs_digest": "<fs-verity hex>", "kernel_version": "..", "cmdline": "..",
               "artifacts": [{"name": "rootfs.erofs", "media_type": "..", "size": 1,
                              "sha256": "<hex>", "fsverity": "<hex>|null", "digest": "sha256:.."}]}}

Every blob the platform must keep for a publication is a file's ``sha256`` or an architecture's
``config_sha256`` (``blob_digests``; ``blob_digests_in_json`` finds the same digests in the stored JSON
text without decoding it, for scans over many rows).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

__all__ = ["ArchArtifacts", "ArtifactRecord", "PublicationArtifacts"]

# The JSON keys whose values are blob digests (see ``PublicationArtifacts.blob_digests``).
_BLOB_DIGEST_JSON = re.compile(r'"(?:sha256|config_sha256)"\s*:\s*"([0-9a-f]{64})"')


class ArtifactRecord(BaseModel):
    """One verified file: its build.json record and the registry blob it was downloaded from."""

    model_config = ConfigDict(frozen=True)

    name: str
    media_type: str
    size: int
    sha256: str
    fsverity: str | None = None
    digest: str


class ArchArtifacts(BaseModel):
    """The verified image manifest of one architecture and its files."""

    model_config = ConfigDict(frozen=True)

    manifest_digest: str | None = None
    config_sha256: str | None = None
    composefs_digest: str | None = None
    kernel_version: str | None = None
    cmdline: str = ""
    artifacts: list[ArtifactRecord] = Field(default_factory=list)

    def file(self, name: str) -> ArtifactRecord | None:
        """The file called ``name``, or None."""
        return next((a for a in self.artifacts if a.name == name), None)


class PublicationArtifacts(RootModel[dict[str, ArchArtifacts]]):
    """Architecture → its verified files, in the index's order."""

    model_config = ConfigDict(frozen=True)

    root: dict[str, ArchArtifacts] = Field(default_factory=dict)

    def arch(self, arch: str) -> ArchArtifacts | None:
        return self.root.get(arch)

    @property
    def architectures(self) -> list[str]:
        return sorted(self.root)

    @property
    def composefs_digest(self) -> str | None:
        """The first architecture's composefs digest (in index order) that is recorded."""
        return next((a.composefs_digest for a in self.root.values() if a.composefs_digest), None)

    def manifest_digests(self) -> list[str]:
        """The per-architecture image manifests (what pruning deletes beside the index)."""
        return [a.manifest_digest for a in self.root.values() if a.manifest_digest]

    def blob_digests(self) -> set[str]:
        """Every blob (hex sha256) the publication needs: each file and each build.json config."""
        out = {f.sha256 for a in self.root.values() for f in a.artifacts}
        out.update(a.config_sha256 for a in self.root.values() if a.config_sha256)
        return out

    @staticmethod
    def blob_digests_in_json(text: str) -> list[str]:
        """``blob_digests`` of the stored JSON text, found without decoding it (fast over many rows)."""
        return _BLOB_DIGEST_JSON.findall(text)

    def to_json(self) -> dict[str, Any]:
        """The stored shape (what ``DiskImagePublication.artifacts`` holds)."""
        return self.model_dump(mode="json")
