"""Netboot: which verified image a machine boots, as iPXE scripts, and what it reports back.

The flow (Matchbox's): a machine's iPXE fetches ``/boot.ipxe``, which chains to
``/ipxe?mac=${mac:hexhyp}&uuid=${uuid}&arch=${buildarch}``; that script is rendered for the
NodeInstance owning the MAC (or for ``?platform=``) from its platform's default publication for that
architecture: the kernel and initramfs are served by the platform from its blob cache, and the kernel
command line carries the root image URL with the sha256 the processor verified, so the initramfs
refuses any other bytes. With no default yet the script says why and retries.

Secure Boot (``diskci.platform.secureboot``): when the publication has a platform-signed UKI
(``uki.signed.efi``), a UEFI iPXE chains it instead, so the firmware's image loader decides: under
Secure Boot only a UKI signed by an enrolled key starts, and its embedded command line (root image
sha256, size, URLs, validity window) is the one used. The arguments the script passes matter only
without Secure Boot (the stub then takes them, as today's path does). A BIOS iPXE keeps today's path.
Reports carry the firmware's Secure Boot state; a node's last report records ``verified_boot``.

Lookups are cached for ``cache_seconds`` (a netboot storm asks the same question thousands of times
a second); a new default is seen within that time.

The scripts are iPXE code, so nothing from a request reaches them unchecked: every URL starts from the
configured ``public_base_url`` (never the request's ``Host``), the request's values must match a strict
grammar (or the answer is a 400) and reach URLs only URL-encoded, text in ``echo`` lines keeps only
characters iPXE gives no meaning to, and a publication whose kernel command line holds others is not
booted. Only the files a node needs to boot (``BOOT_FILES``) are served without a login.

Boot reports need no login either, so nothing in one is trusted: ``parse_report`` accepts only the
statuses and reasons the initramfs and the booted marker send and keeps a few bounded fields; the MAC
and publication come from the report URL; ``record_report`` stores a report only for a known node and a
published publication of its platform, at most ``REPORTS_PER_NODE_PER_MINUTE`` a minute, and answers
the same either way. Reports are rate-limited per MAC and per source address (``check_report_rate``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import String, cast, func, select
from sqlalchemy.orm import Session

from diskci.errors import InvalidRequest, NotFound
from diskci.platform.db.models import (
    DiskImagePublication,
    Event,
    NodeInstance,
    NodePlatform,
    PublicationStatus,
)
from diskci.platform.db.session import MAX_INTEGER
from diskci.platform.services.ratelimit import RateLimited, TokenBuckets
from diskci.platform.services.retention import cap_events
from diskci.platform.settings import NETBOOT_REPORT_EVENTS_MAX
from diskci.supplychain.verified import ArtifactRecord

log = logging.getLogger(__name__)

# iPXE's ${buildarch} → diskci architecture. A BIOS iPXE is an i386 build that boots x86_64 kernels.
IPXE_ARCHES = {"x86_64": "amd64", "i386": "amd64", "arm64": "arm64"}
KERNEL = "vmlinuz"
INITRD = "initramfs.img"
ROOT_IMAGE = "rootfs.img"
BOOT_SCRIPT = "boot.ipxe"
SIGNED_UKI = "uki.signed.efi"  # the platform's Secure Boot signed UKI (diskci.platform.secureboot)
BOOT_FILES = frozenset({KERNEL, INITRD, ROOT_IMAGE, BOOT_SCRIPT, SIGNED_UKI})  # served without a login
REPORT_PATH = "/api/v1/netboot/report"
MAX_REPORT_BYTES = 64 * 1024
REPORT_EVENT = "netboot_report"
# What the initramfs (init.sh's ``report``/``fail``) and the booted marker (rootimage.py) send.
REPORT_STATUSES = frozenset({"fetched", "verified", "switching_root", "booted", "error"})
_IN_BOOT = ("fetched", "verified", "switching_root")  # the initramfs's reports, before the root's "booted"
REPORT_REASONS = frozenset(
    {
        "bad_parameter",
        "missing_parameter",
        "download_failed",
        "device_not_found",
        "read_failed",
        "sha256_mismatch",
        "mount_failed",
        "no_init",
        "network_unavailable",
        "size_mismatch",
        "image_expired",
    }
)
REPORT_TEXT_FIELDS = {
    "message": 1024,
    "root": 512,
    "root_sha256": 64,
    "platform": 128,
    "version": 128,
    "secure_boot": 16,  # on | off | unknown, from the firmware's SecureBoot variable
}
REPORTS_PER_NODE_PER_MINUTE = 30  # stored per node, across replicas (counted in the database)
REPORT_RATE_PER_MAC = (0.2, 20)  # (tokens a second, burst) per MAC, per process
REPORT_RATE_PER_SOURCE = (2.0, 120)  # (tokens a second, burst) per source address, per process
_CAP_EVERY = 50  # every 50th report event trims the report events to ``netboot_report_events_max``
RETRY_SECONDS = 30
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_UUID = re.compile(r"^[A-Za-z0-9-]{1,64}$")  # iPXE's ${uuid}: an SMBIOS UUID
_PLATFORM = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")  # a node platform name
_SAFE = re.compile(r"[^A-Za-z0-9 ._:/=,+@()-]")
_CMDLINE = re.compile(r"^[A-Za-z0-9 ._:/=,+@%~-]*$")  # kernel arguments iPXE passes on as they are
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def normalize_mac(mac: str) -> str:
    """``52-54-00-AB-CD-EF`` (iPXE's hexhyp) or colon form → ``52:54:00:ab:cd:ef``."""
    m = mac.strip().lower()
    if not _MAC.fullmatch(m):
        raise InvalidRequest(f"mac: {mac[:40]!r} is not a MAC address (expected 52-54-00-12-34-56)")
    return m.replace("-", ":")


def architecture_for(buildarch: str) -> str:
    """Map iPXE's ``${buildarch}`` (or a diskci architecture name) to a diskci architecture."""
    if buildarch in ("amd64", "arm64"):
        return buildarch
    try:
        return IPXE_ARCHES[buildarch]
    except KeyError:
        raise InvalidRequest(
            f"arch: iPXE build architecture {buildarch[:40]!r} is not supported (x86_64, i386, arm64)"
        ) from None


def _ipxe_text(text: str) -> str:
    """Text safe inside an iPXE ``echo`` (no settings expansion, no command separators)."""
    return _SAFE.sub("_", text)


def error_script(message: str) -> str:
    """The script answering a bad request: it says what was wrong and stops at the iPXE shell."""
    return f"#!ipxe\necho diskci: bad request: {_ipxe_text(message)}\nshell\n"


def boot_chain_script(base_url: str) -> str:
    """``/boot.ipxe``: ask the platform for this machine's own script."""
    return (
        "#!ipxe\n"
        "# diskci: chain to the script for this machine\n"
        f"chain --autofree {base_url}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&arch=${{buildarch}}\n"
    )


@dataclass(frozen=True)
class BootTarget:
    """What one machine boots: a published publication's files for one architecture."""

    platform: str
    publication_id: int
    version: str
    arch: str
    root_sha256: str
    cmdline: str
    node_id: int | None
    root_size: int | None = None
    signed_uki: bool = False  # the publication has a platform-signed UKI for this architecture


@dataclass(frozen=True)
class NotReady:
    """Why there is nothing to boot yet (the script prints it and retries)."""

    why: str


@dataclass(frozen=True)
class BootRequest:
    mac: str | None
    uuid: str | None
    platform: str | None
    arch: str

    def query(self) -> str:
        params: dict[str, str] = {}
        if self.mac:
            params["mac"] = self.mac.replace(":", "-")
        if self.platform:
            params["platform"] = self.platform
        if self.uuid:
            params["uuid"] = self.uuid
        params["arch"] = self.arch
        return urlencode(params)


def parse_boot_request(
    mac: str | None, uuid: str | None, platform: str | None, arch: str | None
) -> BootRequest:
    if not mac and not platform:
        raise InvalidRequest("give ?mac= (from /boot.ipxe) or ?platform=")
    if not arch:
        raise InvalidRequest("arch: missing (iPXE's ${buildarch}, e.g. x86_64 or arm64)")
    if uuid and not _UUID.fullmatch(uuid):
        raise InvalidRequest(f"uuid: {uuid[:40]!r} is not an SMBIOS UUID (hex digits and hyphens)")
    if platform and not _PLATFORM.fullmatch(platform):
        raise InvalidRequest(f"platform: {platform[:40]!r} is not a node platform name")
    return BootRequest(
        mac=normalize_mac(mac) if mac else None,
        uuid=uuid or None,
        platform=platform or None,
        arch=architecture_for(arch),
    )


def boot_script(target: BootTarget, base_url: str, request: BootRequest) -> str:
    if not _SHA256.fullmatch(target.root_sha256) or not _CMDLINE.fullmatch(target.cmdline):
        raise ValueError(f"publication {target.publication_id}: not a bootable target")  # see _resolve
    files = f"{base_url}/netboot/{target.publication_id}/{target.arch}"
    report = f"{base_url}{REPORT_PATH}?publication={target.publication_id}"
    if request.mac:
        report += f"&mac={request.mac.replace(':', '-')}"
    cmdline = (
        f"diskci.root={files}/{ROOT_IMAGE} diskci.root_sha256={target.root_sha256} "
        f"diskci.report={report} ip=dhcp {target.cmdline}"
    ).strip()
    uki = ""
    if target.signed_uki:
        size = f" diskci.root_size={target.root_size}" if target.root_size is not None else ""
        uki = (
            "iseq ${platform} efi || goto legacy\n"
            "echo diskci: chaining the signed UKI (under Secure Boot the firmware verifies it)\n"
            f"chain --autofree {files}/{SIGNED_UKI} {cmdline}{size} || goto refused\n"
            ":refused\n"
            "echo diskci: error uki_refused: the firmware did not start the signed UKI\n"
            "exit 1\n"
            ":legacy\n"
        )
    return (
        "#!ipxe\n"
        f"echo diskci: booting {_ipxe_text(target.platform)} {_ipxe_text(target.version)} ({target.arch})\n"
        f"{uki}"
        f"kernel {files}/{KERNEL} initrd={INITRD} {cmdline}\n"
        f"initrd --name {INITRD} {files}/{INITRD}\n"
        "boot\n"
    )


def retry_script(why: str, base_url: str, request: BootRequest, seconds: int = RETRY_SECONDS) -> str:
    return (
        "#!ipxe\n"
        f"echo diskci: nothing to boot yet: {_ipxe_text(why)}\n"
        f"echo diskci: retrying in {seconds} s\n"
        f"sleep {seconds}\n"
        f"chain --autofree {base_url}/ipxe?{request.query()}\n"
    )


class _TtlCache:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._data: dict[tuple[Any, ...], tuple[float, BootTarget | NotReady]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> BootTarget | NotReady | None:
        if self.seconds <= 0:
            return None
        hit = self._data.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: tuple[Any, ...], value: BootTarget | NotReady) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            if len(self._data) > 10_000:
                self._data.clear()
            self._data[key] = (time.monotonic() + self.seconds, value)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class NetbootService:
    """Resolves machines to boot targets and records their reports."""

    def __init__(
        self,
        *,
        cache_seconds: float = 1.0,
        report_rate_per_mac: tuple[float, float] = REPORT_RATE_PER_MAC,
        report_rate_per_source: tuple[float, float] = REPORT_RATE_PER_SOURCE,
    ) -> None:
        self._cache = _TtlCache(cache_seconds)
        self._per_mac = TokenBuckets(rate=report_rate_per_mac[0], burst=report_rate_per_mac[1])
        self._per_source = TokenBuckets(rate=report_rate_per_source[0], burst=report_rate_per_source[1])

    def clear_cache(self) -> None:
        self._cache.clear()

    def cached(self, request: BootRequest) -> BootTarget | NotReady | None:
        """The cached answer for ``request``, if still fresh (no database access)."""
        return self._cache.get((request.mac, request.platform, request.arch))

    # --- lookups ---------------------------------------------------------------------------------
    @staticmethod
    def node_by_mac(session: Session, mac: str) -> NodeInstance | None:
        # JSON lists cannot be indexed portably: narrow with LIKE on the JSON text, then check exactly.
        rows = session.scalars(
            select(NodeInstance).where(cast(NodeInstance.mac_addresses, String).like(f'%"{mac}"%'))
        ).unique()
        for node in rows:
            if mac in [normalize_mac(m) for m in node.mac_addresses]:
                return node
        return None

    def resolve(self, session: Session, request: BootRequest) -> BootTarget | NotReady:
        key = (request.mac, request.platform, request.arch)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = self._resolve(session, request)
        self._cache.put(key, result)
        return result

    def _resolve(self, session: Session, request: BootRequest) -> BootTarget | NotReady:
        node: NodeInstance | None = None
        platform: NodePlatform | None
        if request.mac:
            node = self.node_by_mac(session, request.mac)
            if node is None and not request.platform:
                return NotReady(f"no NodeInstance has MAC {request.mac}")
        if node is not None and node.platform is not None:
            platform = node.platform
        elif node is not None:
            return NotReady(f"NodeInstance {node.hostname} netboots no platform (a CI worker)")
        else:
            platform = session.scalar(select(NodePlatform).where(NodePlatform.name == request.platform))
            if platform is None:
                return NotReady(f"no NodePlatform named {request.platform}")
        if request.arch not in (platform.architectures or [request.arch]):
            return NotReady(f"platform {platform.name} has no {request.arch} images")
        pub = platform.default_publication
        if pub is None:
            return NotReady(f"platform {platform.name} has no default publication")
        if pub.status != PublicationStatus.PUBLISHED.value or pub.pruned_at is not None:
            return NotReady(f"the default publication of {platform.name} is {pub.status}")
        arch_entry = pub.verified_artifacts.arch(request.arch)
        if arch_entry is None:
            return NotReady(f"publication {pub.version} of {platform.name} has no {request.arch} images")
        missing = [n for n in (KERNEL, INITRD, ROOT_IMAGE) if arch_entry.file(n) is None]
        root = arch_entry.file(ROOT_IMAGE)
        if missing or root is None:
            return NotReady(f"publication {pub.version} ({request.arch}) lacks {', '.join(missing)}")
        if not _CMDLINE.fullmatch(arch_entry.cmdline) or not _SHA256.fullmatch(root.sha256):
            return NotReady(
                f"publication {pub.version} ({request.arch}) has a kernel command line with characters"
                " iPXE would interpret: it is not booted"
            )
        return BootTarget(
            platform=platform.name,
            publication_id=pub.id,
            version=pub.version,
            arch=request.arch,
            root_sha256=root.sha256,
            cmdline=arch_entry.cmdline,
            node_id=node.id if node is not None else None,
            root_size=root.size,
            signed_uki=arch_entry.file(SIGNED_UKI) is not None,
        )

    @staticmethod
    def servable_file(session: Session, publication_id: int, arch: str, name: str) -> ArtifactRecord:
        """The verified record of one file, only from a published, unpruned publication."""
        if not 1 <= publication_id <= MAX_INTEGER:
            raise NotFound(f"publication {publication_id} is not published")
        pub = session.get(DiskImagePublication, publication_id)
        if pub is None or pub.status != PublicationStatus.PUBLISHED.value or pub.pruned_at is not None:
            raise NotFound(f"publication {publication_id} is not published")
        arch_entry = pub.verified_artifacts.arch(arch)
        record = arch_entry.file(name) if arch_entry is not None else None
        if record is None:
            raise NotFound(f"publication {publication_id} has no {arch} artifact {name!r}")
        return record

    @staticmethod
    def servable_artifact(session: Session, publication_id: int, arch: str, name: str) -> dict[str, Any]:
        """``servable_file`` as the stored JSON record (``name``, ``sha256``, ``size``, ...)."""
        return NetbootService.servable_file(session, publication_id, arch, name).model_dump(mode="json")

    # --- reports ---------------------------------------------------------------------------------
    def check_report_rate(self, *, mac: str | None = None, source: str | None = None) -> None:
        """Take a token for ``mac`` and for ``source``; ``RateLimited`` when either has none left."""
        if source is not None and not self._per_source.allow(source):
            raise RateLimited(
                f"too many boot reports from {source[:64]}", retry_after=self._per_source.retry_after()
            )
        if mac is not None and not self._per_mac.allow(mac):
            raise RateLimited(f"too many boot reports for MAC {mac}", retry_after=self._per_mac.retry_after())

    @staticmethod
    def record_report(
        session: Session,
        report: BootReport,
        *,
        source: str | None = None,
        events_max: int = NETBOOT_REPORT_EVENTS_MAX,
        per_node_per_minute: int = REPORTS_PER_NODE_PER_MINUTE,
    ) -> bool:
        """Record ``report`` on its NodeInstance, with a ``netboot_report`` event; whether it was stored.

        Not stored (and the caller answers exactly as if it were, so a report reveals nothing about
        which MACs are registered): an unknown MAC; a publication that is not a published one of the
        node's platform (no node could have been served it); more than ``per_node_per_minute`` reports
        for the node in the last minute, counted in the database so the cap holds across replicas.
        Only the newest ``events_max`` report events are kept."""
        node = NetbootService.node_by_mac(session, report.mac)
        if node is None:
            log.info("netboot report for unknown MAC %s from %s: dropped", report.mac, source)
            return False
        pub = session.get(DiskImagePublication, report.publication)
        if (
            pub is None
            or pub.platform_id != node.platform_id
            or pub.status != PublicationStatus.PUBLISHED.value
        ):
            log.warning(
                "netboot report from %s (%s) names publication %d, which %s was never served: dropped",
                node.hostname,
                source,
                report.publication,
                node.hostname,
            )
            return False
        now = datetime.now(UTC)
        recent = session.scalar(
            select(func.count())
            .select_from(Event)
            .where(
                Event.type == REPORT_EVENT,
                Event.created_at >= now - timedelta(minutes=1),
                Event.subject == node.hostname,
            )
        )
        if (recent or 0) >= per_node_per_minute:
            log.warning("netboot reports for %s: over %d a minute, dropped", node.hostname, recent)
            return False
        fields = dict(report.fields)
        previous = node.last_report or {}
        if (
            "secure_boot" not in fields
            and previous.get("publication") == report.publication
            and previous.get("status") in _IN_BOOT
            and previous.get("secure_boot") is not None
        ):
            # the booted marker (in the root) does not read the firmware: the same boot's initramfs did
            fields["secure_boot"] = previous["secure_boot"]
        record = {
            **fields,
            # booted verified: the firmware enforced Secure Boot (so it ran only what the fleet key signed)
            "verified_boot": fields.get("secure_boot") == "on",
            "status": report.status,
            "publication": report.publication,
            "received_at": now.isoformat(),
            "source": source,
        }
        node.status = report.status
        node.last_report = record
        node.last_seen = now
        event = Event(
            type=REPORT_EVENT,
            platform_id=node.platform_id,
            subject=node.hostname,
            reason=report.reason or report.status,
            payload={**record, "mac": report.mac, "node_id": node.id},
            created_at=now,
        )
        session.add(event)
        session.flush()
        if event.id % _CAP_EVERY == 0:
            cap_events(session, REPORT_EVENT, keep=events_max)
        return True


@dataclass(frozen=True)
class BootReport:
    """A boot report as checked by ``parse_report``: who it is about comes from the request's query
    (the URL the platform's own script gave the node) and never from the body."""

    mac: str
    publication: int
    status: str
    reason: str | None
    fields: dict[str, Any]  # the report's other fields, known and bounded (see ``parse_report``)


def _text(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f'report: "{name}" must be a string')
    return value[:limit]


def parse_report(body: dict[str, Any], *, mac: str | None, publication: int | None) -> BootReport:
    """Check a report's body (``parse_json``'s output) and its query; ``InvalidRequest`` if wrong.

    The status (``"status"``, or ``"event"`` as the initramfs sends it, or ``"stage"``) is one of
    ``REPORT_STATUSES``, an error's reason one of ``REPORT_REASONS``. The MAC is ``?mac=``, or the
    body's ``"mac"`` only when the query has none (a ``?platform=`` boot); the publication is
    ``?publication=``. Of the rest only ``REPORT_TEXT_FIELDS`` are kept, each cut to its length, and a
    numeric ``uptime``; anything else in the body is dropped."""
    if publication is None:
        raise InvalidRequest("report: no ?publication= (the report URL of the boot script has it)")
    if not 1 <= publication <= MAX_INTEGER:
        raise InvalidRequest(f"report: publication {publication} is out of range")
    raw_mac = mac or body.get("mac")
    if not raw_mac:
        raise InvalidRequest('report: no MAC address (?mac= or "mac" in the body)')
    if not isinstance(raw_mac, str):
        raise InvalidRequest('report: "mac" must be a string')
    status = body.get("status") or body.get("event") or body.get("stage")
    if not isinstance(status, str) or status not in REPORT_STATUSES:
        shown = status[:40] if isinstance(status, str) else status
        raise InvalidRequest(
            f'report: "status" (or "event") {shown!r} is not one of {", ".join(sorted(REPORT_STATUSES))}'
        )
    reason = _text(body, "reason", 64)
    if reason is not None and reason not in REPORT_REASONS:
        raise InvalidRequest(
            f"report: reason {reason[:40]!r} is not one of {', '.join(sorted(REPORT_REASONS))}"
        )
    fields: dict[str, Any] = {}
    if reason is not None:
        fields["reason"] = reason
    for name, limit in REPORT_TEXT_FIELDS.items():
        value = _text(body, name, limit)
        if value is not None:
            fields[name] = value
    sha = fields.get("root_sha256")
    if sha is not None and not _SHA256.fullmatch(sha):
        del fields["root_sha256"]
    uptime = body.get("uptime")
    if isinstance(uptime, int | float) and not isinstance(uptime, bool) and 0 <= uptime < 10**9:
        fields["uptime"] = uptime
    return BootReport(
        mac=normalize_mac(raw_mac),
        publication=publication,
        status=status,
        reason=reason,
        fields=fields,
    )
