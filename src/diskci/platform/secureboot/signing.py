"""Sign a verified publication's UKIs: what the processor calls once a publication is published.

For each architecture whose verified files include ``uki.efi`` (the build's unsigned, reproducible
UKI, already in the blob cache with its sha256 checked):

  1. read its ``.cmdline`` (the root image's sha256 and size, from the build) and append what only the
     platform knows: ``diskci.root=<public_base_url>/netboot/<publication>/<arch>/rootfs.img``,
     ``diskci.report=<public_base_url>/api/v1/netboot/report?publication=<id>`` and
     ``diskci.not_after=<now + secureboot_validity_days>`` (the downgrade bound: an older signed UKI
     stops booting when its window ends; ``resign_defaults`` renews the defaults' windows);
  2. sign the result (``UkiSigner``), so the signature covers the URLs and the window too;
  3. put the signed bytes in the blob cache and record them in the publication's artifacts as
     ``uki.signed.efi`` (media type ``UKI_SIGNED``), which netboot serves and retention keeps and
     prunes with the publication; one ``disk_image_uki_signed`` event.

``sign_after_publish`` is the processor's hook: a failure there never loses the publication; it is
recorded as a ``disk_image_uki_signing_failed`` event and nodes keep booting the unsigned path.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from diskci.errors import DiskciError, NotFound
from diskci.formats import pe
from diskci.mediatypes import UKI_SIGNED
from diskci.platform.db.models import DiskImagePublication, Event, NodePlatform, PublicationStatus
from diskci.platform.db.session import Database
from diskci.platform.secureboot.keys import FleetKey
from diskci.platform.secureboot.signer import UkiSigner, load_signer
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.settings import PlatformSettings
from diskci.supplychain.verified import ArtifactRecord, PublicationArtifacts

log = logging.getLogger(__name__)

UNSIGNED_NAME = "uki.efi"
SIGNED_NAME = "uki.signed.efi"
REPORT_PATH = "/api/v1/netboot/report"  # services.netboot.REPORT_PATH (not imported: no cycle)
SIGNED_EVENT = "disk_image_uki_signed"
FAILED_EVENT = "disk_image_uki_signing_failed"
DAY = 86400


@dataclass(frozen=True)
class SignedUki:
    arch: str
    sha256: str
    size: int
    not_after: int
    cmdline: str


def signed_cmdline(
    build_cmdline: str, *, base_url: str, publication_id: int, arch: str, not_after: int
) -> str:
    """The build's command line with what the platform adds (step 1 of the module docstring)."""
    kept = [
        w
        for w in build_cmdline.split()
        if not w.startswith(("diskci.root=", "diskci.report=", "diskci.not_after="))
    ]
    files = f"{base_url}/netboot/{publication_id}/{arch}"
    return " ".join(
        [
            *kept,
            f"diskci.root={files}/rootfs.img",
            f"diskci.report={base_url}{REPORT_PATH}?publication={publication_id}",
            f"diskci.not_after={not_after}",
        ]
    )


class UkiSigning:
    """Signs publications' UKIs with one signer into one blob cache (``sign``), and renews windows."""

    def __init__(
        self,
        *,
        database: Database,
        blobs: BlobCache,
        settings: PlatformSettings,
        signer: UkiSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.blobs = blobs
        self.settings = settings
        self.signer = signer or load_signer(settings)
        self.clock = clock

    def sign(self, publication_id: int) -> list[SignedUki]:
        """Sign every architecture's UKI of a published publication (none: nothing to do)."""
        with self.database.read_session() as s:
            pub = s.get(DiskImagePublication, publication_id)
            if pub is None or pub.status != PublicationStatus.PUBLISHED.value or pub.pruned_at is not None:
                raise NotFound(f"publication {publication_id} is not published")
            artifacts = pub.verified_artifacts
            platform_id, subject = pub.platform_id, f"{pub.platform.name}:{pub.version}"
        not_after = int(self.clock()) + self.settings.secureboot_validity_days * DAY
        signed: list[SignedUki] = []
        records: dict[str, ArtifactRecord] = {}
        for arch in artifacts.architectures:
            entry = artifacts.arch(arch)
            unsigned = entry.file(UNSIGNED_NAME) if entry is not None else None
            if unsigned is None:
                continue
            data = self.blobs.path(unsigned.sha256).read_bytes()
            if hashlib.sha256(data).hexdigest() != unsigned.sha256:
                raise DiskciError(
                    f"blob sha256:{unsigned.sha256} ({arch}/{UNSIGNED_NAME}) changed in the cache"
                )
            build_cmdline = pe.PeImage.parse(data).section_data(".cmdline").decode("utf-8", "replace")
            cmdline = signed_cmdline(
                build_cmdline.rstrip("\0"),
                base_url=self.settings.public_base_url,
                publication_id=publication_id,
                arch=arch,
                not_after=not_after,
            )
            image = self.signer.sign(pe.replace_last_section(data, ".cmdline", cmdline.encode()))
            digest = hashlib.sha256(image).hexdigest()
            self.blobs.put_bytes(digest, image)
            records[arch] = ArtifactRecord(
                name=SIGNED_NAME,
                media_type=UKI_SIGNED,
                size=len(image),
                sha256=digest,
                digest=f"sha256:{digest}",
            )
            signed.append(SignedUki(arch, digest, len(image), not_after, cmdline))
        if not signed:
            return signed
        fingerprint = self.signer.certificate().fingerprint
        with self.database.session() as s:
            pub = s.get(DiskImagePublication, publication_id)
            if pub is None:
                raise NotFound(f"publication {publication_id} is gone")
            pub.artifacts = _with_signed(pub.verified_artifacts, records)
            s.add(
                Event(
                    type=SIGNED_EVENT,
                    platform_id=platform_id,
                    subject=subject,
                    payload={
                        "publication_id": publication_id,
                        "architectures": [u.arch for u in signed],
                        "sha256": {u.arch: u.sha256 for u in signed},
                        "certificate_sha256": fingerprint,
                        "not_after": not_after,
                    },
                )
            )
        return signed

    def resign_defaults(self) -> dict[str, Any]:
        """Renew the window of every platform's default publication (and after a key rotation, sign
        them with the new key): what the daily task and ``secureboot rotate`` run."""
        with self.database.read_session() as s:
            ids = [
                pid for pid in s.scalars(select(NodePlatform.default_publication_id)).all() if pid is not None
            ]
        done, failed = [], {}
        for pid in ids:
            try:
                if self.sign(pid):
                    done.append(pid)
            except DiskciError as exc:
                failed[pid] = exc.message
                record_failure(self.database, pid, exc)
        return {"signed": done, "failed": failed}


def _with_signed(artifacts: PublicationArtifacts, records: dict[str, ArtifactRecord]) -> dict[str, Any]:
    out = artifacts.to_json()
    for arch, record in records.items():
        files = [f for f in out[arch]["artifacts"] if f["name"] != SIGNED_NAME]
        out[arch]["artifacts"] = [*files, record.model_dump(mode="json")]
    return out


def record_failure(database: Database, publication_id: int, exc: BaseException) -> None:
    """A ``disk_image_uki_signing_failed`` event (never raises: signing is not the publication)."""
    reason = "no_signing_key" if type(exc).__name__ == "NoSigningKey" else "signing_failed"
    detail = exc.message if isinstance(exc, DiskciError) else f"{type(exc).__name__}: {exc}"
    log.warning("publication %s: UKIs not signed (%s): %s", publication_id, reason, detail)
    try:
        with database.session() as s:
            pub = s.get(DiskImagePublication, publication_id)
            s.add(
                Event(
                    type=FAILED_EVENT,
                    platform_id=pub.platform_id if pub is not None else None,
                    subject=f"{pub.platform.name}:{pub.version}" if pub is not None else None,
                    reason=reason,
                    payload={"publication_id": publication_id, "detail": detail[:2000]},
                )
            )
    except Exception:
        log.exception("publication %s: could not record the signing failure", publication_id)


def sign_after_publish(
    settings: PlatformSettings, database: Database, blobs: BlobCache
) -> Callable[[int], None]:
    """The processor's hook: sign the new publication's UKIs when the fleet has a key (else nothing)."""

    def hook(publication_id: int) -> None:
        if not settings.secureboot_signer and not FleetKey.from_settings(settings).exists():
            return  # Secure Boot not set up: nodes boot today's path
        try:
            UkiSigning(database=database, blobs=blobs, settings=settings).sign(publication_id)
        except Exception as exc:
            record_failure(database, publication_id, exc)

    return hook


def resign_defaults_if_configured(settings: PlatformSettings, database: Database) -> dict[str, Any]:
    """``UkiSigning.resign_defaults`` when the fleet has a key (the daily task); else nothing."""
    if not settings.secureboot_signer and not FleetKey.from_settings(settings).exists():
        return {"signed": [], "failed": {}, "skipped": "no Secure Boot key"}
    return UkiSigning(
        database=database, blobs=BlobCache(settings.blob_dir), settings=settings
    ).resign_defaults()
