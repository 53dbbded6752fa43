"""What a publication's verified documents say: its SBOM's package list and its provenance.

Both are read from the platform's blob cache, by the sha256 the verifier recorded for them (the SBOM
is each architecture's ``sbom.spdx.json`` artifact; the provenance is the publication's verified
build.json config blob with the signer and the source the delivery named), and the bytes are checked
against that sha256 again as they are read. A document that is not recorded, or no longer in the
cache (a pruned publication), is not an error: the answer says so per architecture (``missing``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import Field

from diskci import mediatypes as mt
from diskci.platform.actions.catalog import ActionContext, ActionModel, action
from diskci.platform.actions.publications import get_publication
from diskci.platform.db.models import Role
from diskci.platform.services.blobcache import BlobCache
from diskci.supplychain.verified import ArtifactRecord

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024  # an SBOM or build.json larger than this is not read


class PublicationDocumentInput(ActionModel):
    id: int = Field(ge=1, description="The publication's id.")
    architecture: str | None = Field(default=None, description="Only this architecture.")


class SbomPackage(ActionModel):
    name: str
    version: str
    purl: str | None = Field(description="The package URL (pkg:deb/...).")
    source: str | None = Field(description="The source package it was built from, when the SBOM says.")


class ArchSbom(ActionModel):
    architecture: str
    sbom_sha256: str | None = Field(description="The SBOM artifact's sha256 (as verified).")
    spdx_version: str | None
    root: str | None = Field(description="The package the SBOM describes (the root filesystem).")
    packages: list[SbomPackage]
    missing: str | None = Field(description="Why there is no package list (not recorded, not cached, ...).")


class SbomOutput(ActionModel):
    publication_id: int
    platform: str
    version: str
    architectures: list[ArchSbom]


def _read_verified(blobs: BlobCache, sha256: str, what: str) -> tuple[bytes | None, str | None]:
    """The bytes of a cached blob whose sha256 is ``sha256``, or (None, why not)."""
    path = blobs.path(sha256)
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            return None, f"{what} is {size} bytes, more than the {MAX_DOCUMENT_BYTES} read here"
        data = path.read_bytes()
    except FileNotFoundError:
        return None, f"{what} (sha256:{sha256[:12]}…) is not in the blob cache (pruned?)"
    except OSError as exc:
        return None, f"{what}: cannot read it from the blob cache: {exc.strerror}"
    if hashlib.sha256(data).hexdigest() != sha256:
        return None, f"{what} in the blob cache does not match its sha256 (the cache is damaged)"
    return data, None


def _json_document(blobs: BlobCache, sha256: str, what: str) -> tuple[dict[str, Any] | None, str | None]:
    data, missing = _read_verified(blobs, sha256, what)
    if data is None:
        return None, missing
    try:
        doc = json.loads(data)
    except ValueError as exc:
        return None, f"{what} is not JSON: {exc}"
    if not isinstance(doc, dict):
        return None, f"{what} is not a JSON object"
    return doc, None


def _purl(package: dict[str, Any]) -> str | None:
    for ref in package.get("externalRefs") or []:
        if isinstance(ref, dict) and ref.get("referenceType") == "purl":
            locator = ref.get("referenceLocator")
            return str(locator) if locator is not None else None
    return None


def sbom_packages(doc: dict[str, Any]) -> tuple[str | None, list[SbomPackage]]:
    """An SPDX 2.x document's described package (its name) and every other package, by name."""
    described = {
        rel.get("relatedSpdxElement")
        for rel in doc.get("relationships") or []
        if isinstance(rel, dict) and rel.get("relationshipType") == "DESCRIBES"
    }
    root: str | None = None
    out: list[SbomPackage] = []
    for package in doc.get("packages") or []:
        if not isinstance(package, dict):
            continue
        name = str(package.get("name", ""))
        if package.get("SPDXID") in described:
            root = name
            continue
        source = package.get("sourceInfo")
        out.append(
            SbomPackage(
                name=name,
                version=str(package.get("versionInfo", "")),
                purl=_purl(package),
                source=str(source).removeprefix("built from the source package ") if source else None,
            )
        )
    out.sort(key=lambda p: (p.name, p.version))
    return root, out


def _arches(ctx: ActionContext, data: PublicationDocumentInput) -> tuple[Any, list[str]]:
    pub = get_publication(ctx.session, data.id)
    artifacts = pub.verified_artifacts
    names = list(artifacts.root)
    if data.architecture is not None:
        names = [a for a in names if a == data.architecture]
    return pub, names


@action(
    "system_get_disk_image_publication_sbom",
    PublicationDocumentInput,
    SbomOutput,
    Role.VIEWER,
    read_only=True,
)
def system_get_disk_image_publication_sbom(ctx: ActionContext, data: PublicationDocumentInput) -> SbomOutput:
    """The packages of a publication's SBOM (its verified sbom.spdx.json), per architecture.

    Example: {"id": 12, "architecture": "amd64"}
    """
    pub, names = _arches(ctx, data)
    blobs = BlobCache(ctx.settings.blob_dir)
    out: list[ArchSbom] = []
    for arch in names:
        files = pub.verified_artifacts.root[arch]
        record: ArtifactRecord | None = next(
            (f for f in files.artifacts if f.media_type == mt.SBOM_SPDX), None
        )
        if record is None:
            out.append(
                ArchSbom(
                    architecture=arch,
                    sbom_sha256=None,
                    spdx_version=None,
                    root=None,
                    packages=[],
                    missing="the publication records no SBOM for this architecture",
                )
            )
            continue
        doc, missing = _json_document(blobs, record.sha256, record.name)
        root, packages = sbom_packages(doc) if doc is not None else (None, [])
        out.append(
            ArchSbom(
                architecture=arch,
                sbom_sha256=record.sha256,
                spdx_version=str(doc.get("spdxVersion")) if doc is not None else None,
                root=root,
                packages=packages,
                missing=missing,
            )
        )
    return SbomOutput(
        publication_id=pub.id, platform=pub.platform.name, version=pub.version, architectures=out
    )


class ArchBuildInputs(ActionModel):
    architecture: str
    config_sha256: str | None = Field(description="The verified build.json config blob's sha256.")
    kernel_version: str | None
    inputs: dict[str, Any] = Field(description="What the build read: mirror, Release digest, ...")


class BuildRecord(ActionModel):
    diskci_version: str | None
    spec_digest: str | None
    source_date_epoch: int | None
    tools: dict[str, str]


class ProvenanceOutput(ActionModel):
    publication_id: int
    platform: str
    version: str
    manifest_digest: str
    signer_identity: str | None
    signer_issuer: str | None
    signed_at: datetime | None
    source: dict[str, Any] | None = Field(description="The repository, ref and commit the delivery named.")
    build: BuildRecord | None = Field(description="From the verified build.json (the same in every arch).")
    architectures: list[ArchBuildInputs]
    missing: str | None = Field(description="Why build.json could not be read, if it could not.")


@action(
    "system_get_disk_image_publication_provenance",
    PublicationDocumentInput,
    ProvenanceOutput,
    Role.VIEWER,
    read_only=True,
)
def system_get_disk_image_publication_provenance(
    ctx: ActionContext, data: PublicationDocumentInput
) -> ProvenanceOutput:
    """What a publication was built from and who signed it: its source, signer and verified build.json.

    Example: {"id": 12}
    """
    pub, names = _arches(ctx, data)
    blobs = BlobCache(ctx.settings.blob_dir)
    build: BuildRecord | None = None
    problems: list[str] = []
    arches: list[ArchBuildInputs] = []
    for arch in names:
        files = pub.verified_artifacts.root[arch]
        inputs: dict[str, Any] = {}
        if files.config_sha256 is None:
            problems.append(f"{arch}: no build.json recorded")
        else:
            doc, missing = _json_document(blobs, files.config_sha256, f"{arch} build.json")
            if doc is None:
                problems.append(missing or f"{arch}: build.json unreadable")
            else:
                if build is None:
                    tools = doc.get("tools") if isinstance(doc.get("tools"), dict) else {}
                    epoch = doc.get("source_date_epoch")
                    build = BuildRecord(
                        diskci_version=_text(doc.get("diskci_version")),
                        spec_digest=_text(doc.get("spec_digest")),
                        source_date_epoch=epoch if isinstance(epoch, int) else None,
                        tools={str(k): str(v) for k, v in (tools or {}).items()},
                    )
                record = (doc.get("architectures") or {}).get(arch)
                if isinstance(record, dict) and isinstance(record.get("inputs"), dict):
                    inputs = record["inputs"]
        arches.append(
            ArchBuildInputs(
                architecture=arch,
                config_sha256=files.config_sha256,
                kernel_version=files.kernel_version,
                inputs=inputs,
            )
        )
    return ProvenanceOutput(
        publication_id=pub.id,
        platform=pub.platform.name,
        version=pub.version,
        manifest_digest=pub.manifest_digest,
        signer_identity=pub.signer_identity,
        signer_issuer=pub.signer_issuer,
        signed_at=pub.signed_at,
        source=pub.source,
        build=build,
        architectures=arches,
        missing="; ".join(problems) or None,
    )


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None
