"""build.json: the contract between the build, the signer, the registry and the platform.

One file per build directory, describing every artifact of every architecture (path relative to the
build directory, media type, size, sha256 and, where it matters, fs-verity digest), the inputs (spec
digest, normalized spec, mirror and its Release digest, SOURCE_DATE_EPOCH) and every tool's version.
The schema is documented in docs/build-json.md and published as ``BuildManifest.model_json_schema()``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from diskci import __version__
from diskci.atomic import write_text
from diskci.errors import BuildError
from diskci.formats import fsverity
from diskci.mediatypes import BUILD_SCHEMA

FILENAME = "build.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Artifact(BaseModel):
    """One file of the build."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="file name, e.g. rootfs.tar")
    path: str = Field(description="path relative to the build directory, e.g. amd64/rootfs.tar")
    media_type: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    fsverity: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    annotations: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_file(
        cls,
        build_dir: Path,
        path: Path,
        media_type: str,
        *,
        with_fsverity: bool = False,
        annotations: dict[str, str] | None = None,
    ) -> Artifact:
        return cls(
            name=path.name,
            path=path.relative_to(build_dir).as_posix(),
            media_type=media_type,
            size=path.stat().st_size,
            sha256=sha256_file(path),
            fsverity=fsverity.hexdigest_file(path) if with_fsverity else None,
            annotations=annotations or {},
        )


class ArchBuild(BaseModel):
    """What was built for one architecture."""

    model_config = ConfigDict(extra="forbid")

    architecture: str
    inputs: dict[str, Any] = Field(default_factory=dict, description="mirror, Release digest, packages")
    cache: dict[str, Any] = Field(default_factory=dict, description="per stage: key and hit/miss")
    composefs_digest: str | None = None
    kernel_version: str | None = None
    artifacts: list[Artifact] = Field(default_factory=list)

    def add(self, artifact: Artifact) -> Artifact:
        self.artifacts = [a for a in self.artifacts if a.name != artifact.name] + [artifact]
        return artifact

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise BuildError(f"build.json has no artifact {name!r} for {self.architecture}")


class BuildManifest(BaseModel):
    """The whole of build.json."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(default=BUILD_SCHEMA, alias="$schema")
    diskci_version: str = __version__
    platform: str
    version: str
    spec_digest: str
    spec: dict[str, Any]
    source_date_epoch: int
    tools: dict[str, str] = Field(default_factory=dict)
    architectures: dict[str, ArchBuild] = Field(default_factory=dict)

    def arch(self, arch: str) -> ArchBuild:
        if arch not in self.architectures:
            self.architectures[arch] = ArchBuild(architecture=arch)
        return self.architectures[arch]

    def all_artifacts(self) -> list[Artifact]:
        return [a for ab in self.architectures.values() for a in ab.artifacts]

    def dumps(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"

    def save(self, build_dir: Path) -> Path:
        dest = build_dir / FILENAME
        write_text(dest, self.dumps())
        return dest

    @classmethod
    def load(cls, build_dir: Path) -> BuildManifest:
        path = build_dir / FILENAME if build_dir.is_dir() else build_dir
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise BuildError(f"{path}: no build.json (is this a diskci build directory?)") from None
        except ValueError as exc:
            raise BuildError(f"{path}: not a valid build.json: {exc}") from None
