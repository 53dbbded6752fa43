"""Netboot routes: iPXE scripts, verified artifact downloads (Range, ETag) and boot reports.

``GET /boot.ipxe`` → ``GET /ipxe?mac=..&uuid=..&arch=..`` → ``GET /netboot/{publication}/{arch}/{name}``
→ the initramfs posts progress to ``POST /api/v1/netboot/report``. URLs in the scripts are built from
the configured ``public_base_url``, never from the request (its ``Host`` header is the caller's to
choose). Only published, unpruned publications are served; bytes come from the blob cache, where they
were stored only after their digests were checked. The boot files (``BOOT_FILES``: kernel, initramfs,
root image, boot script) need no login, as a booting machine has none; every other artifact of a
publication (rootfs.tar, disk images, SBOM, ...) needs a bearer token (any role).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from diskci.errors import InvalidRequest, NotFound
from diskci.platform.db.session import MAX_INTEGER, Database, get_database
from diskci.platform.http.auth import authenticate_request
from diskci.platform.http.jsonbody import parse_json_object
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.netboot import (
    BOOT_FILES,
    REPORT_PATH,
    BootRequest,
    BootTarget,
    NetbootService,
    NotReady,
    boot_chain_script,
    boot_script,
    error_script,
    parse_boot_request,
    parse_report,
    retry_script,
)
from diskci.platform.services.ratelimit import RateLimited
from diskci.platform.settings import PlatformSettings
from diskci.supplychain.verified import ArtifactRecord

IPXE_MEDIA_TYPE = "text/plain; charset=utf-8"
_DOWNLOAD_CHUNK = 1 << 20

router = APIRouter(tags=["netboot"])

_ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_IPXE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a bad request, as an iPXE script that prints why", "content": {"text/plain": {}}},
    503: {"description": "the database is unavailable", "content": _ERROR_JSON},
}
_ARTIFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the artifact's bytes", "content": {"application/octet-stream": {}}},
    206: {"description": "the requested range", "content": {"application/octet-stream": {}}},
    304: {"description": "not modified (If-None-Match)"},
    400: {"description": "invalid path (publication id not a 64-bit integer)", "content": _ERROR_JSON},
    401: {"description": "a non-boot artifact without a valid bearer token", "content": _ERROR_JSON},
    404: {"description": "no such servable publication, architecture or artifact", "content": _ERROR_JSON},
    416: {"description": "the requested range is not satisfiable"},
    503: {"description": "the database is unavailable", "content": _ERROR_JSON},
}
_REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a malformed report", "content": _ERROR_JSON},
    413: {"description": "the body is over MAX_REPORT_BYTES", "content": _ERROR_JSON},
    429: {"description": "too many reports from this address or MAC", "content": _ERROR_JSON},
    503: {"description": "the database is unavailable", "content": _ERROR_JSON},
}


class _State:
    """What the routes share, taken from ``app.state`` when the app provides it."""

    def __init__(self, request: Request) -> None:
        state = request.app.state
        self.settings: PlatformSettings = getattr(state, "settings", None) or _default_settings()
        self.database: Database = getattr(state, "database", None) or get_database()
        service = getattr(state, "netboot", None)
        if service is None:
            service = NetbootService(cache_seconds=getattr(state, "netboot_cache_seconds", 1.0))
            state.netboot = service
        self.netboot: NetbootService = service
        blobs = getattr(state, "blobs", None)
        if blobs is None:
            blobs = BlobCache(self.settings.blob_dir)
            state.blobs = blobs
        self.blobs: BlobCache = blobs


_settings_cache: list[PlatformSettings] = []


def _default_settings() -> PlatformSettings:
    if not _settings_cache:
        _settings_cache.append(PlatformSettings())
    return _settings_cache[0]


StateDep = Annotated[_State, Depends(_State)]


class _VerifiedFile(FileResponse):
    chunk_size = _DOWNLOAD_CHUNK


@router.get(
    "/boot.ipxe", response_class=PlainTextResponse, summary="iPXE entry script", responses=_IPXE_RESPONSES
)
async def boot_ipxe(state: StateDep) -> Response:
    """The script every machine's iPXE fetches first: it chains to this machine's own script."""
    return Response(boot_chain_script(state.settings.public_base_url), media_type=IPXE_MEDIA_TYPE)


@router.get(
    "/ipxe",
    response_class=PlainTextResponse,
    summary="iPXE script for one machine",
    responses=_IPXE_RESPONSES,
)
async def ipxe(
    state: StateDep,
    mac: Annotated[str | None, Query(description="MAC address, iPXE's ${mac:hexhyp}")] = None,
    uuid: Annotated[str | None, Query(description="SMBIOS UUID, iPXE's ${uuid}")] = None,
    arch: Annotated[str | None, Query(description="iPXE's ${buildarch}: x86_64, i386 or arm64")] = None,
    platform: Annotated[
        str | None, Query(description="boot this NodePlatform (no NodeInstance needed)")
    ] = None,
) -> Response:
    """Boot the default publication of the machine's platform, or print why not and retry."""
    try:
        boot = parse_boot_request(mac, uuid, platform, arch)
    except InvalidRequest as exc:
        return Response(error_script(exc.message), status_code=400, media_type=IPXE_MEDIA_TYPE)
    target = await _resolve(state, boot)
    base = state.settings.public_base_url
    if isinstance(target, NotReady):
        return Response(retry_script(target.why, base, boot), media_type=IPXE_MEDIA_TYPE)
    return Response(boot_script(target, base, boot), media_type=IPXE_MEDIA_TYPE)


async def _resolve(state: _State, boot: BootRequest) -> BootTarget | NotReady:
    cached = state.netboot.cached(boot)
    if cached is not None:
        return cached

    def lookup() -> BootTarget | NotReady:
        with state.database.read_session() as s:
            return state.netboot.resolve(s, boot)

    return await run_in_threadpool(lookup)


_ARTIFACT_PATH = "/netboot/{publication}/{arch}/{artifact}"


@router.head(
    _ARTIFACT_PATH,
    summary="a verified boot artifact's headers",
    operation_id="netboot_artifact_head",
    responses=_ARTIFACT_RESPONSES,
)
@router.get(
    _ARTIFACT_PATH,
    summary="a verified boot artifact",
    operation_id="netboot_artifact",
    responses=_ARTIFACT_RESPONSES,
)
async def netboot_artifact(
    request: Request, state: StateDep, publication: int, arch: str, artifact: str
) -> Response:
    """Stream one artifact of a published publication from the blob cache (Range and ETag honoured).

    The boot files need no login; any other artifact needs a bearer token."""
    boot_file = artifact in BOOT_FILES
    if not boot_file:
        await authenticate_request(request)

    def lookup() -> ArtifactRecord:
        with state.database.read_session() as s:
            return state.netboot.servable_file(s, publication, arch, artifact)

    try:
        record = await run_in_threadpool(lookup)
    except NotFound as exc:
        return JSONResponse({"error": "NotFound", "detail": exc.message}, status_code=404)
    digest = record.sha256
    etag = f'"{digest}"'
    path = state.blobs.path(digest)
    if not path.is_file():
        return JSONResponse(
            {"error": "NotFound", "detail": f"blob sha256:{digest} is not in the blob cache"}, status_code=404
        )
    visibility = "public" if boot_file else "private"
    headers = {"etag": etag, "cache-control": f"{visibility}, max-age=31536000, immutable"}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and (
        if_none_match.strip() == "*" or etag in [t.strip() for t in if_none_match.split(",")]
    ):
        return Response(status_code=304, headers=headers)
    return _VerifiedFile(
        path,
        media_type="application/octet-stream",
        headers=headers,
    )


@router.post(
    REPORT_PATH,
    status_code=202,
    summary="boot progress from a node's initramfs",
    responses=_REPORT_RESPONSES,
)
async def netboot_report(
    request: Request,
    state: StateDep,
    mac: Annotated[str | None, Query(max_length=64)] = None,
    publication: Annotated[int | None, Query(ge=1, le=MAX_INTEGER)] = None,
) -> Response:
    """Record a boot progress report (``fetched``, ``verified``, ``switching_root``, ``booted``, ``error``).

    The body is at most ``MAX_REPORT_BYTES`` (refused with 413 before it is read). Reports are limited
    per source address and per MAC (429 with ``Retry-After``). A well-formed report is answered 202
    with its status whether or not it was stored (an unknown MAC, a publication the node was never
    served), so the answer tells nothing about which MACs are registered."""
    source = request.client.host if request.client is not None else None
    try:
        state.netboot.check_report_rate(source=source)
        body = parse_json_object(await request.body(), what="report")
        report = parse_report(body, mac=mac, publication=publication)
        state.netboot.check_report_rate(mac=report.mac)
    except InvalidRequest as exc:
        return JSONResponse({"error": "InvalidRequest", "detail": exc.message}, status_code=400)
    except RateLimited as exc:
        return JSONResponse(
            {"error": "RateLimited", "detail": exc.message},
            status_code=429,
            headers={"retry-after": str(exc.retry_after)},
        )
    events_max = state.settings.netboot_report_events_max

    def record() -> None:
        with state.database.session() as s:
            state.netboot.record_report(s, report, source=source, events_max=events_max)

    await run_in_threadpool(record)
    return JSONResponse({"status": report.status}, status_code=202)
