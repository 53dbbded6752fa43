"""DiskImageRetentionService: prune old publications from the registry, the blob cache and the listing.

Rules, checked per NodePlatform (Harbor/ECR-style, with MAAS's "never the last images"):
  1. only ``published`` publications are candidates;
  2. never the platform's default publication;
  3. never the platform's newest published publication;
  4. a routine publication older than ``retention_routine_days`` is pruned, a critical one only when
     older than ``retention_critical_days``.

``preview()`` runs exactly the same selection and returns what ``sweep()`` would prune, deleting
nothing. ``sweep()`` holds a database lock so two queue consumers never prune at once (a session advisory lock
on PostgreSQL, a lock row in ``tasks`` on SQLite), then for each publication deletes its referrers
(signature bundles), its index and its per-arch manifests from the registry, and only then marks the
row ``pruned`` (kept for audit) with a ``disk_image_publication_pruned`` event. A registry failure
leaves the row as it was, with a ``disk_image_publication_prune_failed`` event, for the next run.
Blob-cache entries no longer referenced by any unpruned publication are removed last.

Events are bounded too: a sweep deletes every event older than ``event_retention_days``, and
``cap_events`` keeps only the newest rows of one kind (boot reports call it as they are written, so a
flood of reports never outgrows ``netboot_report_events_max`` rows between two sweeps).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Text, cast, delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from diskci.errors import Conflict, RegistryError
from diskci.platform.db.models import (
    DiskImagePublication,
    Event,
    NodePlatform,
    PublicationStatus,
    Task,
    TaskStatus,
)
from diskci.platform.db.session import Database, rowcount
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.settings import EVENT_RETENTION_DAYS
from diskci.supplychain.verified import PublicationArtifacts

log = logging.getLogger(__name__)


LOCK_NAME = "disk_image_retention.lock"
TASK_KIND = "disk_image_retention"
_PG_LOCK_KEY = 0x64637274  # "dcrt"
STALE_LOCK_AFTER = timedelta(hours=6)


class RetentionLocked(Conflict):
    """Another queue consumer is pruning right now."""


class PublicationDeleter(Protocol):
    """Deletes one publication's OCI objects (index, per-arch manifests, referrers) from its registry."""

    def __call__(self, reference: str, index_digest: str, manifest_digests: list[str]) -> None: ...


@dataclass(frozen=True)
class Candidate:
    id: int
    platform: str
    platform_id: int
    version: str
    reference: str
    manifest_digest: str
    critical: bool
    created_at: datetime
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "platform": self.platform,
            "version": self.version,
            "reference": self.reference,
            "manifest_digest": self.manifest_digest,
            "critical": self.critical,
            "created_at": self.created_at.isoformat(),
            "rule": self.rule,
        }


@dataclass
class SweepResult:
    candidates: list[Candidate]
    pruned: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    blobs_removed: int = 0
    bytes_freed: int = 0
    events_removed: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "candidates": [c.as_dict() for c in self.candidates],
            "pruned": self.pruned,
            "failed": {str(k): v for k, v in self.failed.items()},
            "blobs_removed": self.blobs_removed,
            "bytes_freed": self.bytes_freed,
            "events_removed": self.events_removed,
        }


def prune_old_events(session: Session, *, before: datetime) -> int:
    """Delete every event created before ``before``; how many were deleted."""
    return rowcount(
        session.execute(
            delete(Event).where(Event.created_at < before).execution_options(synchronize_session=False)
        )
    )


def cap_events(session: Session, type: str, *, keep: int) -> int:
    """Keep only the newest ``keep`` events of ``type`` (by id); how many older ones were deleted."""
    cutoff = session.scalar(
        select(Event.id).where(Event.type == type).order_by(Event.id.desc()).offset(keep).limit(1)
    )
    if cutoff is None:
        return 0
    return rowcount(
        session.execute(
            delete(Event)
            .where(Event.type == type, Event.id <= cutoff)
            .execution_options(synchronize_session=False)
        )
    )


def delete_publication(reference: str, index_digest: str, manifest_digests: list[str]) -> None:
    """The registry half of pruning: referrers (and their fallback tag), the index, the arch manifests.

    Deleting what is already gone is not an error, so a sweep interrupted half-way can run again.
    """
    from diskci.registry import open_registry
    from diskci.registry.reference import Reference
    from diskci.registry.store import fallback_tag

    client = open_registry(Reference.parse(reference))
    for referrer in client.referrers(index_digest):
        client.delete_manifest(referrer.digest)
    try:
        fallback = client.resolve(fallback_tag(index_digest))
    except RegistryError as exc:
        if "not found" not in str(exc):
            raise
    else:
        client.delete_manifest(fallback.digest)
    client.delete_manifest(index_digest)
    for digest in manifest_digests:
        client.delete_manifest(digest)


class DiskImageRetentionService:
    """Selects and prunes expired publications (see the module docstring for the rules)."""

    def __init__(
        self,
        *,
        database: Database,
        blobs: BlobCache,
        deleter: PublicationDeleter,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        blob_min_age_seconds: float = 3600,
        event_retention_days: int = EVENT_RETENTION_DAYS,
    ) -> None:
        self.database = database
        self.blobs = blobs
        self.deleter = deleter
        self.clock = clock
        self.blob_min_age_seconds = blob_min_age_seconds
        self.event_retention_days = event_retention_days

    # --- selection -------------------------------------------------------------------------------
    def candidates(self, *, platform: str | None = None) -> list[Candidate]:
        now = self.clock()
        out: list[Candidate] = []
        with self.database.read_session() as s:
            q = select(
                NodePlatform.id,
                NodePlatform.name,
                NodePlatform.default_publication_id,
                NodePlatform.retention_routine_days,
                NodePlatform.retention_critical_days,
            )
            if platform is not None:
                q = q.where(NodePlatform.name == platform)
            for pid, pname, default_id, routine_days, critical_days in s.execute(q.order_by(NodePlatform.id)):
                newest = s.scalar(
                    select(DiskImagePublication.id)
                    .where(
                        DiskImagePublication.platform_id == pid,
                        DiskImagePublication.status == PublicationStatus.PUBLISHED.value,
                    )
                    .order_by(DiskImagePublication.created_at.desc(), DiskImagePublication.id.desc())
                    .limit(1)
                )
                if newest is None:
                    continue
                keep = {newest} | ({default_id} if default_id is not None else set())
                routine_cut = now - timedelta(days=routine_days)
                critical_cut = now - timedelta(days=critical_days)
                # The index on (platform_id, status, created_at) bounds the scan by the older cutoff.
                rows = s.execute(
                    select(
                        DiskImagePublication.id,
                        DiskImagePublication.version,
                        DiskImagePublication.reference,
                        DiskImagePublication.manifest_digest,
                        DiskImagePublication.critical,
                        DiskImagePublication.created_at,
                    )
                    .where(
                        DiskImagePublication.platform_id == pid,
                        DiskImagePublication.status == PublicationStatus.PUBLISHED.value,
                        DiskImagePublication.created_at < max(routine_cut, critical_cut),
                    )
                    .order_by(DiskImagePublication.created_at, DiskImagePublication.id)
                )
                for pub_id, version, reference, digest, critical, created in rows:
                    if pub_id in keep:
                        continue
                    if critical and created >= critical_cut:
                        continue
                    if not critical and created >= routine_cut:
                        continue
                    rule = (
                        f"critical, older than {critical_days} days"
                        if critical
                        else f"routine, older than {routine_days} days"
                    )
                    out.append(
                        Candidate(
                            pub_id, pname, pid, version, reference, digest, bool(critical), created, rule
                        )
                    )
        return out

    def preview(self, *, platform: str | None = None) -> SweepResult:
        """What a sweep would prune now; deletes nothing."""
        return self._run(platform=platform, dry_run=True)

    def sweep(self, *, platform: str | None = None) -> SweepResult:
        """Prune every expired publication; raises RetentionLocked when another sweep is running."""
        with self.lock():
            return self._run(platform=platform, dry_run=False)

    # --- pruning ---------------------------------------------------------------------------------
    def _run(self, *, platform: str | None, dry_run: bool) -> SweepResult:
        result = SweepResult(candidates=self.candidates(platform=platform), dry_run=dry_run)
        for cand in result.candidates:
            if dry_run:
                continue
            try:
                done = self._prune_one(cand)
            except RegistryError as exc:
                log.warning("retention: %s %s not pruned: %s", cand.platform, cand.version, exc)
                result.failed[cand.id] = str(exc)
                with self.database.session() as s:
                    s.add(
                        Event(
                            type="disk_image_publication_prune_failed",
                            platform_id=cand.platform_id,
                            subject=f"{cand.platform}:{cand.version}",
                            reason="registry_error",
                            payload={"publication_id": cand.id, "error": str(exc)[:2000]},
                        )
                    )
            else:
                if done:
                    result.pruned.append(cand.id)
        # A preview counts what the sweep would free: as if its candidates were already pruned.
        referenced = self.referenced_blobs(exclude={c.id for c in result.candidates} if dry_run else set())
        gc = self.blobs.collect_garbage(
            referenced, dry_run=dry_run, min_age_seconds=self.blob_min_age_seconds
        )
        result.blobs_removed = len(gc.removed)
        result.bytes_freed = gc.freed_bytes
        if not dry_run:
            result.events_removed = self.prune_events()
        return result

    def prune_events(self) -> int:
        """Delete the events older than ``event_retention_days``; how many were deleted."""
        with self.database.session() as s:
            removed = prune_old_events(s, before=self.clock() - timedelta(days=self.event_retention_days))
        if removed:
            log.info("retention: %d events older than %d days deleted", removed, self.event_retention_days)
        return removed

    def _prune_one(self, cand: Candidate) -> bool:
        """Prune one candidate; False when it stopped being one since the selection (made default)."""
        with self.database.read_session() as s:
            default = s.scalar(
                select(NodePlatform.default_publication_id).where(NodePlatform.id == cand.platform_id)
            )
            artifacts = s.scalar(
                select(DiskImagePublication.artifacts).where(
                    DiskImagePublication.id == cand.id,
                    DiskImagePublication.status == PublicationStatus.PUBLISHED.value,
                )
            )
        if default == cand.id or artifacts is None:
            return False
        manifests = PublicationArtifacts.model_validate(artifacts).manifest_digests()
        self.deleter(cand.reference, cand.manifest_digest, manifests)
        now = self.clock()
        with self.database.session() as s:
            changed = rowcount(
                s.execute(
                    update(DiskImagePublication)
                    .where(
                        DiskImagePublication.id == cand.id,
                        DiskImagePublication.status == PublicationStatus.PUBLISHED.value,
                    )
                    .values(status=PublicationStatus.PRUNED.value, pruned_at=now, updated_at=now)
                )
            )
            if changed:
                s.add(
                    Event(
                        type="disk_image_publication_pruned",
                        platform_id=cand.platform_id,
                        subject=f"{cand.platform}:{cand.version}",
                        reason="retention",
                        payload={**cand.as_dict(), "manifests": manifests},
                    )
                )
        return bool(changed)

    def referenced_blobs(self, *, exclude: set[int] | None = None) -> set[str]:
        """Every blob digest an unpruned publication (other than ``exclude``) still needs.

        Read as JSON text and scanned (``PublicationArtifacts.blob_digests_in_json``): 100,000 rows in
        well under a second, where decoding every document would take seconds.
        """
        out: set[str] = set()
        skip = exclude or set()
        with self.database.read_session() as s:
            rows = s.execute(
                select(DiskImagePublication.id, cast(DiskImagePublication.artifacts, Text)).where(
                    DiskImagePublication.status != PublicationStatus.PRUNED.value
                )
            )
            for pub_id, text_ in rows:
                if pub_id not in skip and text_:
                    out.update(PublicationArtifacts.blob_digests_in_json(text_))
        return out

    # --- the lock --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        if self.database.backend == "postgresql":
            with self._pg_lock():
                yield
        else:
            with self._row_lock():
                yield

    @contextlib.contextmanager
    def _pg_lock(self) -> Iterator[None]:
        # A session-level advisory lock on a dedicated connection: released when we unlock, or by the
        # server when the connection (a killed consumer) goes away.
        with self.database.engine.connect() as conn:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_LOCK_KEY}).scalar()
            conn.commit()
            if not got:
                raise RetentionLocked("another retention sweep holds the lock")
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()

    @contextlib.contextmanager
    def _row_lock(self) -> Iterator[None]:
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        now = self.clock()
        try:
            with self.database.session() as s:
                s.execute(
                    delete(Task).where(
                        Task.task_id == LOCK_NAME, Task.started_at < datetime.now(UTC) - STALE_LOCK_AFTER
                    )
                )
                s.add(
                    Task(
                        task_id=LOCK_NAME,
                        kind=TASK_KIND,
                        status=TaskStatus.RUNNING.value,
                        payload={"holder": holder},
                        started_at=datetime.now(UTC),
                        created_at=now,
                    )
                )
        except IntegrityError:
            raise RetentionLocked("another retention sweep holds the lock") from None
        try:
            yield
        finally:
            with self.database.session() as s:
                s.execute(delete(Task).where(Task.task_id == LOCK_NAME))
