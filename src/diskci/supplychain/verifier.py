"""The one definition of a valid publication: every check, in order, each failure with its own reason.

Public API: ``PublicationVerifier(policy, trusted_root).verify(reader, expect) -> Verification``, used
by the platform's ``DiskImagePublicationProcessor`` (a ``RegistryReader`` over its blob cache) and by
``diskci verify`` through ``verify_publication(source, policy, ...) -> VerifiedPublication`` (a
reference is pulled, then read with a ``DirectoryReader``, as is a local directory).

The checks (a failure raises ``VerificationFailed(reason, message)``; the reader raises
``manifest_invalid``/``digest_mismatch`` for bytes that are not what their digest says, and the
registry ``RegistryError`` when it cannot be reached):

  0. the reference lies in the expected repository                         ``reference_mismatch``
  1. the index is the expected one (the delivered digest)                   ``digest_mismatch``
  2. it is an OCI image index                                               ``manifest_invalid``
  3. every sigstore bundle referring to it verifies against the policy      ``bundle_malformed``,
     (``diskci.supplychain.bundle.verify_bundle``)                          ``unknown_ca``,
     ``certificate_expired``, ``issuer_mismatch``, ``identity_mismatch``, ``signature_invalid``,
     ``tlog_invalid``
  4. one of them signs the index                                            ``signature_missing``
  5. each diskci image manifest names one architecture, listed once         ``manifest_invalid``
  6. its config is build.json, for the expected platform and version,
     with a section for that architecture                                   ``manifest_invalid``
  7. each layer is a build.json artifact, once, with its digest, size,
     media type and fs-verity annotation; root and composefs images
     record an fs-verity digest                                             ``manifest_invalid``
  8. each layer's bytes: sha256 and size                                    ``digest_mismatch``
     and the fs-verity digest build.json records                            ``fsverity_mismatch``
  9. every build.json artifact of the architecture is in the manifest       ``manifest_invalid``
 10. every expected architecture has an image, and there is at least one    ``manifest_invalid``
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sigstore.models import TrustedRoot

from diskci import mediatypes as mt
from diskci.errors import VerificationFailed
from diskci.manifest import BuildManifest
from diskci.registry import Descriptor
from diskci.registry.store import parse_manifest
from diskci.supplychain.bundle import BundleVerification, load_trusted_root, verify_bundle
from diskci.supplychain.policy import IdentityPolicy
from diskci.supplychain.readers import DirectoryReader
from diskci.supplychain.verified import ArchArtifacts, ArtifactRecord, PublicationArtifacts

__all__ = [
    "FSVERITY_MEDIA_TYPES",
    "FSVERITY_NAMES",
    "Expectation",
    "PublicationReader",
    "PublicationVerifier",
    "Verification",
    "VerifiedPublication",
    "verify_publication",
]

# Artifacts that must record an fs-verity digest (recomputed from the bytes like every recorded one).
FSVERITY_MEDIA_TYPES = frozenset({mt.ROOT_IMAGE, mt.COMPOSEFS_IMAGE})
FSVERITY_NAMES = frozenset({"rootfs.img"})


class PublicationReader(Protocol):
    """Where a publication is read from (``diskci.supplychain.readers``)."""

    @property
    def name(self) -> str: ...  # for messages

    @property
    def repository(self) -> str | None: ...  # the registry repository; None for a directory

    def resolve(self) -> Descriptor: ...  # the index the reference names

    def manifest(self, digest: str) -> bytes: ...  # a manifest's bytes

    def bundles(self, index_digest: str) -> Iterator[tuple[str, bytes]]: ...  # (name, bundle JSON)

    def config(self, desc: Descriptor) -> bytes: ...  # the build.json config blob, digest-checked

    def blob(self, desc: Descriptor, fsverity: str | None) -> None: ...  # step 8, for one layer


@dataclass(frozen=True)
class Expectation:
    """What the publication must be beyond validly signed (None: anything)."""

    repository: str | None = None
    index_digest: str | None = None
    platform: str | None = None
    version: str | None = None
    architectures: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verification:
    """What a successful ``PublicationVerifier.verify`` established."""

    index_digest: str
    platform: str
    version: str
    signature: BundleVerification  # the bundle over the index (step 4)
    bundles: list[BundleVerification]
    artifacts: PublicationArtifacts
    fsverity_checked: int

    @property
    def signed_at(self) -> datetime:
        return datetime.fromtimestamp(self.signature.integrated_time, UTC)

    @property
    def artifact_count(self) -> int:
        return sum(len(a.artifacts) for a in self.artifacts.root.values())

    @property
    def artifact_bytes(self) -> int:
        return sum(f.size for a in self.artifacts.root.values() for f in a.artifacts)


class PublicationVerifier:
    """Runs the checks of the module docstring against one identity policy and trusted root.

    ``check_fsverity=False`` skips recomputing fs-verity digests (``diskci verify --no-fsverity``).
    """

    def __init__(
        self, policy: IdentityPolicy, trusted_root: TrustedRoot, *, check_fsverity: bool = True
    ) -> None:
        self.policy = policy
        self.trusted_root = trusted_root
        self.check_fsverity = check_fsverity

    def verify(self, reader: PublicationReader, expect: Expectation | None = None) -> Verification:
        expect = expect or Expectation()
        # 0. The reference names the expected repository.
        if expect.repository is not None and reader.repository != expect.repository.rstrip("/"):
            raise VerificationFailed(
                "reference_mismatch", f"{reader.name} is not in the platform's repository {expect.repository}"
            )
        # 1. The index is the expected one.
        index_desc = reader.resolve()
        if expect.index_digest is not None and index_desc.digest != expect.index_digest:
            raise VerificationFailed(
                "digest_mismatch",
                f"{reader.name} resolves to {index_desc.digest}, "
                f"the delivery announced {expect.index_digest}",
            )
        # 2. It is an OCI image index.
        index = parse_manifest(reader.manifest(index_desc.digest), index_desc.digest)
        if index.get("mediaType") != mt.OCI_INDEX:
            raise VerificationFailed("manifest_invalid", f"{index_desc.digest} is not an OCI image index")
        # 3-4. The signatures.
        signature, bundles = self._signatures(reader, index_desc.digest)
        # 5-9. Each diskci image manifest (runnable OCI images are not what the platform serves).
        artifacts: dict[str, ArchArtifacts] = {}
        build: BuildManifest | None = None
        checked = 0
        for entry in index.get("manifests") or []:
            desc = Descriptor.from_json(entry)
            if desc.artifact_type != mt.ARTIFACT_TYPE_IMAGE:
                continue
            arch = desc.annotations.get(mt.ANNOTATION_ARCH) or (desc.platform or {}).get("architecture")
            manifest = parse_manifest(reader.manifest(desc.digest), desc.digest)
            # 5. one architecture, listed once
            if manifest.get("artifactType") != mt.ARTIFACT_TYPE_IMAGE:
                raise VerificationFailed(
                    "manifest_invalid", f"manifest {desc.digest} is not a diskci image manifest"
                )
            if not arch:
                raise VerificationFailed("manifest_invalid", f"manifest {desc.digest} names no architecture")
            if arch in artifacts:
                raise VerificationFailed("manifest_invalid", f"the index lists {arch} twice")
            build, artifacts[arch], n = self._arch(reader, expect, arch, desc.digest, manifest)
            checked += n
        # 10. Every expected architecture, and at least one.
        missing = sorted(set(expect.architectures) - set(artifacts))
        if missing:
            raise VerificationFailed(
                "manifest_invalid",
                f"{reader.name} has no image for {', '.join(missing)} (the platform needs them)",
            )
        if build is None:
            raise VerificationFailed("manifest_invalid", f"{reader.name} holds no diskci image manifest")
        return Verification(
            index_digest=index_desc.digest,
            platform=build.platform,
            version=build.version,
            signature=signature,
            bundles=bundles,
            artifacts=PublicationArtifacts(artifacts),
            fsverity_checked=checked,
        )

    def _signatures(
        self, reader: PublicationReader, index_digest: str
    ) -> tuple[BundleVerification, list[BundleVerification]]:
        results: list[BundleVerification] = []
        signed: BundleVerification | None = None
        for name, bundle in reader.bundles(index_digest):
            # 3. every bundle verifies, for this index, against the policy
            result = verify_bundle(
                bundle,
                subject_digest=index_digest,
                policy=self.policy,
                trusted_root=self.trusted_root,
                name=name,
            )
            results.append(result)
            if result.predicate_type == mt.COSIGN_SIGN_PREDICATE and signed is None:
                signed = result
        # 4. one of them is the signature over the index
        if signed is None:
            raise VerificationFailed(
                "signature_missing",
                f"no verified signature over {index_digest} ({len(results)} other bundle(s) found)",
            )
        return signed, results

    def _arch(
        self, reader: PublicationReader, expect: Expectation, arch: str, digest: str, manifest: dict[str, Any]
    ) -> tuple[BuildManifest, ArchArtifacts, int]:
        # 6. build.json, for the expected platform and version, with this architecture
        config = Descriptor.from_json(manifest.get("config") or {})
        if config.media_type != mt.BUILD_JSON:
            raise VerificationFailed(
                "manifest_invalid", f"{arch} manifest {digest}: config is not build.json"
            )
        try:
            build = BuildManifest.model_validate_json(reader.config(config))
        except ValueError as exc:
            raise VerificationFailed("manifest_invalid", f"{arch} build.json is not valid: {exc}") from None
        if (expect.platform is not None and build.platform != expect.platform) or (
            expect.version is not None and build.version != expect.version
        ):
            raise VerificationFailed(
                "manifest_invalid",
                f"{arch} build.json is {build.platform}:{build.version}, "
                f"the delivery is {expect.platform}:{expect.version}",
            )
        if arch not in build.architectures:
            raise VerificationFailed("manifest_invalid", f"build.json has no {arch} section")
        arch_build = build.architectures[arch]
        recorded = {a.name: a for a in arch_build.artifacts}
        seen: set[str] = set()
        files: list[ArtifactRecord] = []
        checked = 0
        for layer in (Descriptor.from_json(d) for d in manifest.get("layers") or []):
            # 7. the layer is a build.json artifact, once, exactly as recorded
            name = layer.annotations.get(mt.ANNOTATION_TITLE)
            if not name or name not in recorded:
                raise VerificationFailed(
                    "manifest_invalid",
                    f"{arch} layer {layer.digest} ({name!r}) is not an artifact of build.json",
                )
            if name in seen:
                raise VerificationFailed("manifest_invalid", f"{arch}: artifact {name} appears twice")
            seen.add(name)
            art = recorded[name]
            if (
                layer.digest != f"sha256:{art.sha256}"
                or layer.size != art.size
                or layer.media_type != art.media_type
            ):
                raise VerificationFailed(
                    "manifest_invalid",
                    f"{arch}/{name}: the manifest says {layer.media_type} {layer.size} bytes {layer.digest}, "
                    f"build.json says {art.media_type} {art.size} bytes sha256:{art.sha256}",
                )
            annotated = layer.annotations.get(mt.ANNOTATION_FSVERITY)
            if annotated and annotated.removeprefix("sha256:") != (art.fsverity or ""):
                raise VerificationFailed(
                    "manifest_invalid", f"{arch}/{name}: fs-verity annotation differs from build.json"
                )
            if (art.media_type in FSVERITY_MEDIA_TYPES or name in FSVERITY_NAMES) and not art.fsverity:
                raise VerificationFailed(
                    "manifest_invalid", f"{arch}/{name}: build.json records no fs-verity digest"
                )
            # 8. the bytes (and their fs-verity digest)
            verity = art.fsverity if self.check_fsverity else None
            reader.blob(layer, verity)
            checked += verity is not None
            files.append(
                ArtifactRecord(
                    name=name,
                    media_type=art.media_type,
                    size=art.size,
                    sha256=art.sha256,
                    fsverity=art.fsverity,
                    digest=layer.digest,
                )
            )
        # 9. nothing of build.json is left out
        absent = sorted(set(recorded) - seen)
        if absent:
            raise VerificationFailed(
                "manifest_invalid", f"{arch}: build.json artifacts not in the manifest: {absent}"
            )
        spec = build.spec or {}
        cmdline = (spec.get("arch_kernel_cmdline") or {}).get(arch) or spec.get("kernel_cmdline") or ""
        return (
            build,
            ArchArtifacts(
                manifest_digest=digest,
                config_sha256=config.digest.removeprefix("sha256:"),
                composefs_digest=arch_build.composefs_digest,
                kernel_version=arch_build.kernel_version,
                cmdline=str(cmdline),
                artifacts=files,
            ),
            checked,
        )


# --- diskci verify --------------------------------------------------------------------------------
@dataclass
class VerifiedPublication:
    """What ``verify_publication`` reports (``diskci verify``)."""

    source: str
    index_digest: str
    platform: str
    version: str
    identity: str
    issuer: str
    bundles: list[BundleVerification] = field(default_factory=list)
    artifacts: int = 0
    bytes: int = 0
    fsverity_checked: int = 0
    directory: Path | None = None


def verify_publication(
    source: str | Path,
    policy: IdentityPolicy,
    *,
    trusted_root: Path | TrustedRoot | None = None,
    dest: Path | None = None,
    check_fsverity: bool = True,
    on_bytes: Callable[[int, int], None] | None = None,
) -> VerifiedPublication:
    """Verify a publication at a reference (pulled, every digest checked) or in a local directory.

    ``source``: ``host/repo:tag``, ``oci-layout:PATH:tag`` or a directory (a signed build, or a pull).
    ``dest``: where to keep the pulled publication (default: a temporary directory, removed after).
    ``on_bytes(received, expected)``: the pull's byte progress (``pull_publication``).
    """
    root = trusted_root if isinstance(trusted_root, TrustedRoot) else load_trusted_root(trusted_root)
    verifier = PublicationVerifier(policy, root, check_fsverity=check_fsverity)
    tmp: Path | None = None
    try:
        if isinstance(source, Path) or Path(str(source)).is_dir():
            reader = DirectoryReader(Path(source))
        else:
            from diskci.registry.pull import pull_publication

            if dest is None:
                tmp = Path(tempfile.mkdtemp(prefix="diskci-verify-"))
                dest = tmp / "publication"
            reader = DirectoryReader.pulled(pull_publication(str(source), dest, on_bytes=on_bytes))
        result = verifier.verify(reader)
        return VerifiedPublication(
            source=str(source),
            index_digest=result.index_digest,
            platform=result.platform,
            version=result.version,
            identity=result.signature.identity,
            issuer=result.signature.issuer,
            bundles=result.bundles,
            artifacts=result.artifact_count,
            bytes=result.artifact_bytes,
            fsverity_checked=result.fsverity_checked,
            directory=None if tmp else reader.directory,
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
