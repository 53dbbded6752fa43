"""DiskImagePublicationProcessor: turn a ``disk_image_built`` delivery into a verified publication.

Deny by default (sigstore policy-controller's stance): a publication becomes ``published`` only when
every check of ``diskci.supplychain.verifier`` passed, and then in one transaction together with its
``disk_image_published`` event. Any failed check marks it ``failed`` with the verifier's stable reason
code and a ``disk_image_publication_failed`` event carrying that reason. This module is the database
state machine around that one verifier:

  1. load the delivery and the platform's policy (identity regexp, issuer, trusted root);
  2. claim the publication row;
  3. verify (``PublicationVerifier.verify``: the reference lies in the platform's repository, the
     index is the delivered ``manifest_digest``, its bundles verify against the policy, every
     architecture's manifest agrees with build.json, every blob enters the blob cache with its sha256
     and fs-verity digest checked), reading through a ``RegistryReader`` over the blob cache;
  4. read each architecture's composefs image (already in the blob cache, verified) into its listing
     (``diskci.formats.composefs_diff``), what ``system_diff_disk_image_publications`` compares;
  5. one transaction: ``published`` + ``disk_image_published`` with the verified artifacts, and the
     listings (``DiskImageListing`` rows).
A registry that cannot be reached is ``registry_unreachable`` once the queue's retries are spent. An
unexpected exception after the claim is retried by the queue; on the last attempt (or at once when it
is a diskci error, which the queue does not retry) the row is marked ``failed`` with ``internal_error``
and a ``disk_image_publication_failed`` event before the exception goes on to fail the Task, so no row
is left ``processing`` for good.

A listing is derived data, not a check: an image the reader refuses (``composefs_unreadable``) or whose
listing is too large to keep (``listing_too_large``) does not fail the publication. Its row is stored
without data but with the error, and a ``disk_image_listing_failed`` event carries the reason, so the
gap is visible in the recent events and the diff action names it. An architecture without a composefs
image gets no row.

Idempotence: publications are unique per (platform, index digest). The row is claimed first (inserted
as ``processing``, or taken over from ``processing``/``failed``); the final write is a compare-and-set
from that state, so the same manifest delivered twice, processed concurrently, or retried after a
queue consumer died mid-way gives exactly one publication and one ``disk_image_published`` event. A row
left ``processing`` by a dead consumer is taken over when the delivery is recovered
(``diskci.platform.tasks.recover_deliveries``). The blob cache only ever holds whole, verified blobs, so a
retry reuses what was already downloaded; a dead consumer's partial download is removed at start.
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

from sigstore.models import TrustedRoot
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from diskci import mediatypes as mt
from diskci.errors import (
    DiskciError,
    FormatError,
    NotFound,
    PlatformError,
    RegistryError,
    UsageError,
    VerificationFailed,
)
from diskci.formats import composefs_diff
from diskci.platform.db.models import (
    CiRun,
    DiskImageListing,
    DiskImagePublication,
    Event,
    NodePlatform,
    PublicationStatus,
    WebhookDelivery,
)
from diskci.platform.db.session import Database, rowcount
from diskci.platform.services.blobcache import BlobCache
from diskci.registry import Descriptor, RegistryClient, open_registry
from diskci.registry.reference import Reference
from diskci.supplychain.bundle import IdentityPolicy, load_trusted_root
from diskci.supplychain.readers import RegistryReader
from diskci.supplychain.verifier import Expectation, PublicationVerifier, Verification

log = logging.getLogger(__name__)


AUTHORITY_DIR = "authority"  # under the state directory: the embedded signing authority
INTERNAL_ERROR = "internal_error"  # the failure reason of an unexpected exception, retries spent
MAX_LISTING_BYTES = 32 << 20  # a listing stored per architecture (a Debian root's is about 0.5 MB)


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
    run_id: str = ""


@dataclass(frozen=True)
class ArchListing:
    """One architecture's listing as step 4 read it: ``data`` (encoded) or the ``reason`` and ``error``."""

    architecture: str
    composefs_sha256: str
    entries: int = 0
    data: bytes | None = None
    reason: str | None = None
    error: str | None = None


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
        after_published: Callable[[int], None] | None = None,
    ) -> None:
        """``after_published(publication_id)`` runs once a publication has become published (the
        Secure Boot signing of its UKIs, ``diskci.platform.secureboot.signing.sign_after_publish``); its
        failure is logged and never changes the publication."""
        self.database = database
        self.after_published = after_published
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
            return self._decide(claimed, info, final_attempt=final_attempt)
        except RetryLater:
            raise
        except Exception as exc:
            # Unexpected: the queue retries an exception, but not a diskci error, nor after its last
            # attempt. Either way the work is over, so the row must not stay processing for good.
            if final_attempt or isinstance(exc, DiskciError):
                self._fail_unexpected(claimed, info, exc)
            raise

    def _decide(self, claimed: int, info: DeliveryInfo, *, final_attempt: bool) -> Outcome:
        """Steps 3 to 5 on the claimed row: its ``published`` or ``failed`` Outcome."""
        delivery_id = info.delivery_id
        try:
            verified = self._verify(info)  # 3. the verifier's checks
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
        listings = self._listings(verified)  # 4. the composefs listings
        outcome = self._publish(claimed, info, verified, listings)
        if self.after_published is not None and outcome.status == PublicationStatus.PUBLISHED.value:
            try:  # 6. (optional) the platform's own step on the published row: signing its UKIs
                self.after_published(outcome.publication_id)
            except Exception:
                log.exception("publication %s: the after-publish step failed", outcome.publication_id)
        return outcome

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
                    run_id=str(payload.get("run_id") or ""),
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
                        # a rebuild with identical artifacts (same index digest): nothing is fetched
                        s.add(
                            Event(
                                type="disk_image_rebuild_identical",
                                platform_id=info.platform_id,
                                subject=f"{info.platform}:{info.version}",
                                reason="same_manifest_digest",
                                payload={
                                    "publication_id": pub.id,
                                    "delivery_id": info.delivery_id,
                                    "manifest_digest": info.manifest_digest,
                                    "run_id": info.run_id,
                                    "detail": f"identical to publication {pub.id} ({pub.status}):"
                                    " nothing downloaded again",
                                },
                            )
                        )
                        return Outcome(pub.id, pub.status, pub.failure_reason, duplicate=True)
                    # processing (a queue consumer died, or is still at it) or failed (retry): take it over.
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
                continue  # another queue consumer inserted it first: read it again
        raise PlatformError(f"delivery {info.delivery_id}: could not claim the publication row")

    @staticmethod
    def _link_delivery(s: Any, info: DeliveryInfo, pub_id: int) -> None:
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.delivery_id == info.delivery_id)
            .values(publication_id=pub_id)
        )
        # the embedded CI's run of this platform that built it (its run_id is the run's id)
        if info.run_id.isdigit() and len(info.run_id) < 19:
            s.execute(
                update(CiRun)
                .where(
                    CiRun.id == int(info.run_id),
                    CiRun.platform_id == info.platform_id,
                    CiRun.publication_id.is_(None),
                )
                .values(publication_id=pub_id)
            )

    def _publish(
        self, pub_id: int, info: DeliveryInfo, v: Verification, listings: list[ArchListing]
    ) -> Outcome:
        # 5. One transaction: the row becomes published and the event is added. Compare-and-set: from
        # processing, or from failed (a concurrent consumer's failure loses to a complete verification).
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
                        artifacts=v.artifacts.to_json(),
                        composefs_digest=v.artifacts.composefs_digest,
                        signer_identity=v.signature.identity,
                        signer_issuer=v.signature.issuer,
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
                            "architectures": v.artifacts.architectures,
                            "signer_identity": v.signature.identity,
                            "critical": info.critical,
                        },
                    )
                )
                self._store_listings(s, pub_id, info, listings)
            status = s.scalar(select(DiskImagePublication.status).where(DiskImagePublication.id == pub_id))
        return Outcome(pub_id, str(status), duplicate=not changed)

    @staticmethod
    def _store_listings(s: Any, pub_id: int, info: DeliveryInfo, listings: list[ArchListing]) -> None:
        s.execute(delete(DiskImageListing).where(DiskImageListing.publication_id == pub_id))
        for item in listings:
            s.add(
                DiskImageListing(
                    publication_id=pub_id,
                    architecture=item.architecture,
                    composefs_sha256=item.composefs_sha256,
                    entries=item.entries,
                    data=item.data,
                    error=item.error,
                )
            )
            if item.reason is not None:
                s.add(
                    Event(
                        type="disk_image_listing_failed",
                        platform_id=info.platform_id,
                        subject=f"{info.platform}:{info.version}",
                        reason=item.reason,
                        payload={
                            "publication_id": pub_id,
                            "architecture": item.architecture,
                            "composefs_sha256": item.composefs_sha256,
                            "detail": (item.error or "")[:2000],
                        },
                    )
                )

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

    def _fail_unexpected(self, pub_id: int, info: DeliveryInfo, exc: Exception) -> None:
        """Mark the claimed row ``failed`` with ``internal_error`` (a redelivery takes it over again)."""
        detail = f"{type(exc).__name__}: {exc}"
        try:
            self._fail(pub_id, info, INTERNAL_ERROR, detail)
        except Exception:  # the database too: the row stays processing; the original error is raised
            log.exception("publication %s: could not record its failure (%s)", pub_id, detail)

    # --- verification ----------------------------------------------------------------------------
    def _verify(self, info: DeliveryInfo) -> Verification:
        """The verifier's checks against the platform's policy, blobs going into the blob cache."""
        policy = IdentityPolicy(identity_regexp=info.identity_regexp, issuer=info.issuer)
        verifier = PublicationVerifier(policy, self._trusted_root(info))
        reader = RegistryReader(info.reference, fetch=self._cache_blob, registry=self.registry)
        expect = Expectation(
            repository=info.repository,
            index_digest=info.manifest_digest,
            platform=info.platform,
            version=info.version,
            architectures=tuple(info.architectures),
        )
        return verifier.verify(reader, expect)

    def _listings(self, v: Verification) -> list[ArchListing]:
        """Step 4: each architecture's composefs image (a verified blob in the cache) as its listing."""
        out: list[ArchListing] = []
        for arch, files in v.artifacts.root.items():
            image = next((f for f in files.artifacts if f.media_type == mt.COMPOSEFS_IMAGE), None)
            if image is None:
                continue
            path = self.blobs.path(image.sha256)
            try:
                entries = composefs_diff.read_listing(path)
                data = composefs_diff.encode(entries)
            except (FormatError, OSError) as exc:
                text = str(exc).replace(str(path), f"{arch}/{image.name}")
                log.warning("%s/%s: no listing: %s", arch, image.name, text)
                out.append(ArchListing(arch, image.sha256, reason="composefs_unreadable", error=text))
                continue
            if len(data) > MAX_LISTING_BYTES:
                error = f"{arch}/{image.name}: listing of {len(data)} bytes, more than {MAX_LISTING_BYTES}"
                out.append(ArchListing(arch, image.sha256, reason="listing_too_large", error=error))
                continue
            out.append(ArchListing(arch, image.sha256, entries=len(entries), data=data))
        return out

    def _trusted_root(self, info: DeliveryInfo) -> TrustedRoot:
        if info.trusted_root is None:
            path = self.authority_dir / "trusted_root.json"
            if not path.is_file():
                raise VerificationFailed(
                    "trusted_root_missing",
                    f"platform {info.platform} names no trusted root and {path} does not exist",
                )
            return load_trusted_root(path)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        prefix = self.blobs.temporary_prefix("trusted-root")
        with tempfile.NamedTemporaryFile("w", dir=self.work_dir, prefix=prefix, suffix=".json") as f:
            f.write(info.trusted_root)
            f.flush()
            try:
                return load_trusted_root(Path(f.name))
            except UsageError as exc:
                raise VerificationFailed("trusted_root_invalid", exc.message) from None

    def _cache_blob(self, client: RegistryClient, desc: Descriptor, fsverity: str | None) -> Path:
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
        return self.blobs.path(hexpart)
