"""Netboot: which verified image a machine boots, as iPXE scripts, and what it reports back.

The flow (Matchbox's): a machine's iPXE fetches ``/boot.ipxe``, which chains to
``/ipxe?mac=${mac:hexhyp}&uuid=${uuid}&arch=${buildarch}``; that script is rendered for the
NodeInstance owning the MAC (or for ``?platform=``) from its platform's default publication for that
architecture: the kernel and initramfs are served by the platform from its blob cache, and the kernel
command line carries the root image URL with the sha256 the processor verified, so the initramfs
refuses any other bytes. With no default yet the script says why and retries.

Lookups are cached for ``cache_seconds`` (a netboot storm asks the same question thousands of times
a second); a new default is seen within that time.

The scripts are iPXE code, so nothing from a request reaches them unchecked: every URL starts from the
configured ``public_base_url`` (never the request's ``Host``), the request's values must match a strict
grammar (or the answer is a 400) and reach URLs only URL-encoded, text in ``echo`` lines keeps only
characters iPXE gives no meaning to, and a publication whose kernel command line holds others is not
booted. Only the files a node needs to boot (``BOOT_FILES``) are served without a login.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import String, cast, select
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
from diskci.supplychain.verified import ArtifactRecord

# iPXE's ${buildarch} → diskci architecture. A BIOS iPXE is an i386 build that boots x86_64 kernels.
IPXE_ARCHES = {"x86_64": "amd64", "i386": "amd64", "arm64": "arm64"}
KERNEL = "vmlinuz"
INITRD = "initramfs.img"
ROOT_IMAGE = "rootfs.img"
BOOT_SCRIPT = "boot.ipxe"
BOOT_FILES = frozenset({KERNEL, INITRD, ROOT_IMAGE, BOOT_SCRIPT})  # served without a login
REPORT_PATH = "/api/v1/netboot/report"
MAX_REPORT_BYTES = 64 * 1024
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
    return (
        "#!ipxe\n"
        f"echo diskci: booting {_ipxe_text(target.platform)} {_ipxe_text(target.version)} ({target.arch})\n"
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

    def __init__(self, *, cache_seconds: float = 1.0) -> None:
        self._cache = _TtlCache(cache_seconds)

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
        if node is not None:
            platform = node.platform
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
    @staticmethod
    def record_report(
        session: Session, body: dict[str, Any], *, mac: str | None, publication: int | None
    ) -> NodeInstance:
        """Record a boot progress report on its NodeInstance, with a ``netboot_report`` event."""
        mac = normalize_mac(mac or str(body.get("mac") or "")) if (mac or body.get("mac")) else None
        if mac is None:
            raise InvalidRequest('report: no MAC address (?mac= or "mac" in the body)')
        stage = body.get("status") or body.get("event") or body.get("stage")
        if not isinstance(stage, str) or not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", stage):
            raise InvalidRequest('report: "status" (or "event"/"stage") must be a short lower-case word')
        node = NetbootService.node_by_mac(session, mac)
        if node is None:
            raise NotFound(f"no NodeInstance has MAC {mac}")
        now = datetime.now(UTC)
        reason = body.get("reason")
        record = {**body, "status": stage, "publication": publication, "received_at": now.isoformat()}
        node.status = stage
        node.last_report = record
        node.last_seen = now
        session.add(
            Event(
                type="netboot_report",
                platform_id=node.platform_id,
                subject=node.hostname,
                reason=str(reason)[:64] if reason else stage,
                payload={"mac": mac, "node_id": node.id, **record},
            )
        )
        session.flush()
        return node
