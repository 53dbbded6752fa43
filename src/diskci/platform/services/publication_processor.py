"""DiskImagePublicationProcessor: turn a ``disk_image_built`` delivery into a verified publication.

Deny by default (sigstore policy-controller's stance): a publication becomes ``published`` only when
every step below passed, and then in one transaction together with its ``disk_image_published``
event. Any failed check marks it ``failed`` with a stable reason code and a
``disk_image_publication_failed`` event carrying that reason.

  1. load the delivery and the platform's policy (identity regexp, issuer, trusted root);
  2. claim the publication row;
  3. resolve the reference, which must lie in the platform's repository    ``reference_mismatch``
  4. the index digest equals the delivered ``manifest_digest``             ``digest_mismatch``
  5. find the sigstore bundles referring to the index                      ``signature_missing``
  6. verify every bundle (sigstore-python) against the policy              ``signature_invalid``,
     ``identity_mismatch``, ``issuer_mismatch``, ``unknown_ca``, ``tlog_invalid``, ...
  7. download every artifact blob into the blob cache, checking sha256     ``digest_mismatch``
     and, for root and composefs images, the fs-verity digest of build.json ``fsverity_mismatch``
  8. build.json agrees with the manifests, every architecture present      ``manifest_invalid``
  9. one transaction: ``published`` + ``disk_image_published``.
A registry that cannot be reached is ``registry_unreachable`` once the queue's retries are spent.

Idempotence: publications are unique per (platform, index digest). The row is claimed first (inserted
as ``processing``, or taken over from ``processing``/``failed``); the final write is a compare-and-set
from that state, so the same manifest delivered twice, processed concurrently, or retried after a
worker died mid-way gives exactly one publication and one ``disk_image_published`` event. The blob
cache only ever holds whole, verified blobs, so a retry reuses what was already downloaded.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from diskci import mediatypes as mt
from diskci.errors import NotFound, PlatformError, RegistryError, UsageError, VerificationFailed
from diskci.manifest import BuildManifest
from diskci.platform.db.models import (
    DiskImagePublication,
    Event,
    NodePlatform,
    PublicationStatus,
    WebhookDelivery,
)
from diskci.platform.db.session import Database, rowcount
from diskci.platform.services.blobcache import BlobCache
from diskci.registry.client import Descriptor, RegistryClient, open_registry, parse_manifest
from diskci.registry.reference import Reference

log = logging.getLogger(__name__)


AUTHORITY_DIR = "authority"  # under the state directory: the embedded signing authority
# Artifacts whose fs-verity digest (recorded in build.json) is recomputed from the downloaded bytes.
FSVERITY_MEDIA_TYPES = frozenset({mt.ROOT_IMAGE, mt.COMPOSEFS_IMAGE})
FSVERITY_NAMES = frozenset({"rootfs.img"})


def registry_failure_reason(exc: RegistryError) -> str:
    """``registry_unreachable`` (transient: connection refused, timeouts, 5xx), ``reference_not_found``,
    or ``registry_error`` (any other refusal)."""
    import requests

    text = exc.message
    if isinstance(exc.__cause__, requests.RequestException) or "cannot reach registry" in text:
        return "registry_unreachable"
    if re.search(r"answered 5\d\d", text):
        return "registry_unreachable"
    if "not found" in text:
        return "reference_not_found"
    return "registry_error"


class RetryLater(PlatformError):
    """A transient failure (registry unreachable) with attempts left: the queue runs the task again."""

    http_status = 503


@dataclass(frozen=True)
class DeliveryInfo:
    delivery_id: str
    platform_id: int
    platform: str
    architectures: list[str]
    repository: str
    identity_regexp: str
    issuer: str
    trusted_root: str | None
    version: str
    reference: str
    manifest_digest: str
    critical: bool
    source: dict[str, Any] | None


@dataclass
class Verified:
    artifacts: dict[str, Any]
    composefs_digest: str | None
    signer_identity: str | None
    signer_issuer: str | None
    signed_at: datetime | None


@dataclass
class Outcome:
    publication_id: int
    status: str
    reason: str | None = None
    detail: str | None = None
    duplicate: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "publication_id": self.publication_id,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True)
class SignatureResult:
    identity: str | None
    issuer: str | None
    signed_at: datetime | None


class DiskImagePublicationProcessor:
    """Runs the checks of the module docstring for one delivery (``process``)."""

    def __init__(
        self,
        *,
        database: Database,
        blobs: BlobCache,
        authority_dir: Path,
        registry: Callable[[Reference], RegistryClient] = open_registry,
        work_dir: Path | None = None,
    ) -> None:
        self.database = database
        self.blobs = blobs
        self.authority_dir = Path(authority_dir)
        self.registry = registry
        self.work_dir = work_dir or blobs.root / "tmp"

    # --- entry point -----------------------------------------------------------------------------
    def process(self, delivery_id: str, *, final_attempt: bool = True) -> Outcome:
        # 1. Load the delivery and its platform's policy.
        info = self._load(delivery_id)
        # 2. Claim the publication row (or find it already decided).
        claimed = self._claim(info)
        if isinstance(claimed, Outcome):
            return claimed
        try:
            verified = self._verify(info)  # steps 3-8
        except VerificationFailed as exc:
            return self._fail(claimed, info, exc.reason, exc.message.removeprefix(f"{exc.reason}: "))
        except RegistryError as exc:
            reason = registry_failure_reason(exc)
            if reason == "registry_unreachable" and not final_attempt:
                log.warning("delivery %s: registry unreachable, will retry: %s", delivery_id, exc)
                raise RetryLater(f"registry unreachable: {exc.message}") from exc
            return self._fail(claimed, info, reason, exc.message)
        except UsageError as exc:  # an unparsable reference
            return self._fail(claimed, info, "manifest_invalid", exc.message)
        return self._publish(claimed, info, verified)

    # --- database steps --------------------------------------------------------------------------
    def _load(self, delivery_id: str) -> DeliveryInfo:
        with self.database.read_session() as s:
            delivery = s.scalar(select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id))
            if delivery is None:
                raise NotFound(f"no webhook delivery {delivery_id!r}")
            payload = delivery.payload or {}
            platform = None
            if delivery.platform_id is not None:
                platform = s.get(NodePlatform, delivery.platform_id)
            if platform is None and payload.get("node_platform"):
                platform = s.scalar(select(NodePlatform).where(NodePlatform.name == payload["node_platform"]))
            if platform is None:
                raise NotFound(f"delivery {delivery_id}: no NodePlatform {payload.get('node_platform')!r}")
            try:
                return DeliveryInfo(
                    delivery_id=delivery_id,
                    platform_id=platform.id,
                    platform=platform.name,
                    architectures=list(platform.architectures or []),
                    repository=platform.registry_repository,
                    identity_regexp=platform.cosign_identity_regexp,
                    issuer=platform.cosign_oidc_issuer,
                    trusted_root=platform.trusted_root,
                    version=str(payload["version"]),
                    reference=str(payload["reference"]),
                    manifest_digest=str(payload["manifest_digest"]),
                    critical=bool(payload.get("critical", False)),
                    source=payload.get("source"),
                )
            except KeyError as exc:
                raise UsageError(f"delivery {delivery_id}: payload lacks {exc.args[0]!r}") from None

    def _claim(self, info: DeliveryInfo) -> int | Outcome:
        """The id of a row now ``processing`` for this work, or the Outcome when nothing is left to do."""
        for _ in range(3):
            with self.database.session() as s:
                pub = s.scalar(
                    select(DiskImagePublication).where(
                        DiskImagePublication.platform_id == info.platform_id,
                        DiskImagePublication.manifest_digest == info.manifest_digest,
                    )
                )
                if pub is not None:
                    if pub.status in (PublicationStatus.PUBLISHED.value, PublicationStatus.PRUNED.value):
                        self._link_delivery(s, info, pub.id)
                        return Outcome(pub.id, pub.status, pub.failure_reason, duplicate=True)
                    # processing (a worker died, or is still at it) or failed (retry): take it over.
                    pub.status = PublicationStatus.PROCESSING.value
                    pub.delivery_id = info.delivery_id
                    pub.critical = pub.critical or info.critical
                    self._link_delivery(s, info, pub.id)
                    return pub.id
            try:
                with self.database.session() as s:
                    pub = DiskImagePublication(
                        platform_id=info.platform_id,
                        version=info.version,
                        reference=info.reference,
                        manifest_digest=info.manifest_digest,
                        status=PublicationStatus.PROCESSING.value,
                        critical=info.critical,
                        source=info.source,
                        delivery_id=info.delivery_id,
                    )
                    s.add(pub)
                    s.flush()
                    self._link_delivery(s, info, pub.id)
                    return pub.id
            except IntegrityError:
                continue  # another worker inserted it first: read it again
        raise PlatformError(f"delivery {info.delivery_id}: could not claim the publication row")

    @staticmethod
    def _link_delivery(s: Any, info: DeliveryInfo, pub_id: int) -> None:
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.delivery_id == info.delivery_id)
            .values(publication_id=pub_id)
        )

    def _publish(self, pub_id: int, info: DeliveryInfo, v: Verified) -> Outcome:
        # 9. One transaction: the row becomes published and the event is added. Compare-and-set: from
        # processing, or from failed (a concurrent worker's failure loses to a complete verification).
        now = datetime.now(UTC)
        with self.database.session() as s:
            changed = rowcount(
                s.execute(
                    update(DiskImagePublication)
                    .where(
                        DiskImagePublication.id == pub_id,
                        DiskImagePublication.status.in_(
                            [PublicationStatus.PROCESSING.value, PublicationStatus.FAILED.value]
                        ),
                    )
                    .values(
                        status=PublicationStatus.PUBLISHED.value,
                        failure_reason=None,
                        failure_detail=None,
                        version=info.version,
                        reference=info.reference,
                        artifacts=v.artifacts,
                        composefs_digest=v.composefs_digest,
                        signer_identity=v.signer_identity,
                        signer_issuer=v.signer_issuer,
                        signed_at=v.signed_at,
                        updated_at=now,
                    )
                )
            )
            if changed:
                s.add(
                    Event(
                        type="disk_image_published",
                        platform_id=info.platform_id,
                        subject=f"{info.platform}:{info.version}",
                        payload={
                            "publication_id": pub_id,
                            "delivery_id": info.delivery_id,
                            "manifest_digest": info.manifest_digest,
                            "reference": info.reference,
                            "architectures": sorted(v.artifacts),
                            "signer_identity": v.signer_identity,
                            "critical": info.critical,
                        },
                    )
                )
            status = s.scalar(select(DiskImagePublication.status).where(DiskImagePublication.id == pub_id))
        return Outcome(pub_id, str(status), duplicate=not changed)

    def _fail(self, pub_id: int, info: DeliveryInfo, reason: str, detail: str) -> Outcome:
        log.warning("publication %s:%s failed: %s: %s", info.platform, info.version, reason, detail)
        with self.database.session() as s:
            changed = rowcount(
                s.execute(
                    update(DiskImagePublication)
                    .where(
                        DiskImagePublication.id == pub_id,
                        DiskImagePublication.status == PublicationStatus.PROCESSING.value,
                    )
                    .values(
                        status=PublicationStatus.FAILED.value,
                        failure_reason=reason,
                        failure_detail=detail[:4000],
                        updated_at=datetime.now(UTC),
                    )
                )
            )
            if changed:
                s.add(
                    Event(
                        type="disk_image_publication_failed",
                        platform_id=info.platform_id,
                        subject=f"{info.platform}:{info.version}",
                        reason=reason,
                        payload={
                            "publication_id": pub_id,
                            "delivery_id": info.delivery_id,
                            "manifest_digest": info.manifest_digest,
                            "reference": info.reference,
                            "detail": detail[:2000],
                        },
                    )
                )
            status = s.scalar(select(DiskImagePublication.status).where(DiskImagePublication.id == pub_id))
        return Outcome(pub_id, str(status), reason if changed else None, detail, duplicate=not changed)

    # --- verification ----------------------------------------------------------------------------
    def _verify(self, info: DeliveryInfo) -> Verified:
        # 3. Resolve the reference, which must name the platform's own repository.
        ref = Reference.parse(info.reference)
        base = str(Reference(ref.host, ref.repository, layout_path=ref.layout_path))
        if base != info.repository.rstrip("/"):
            raise VerificationFailed(
                "reference_mismatch",
                f"{info.reference} is not in the platform's repository {info.repository}",
            )
        client = self.registry(ref)
        index_desc = client.resolve(ref.target)
        # 4. The index digest must be the one that was delivered (and signed).
        if index_desc.digest != info.manifest_digest:
            raise VerificationFailed(
                "digest_mismatch",
                f"{info.reference} resolves to {index_desc.digest}, "
                f"the delivery announced {info.manifest_digest}",
            )
        index_bytes, index_desc = client.get_manifest(index_desc.digest)
        index = parse_manifest(index_bytes, index_desc.digest)
        if index.get("mediaType") != mt.OCI_INDEX:
            raise VerificationFailed("manifest_invalid", f"{index_desc.digest} is not an OCI image index")
        # 5-6. Find the signature bundles and verify them against the platform's policy.
        signature = self._verify_signatures(info, client, index_desc)
        # 7-8. Every artifact manifest: blobs into the cache (sha256, fs-verity), build.json agreement.
        artifacts: dict[str, Any] = {}
        composefs: str | None = None
        for entry in index.get("manifests") or []:
            desc = Descriptor.from_json(entry)
            if desc.artifact_type != mt.ARTIFACT_TYPE_IMAGE:
                continue  # the runnable OCI image of the root: not part of what the platform serves
            arch = desc.annotations.get(mt.ANNOTATION_ARCH) or (desc.platform or {}).get("architecture")
            manifest_bytes, _ = client.get_manifest(desc.digest)
            manifest = parse_manifest(manifest_bytes, desc.digest)
            if manifest.get("artifactType") != mt.ARTIFACT_TYPE_IMAGE:
                raise VerificationFailed(
                    "manifest_invalid", f"manifest {desc.digest} is not a diskci image manifest"
                )
            if not arch:
                raise VerificationFailed("manifest_invalid", f"manifest {desc.digest} names no architecture")
            if arch in artifacts:
                raise VerificationFailed("manifest_invalid", f"the index lists {arch} twice")
            artifacts[arch] = self._verify_arch(info, client, arch, desc.digest, manifest)
            composefs = composefs or artifacts[arch].get("composefs_digest")
        missing = sorted(set(info.architectures) - set(artifacts))
        if missing:
            raise VerificationFailed(
                "manifest_invalid",
                f"{info.reference} has no image for {', '.join(missing)} (the platform needs them)",
            )
        if not artifacts:
            raise VerificationFailed("manifest_invalid", f"{info.reference} holds no diskci image manifest")
        return Verified(artifacts, composefs, signature.identity, signature.issuer, signature.signed_at)

    def _verify_signatures(
        self, info: DeliveryInfo, client: RegistryClient, index: Descriptor
    ) -> SignatureResult:
        """Every sigstore bundle referring to the index verifies, and one of them signs the index."""
        from diskci.supplychain.bundle import IdentityPolicy, verify_bundle

        policy = IdentityPolicy(identity_regexp=info.identity_regexp, issuer=info.issuer)
        root = self._trusted_root(info)
        signed = None
        count = 0
        for ref_desc in client.referrers(index.digest, mt.SIGSTORE_BUNDLE_V03):
            data, _ = client.get_manifest(ref_desc.digest)
            manifest = parse_manifest(data, ref_desc.digest)
            if (manifest.get("subject") or {}).get("digest") != index.digest:
                continue  # a stale entry of the referrers fallback tag
            layers = manifest.get("layers") or []
            if not layers:
                raise VerificationFailed("bundle_malformed", f"referrer {ref_desc.digest} carries no bundle")
            bundle = client.read_blob(Descriptor.from_json(layers[0]))
            result = verify_bundle(
                bundle, subject_digest=index.digest, policy=policy, trusted_root=root, name=ref_desc.digest
            )
            count += 1
            if result.predicate_type == mt.COSIGN_SIGN_PREDICATE and signed is None:
                signed = result
        if signed is None:
            raise VerificationFailed(
                "signature_missing",
                f"no verified signature over {index.digest} ({count} other bundle(s) found)",
            )
        return SignatureResult(
            identity=signed.identity,
            issuer=signed.issuer,
            signed_at=datetime.fromtimestamp(signed.integrated_time, UTC),
        )

    def _trusted_root(self, info: DeliveryInfo) -> Any:
        from diskci.supplychain.bundle import load_trusted_root

        if info.trusted_root is None:
            path = self.authority_dir / "trusted_root.json"
            if not path.is_file():
                raise VerificationFailed(
                    "trusted_root_missing",
                    f"platform {info.platform} names no trusted root and {path} does not exist",
                )
            return load_trusted_root(path)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.work_dir, suffix=".json") as f:
            f.write(info.trusted_root)
            f.flush()
            try:
                return load_trusted_root(Path(f.name))
            except UsageError as exc:
                raise VerificationFailed("trusted_root_invalid", exc.message) from None

    def _verify_arch(
        self, info: DeliveryInfo, client: RegistryClient, arch: str, digest: str, manifest: dict[str, Any]
    ) -> dict[str, Any]:
        config = Descriptor.from_json(manifest.get("config") or {})
        if config.media_type != mt.BUILD_JSON:
            raise VerificationFailed(
                "manifest_invalid", f"{arch} manifest {digest}: config is not build.json"
            )
        build = self._build_json(client, config, arch)
        if build.platform != info.platform or build.version != info.version:
            raise VerificationFailed(
                "manifest_invalid",
                f"{arch} build.json is {build.platform}:{build.version}, "
                f"the delivery is {info.platform}:{info.version}",
            )
        if arch not in build.architectures:
            raise VerificationFailed("manifest_invalid", f"build.json has no {arch} section")
        arch_build = build.architectures[arch]
        recorded = {a.name: a for a in arch_build.artifacts}
        layers = [Descriptor.from_json(d) for d in manifest.get("layers") or []]
        seen: set[str] = set()
        files: list[dict[str, Any]] = []
        for layer in layers:
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
            needs_verity = art.media_type in FSVERITY_MEDIA_TYPES or name in FSVERITY_NAMES
            if needs_verity and not art.fsverity:
                raise VerificationFailed(
                    "manifest_invalid", f"{arch}/{name}: build.json records no fs-verity digest"
                )
            self._cache_blob(client, layer, art.fsverity if needs_verity else None)
            files.append(
                {
                    "name": name,
                    "media_type": art.media_type,
                    "size": art.size,
                    "sha256": art.sha256,
                    "fsverity": art.fsverity,
                    "digest": layer.digest,
                }
            )
        absent = sorted(set(recorded) - seen)
        if absent:
            raise VerificationFailed(
                "manifest_invalid", f"{arch}: build.json artifacts not in the manifest: {absent}"
            )
        spec = build.spec or {}
        cmdline = (spec.get("arch_kernel_cmdline") or {}).get(arch) or spec.get("kernel_cmdline") or ""
        return {
            "manifest_digest": digest,
            "config_sha256": config.digest.removeprefix("sha256:"),
            "composefs_digest": arch_build.composefs_digest,
            "kernel_version": arch_build.kernel_version,
            "cmdline": str(cmdline),
            "artifacts": files,
        }

    def _build_json(self, client: RegistryClient, config: Descriptor, arch: str) -> BuildManifest:
        hexpart = config.digest.removeprefix("sha256:")
        if not self.blobs.has(hexpart):
            self._cache_blob(client, config, None)
        data = self.blobs.path(hexpart).read_bytes()
        try:
            return BuildManifest.model_validate_json(data)
        except ValueError as exc:
            raise VerificationFailed("manifest_invalid", f"{arch} build.json is not valid: {exc}") from None

    def _cache_blob(self, client: RegistryClient, desc: Descriptor, fsverity: str | None) -> None:
        """Download ``desc`` into the blob cache (sha256 checked); recheck fs-verity when asked."""
        hexpart = desc.digest.removeprefix("sha256:")
        if not self.blobs.has(hexpart):
            staging = self.blobs.staging_path(hexpart)
            try:
                client.fetch_blob(desc, staging)
                self.blobs.adopt(hexpart, staging, size=desc.size, fsverity=fsverity)
            finally:
                staging.unlink(missing_ok=True)
        elif fsverity:
            # A cache hit: the bytes are right by name; their fs-verity claim is checked every time.
            self.blobs.check_fsverity(hexpart, fsverity)
