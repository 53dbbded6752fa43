"""Netboot routes on the real app (SQLite and PostgreSQL): iPXE scripts, verified downloads with Range
and ETag, boot reports, and the rule that only published, unpruned publications are ever served."""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from netboot_support import HEXHYP, MAC, add_platform_with_node, add_publication
from sqlalchemy import select

from diskci.platform.db.models import DiskImagePublication, Event, NodeInstance
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.netboot import NetbootService
from diskci.platform.settings import PlatformSettings


@pytest.fixture
def app(platform_app: Any) -> Any:
    platform_app.state.netboot = NetbootService(cache_seconds=0)  # every request sees the database now
    return platform_app


@pytest.fixture
def client(app: Any, platform_client: Any) -> Any:
    return platform_client


@pytest.fixture
def blobs(platform_settings: PlatformSettings) -> BlobCache:
    return BlobCache(platform_settings.blob_dir)


@pytest.fixture
def platform_id(platform_db: Database) -> int:
    return add_platform_with_node(platform_db)


def _publication(
    database: Database, blobs: BlobCache, platform_id: int, version: str, *, status: str = "published"
) -> tuple[int, dict[str, bytes]]:
    files = {
        "vmlinuz": os.urandom(50_000),
        "initramfs.img": os.urandom(70_000),
        "rootfs.img": os.urandom(300_000),
    }
    manifest_digest = "sha256:" + hashlib.sha256(version.encode()).hexdigest()
    pub_id = add_publication(
        database, blobs, platform_id, files, version=version, manifest_digest=manifest_digest, status=status
    )
    return pub_id, files


def _set_default(client: Any, headers: dict[str, str], publication_id: int) -> Any:
    return client.post(
        "/api/v1/system_set_default_disk_image_publication",
        json={"platform": "debian-12-amd64", "publication_id": publication_id},
        headers=headers,
    )


def test_boot_ipxe_chains_to_the_machine_script(client: Any) -> None:
    r = client.get("/boot.ipxe")
    assert r.status_code == 200
    lines = r.text.splitlines()
    assert lines[0] == "#!ipxe"
    assert (
        "chain --autofree http://127.0.0.1:8480/ipxe?mac=${mac:hexhyp}&uuid=${uuid}&arch=${buildarch}"
        in lines
    )


def test_ipxe_without_a_default_prints_why_and_retries(client: Any, platform_id: int) -> None:
    r = client.get(f"/ipxe?mac={HEXHYP}&uuid=u-1&arch=x86_64")
    assert r.status_code == 200
    assert "has no default publication" in r.text
    assert re.search(r"^sleep \d+$", r.text, re.M)
    assert f"chain --autofree http://127.0.0.1:8480/ipxe?mac={HEXHYP}&uuid=u-1&arch=amd64" in r.text
    assert "kernel" not in r.text
    unknown = client.get("/ipxe?mac=52-54-00-ff-ff-ff&arch=x86_64")
    assert "no NodeInstance has MAC 52:54:00:ff:ff:ff" in unknown.text and "sleep" in unknown.text
    bad = client.get("/ipxe?mac=not-a-mac&arch=x86_64")
    assert bad.status_code == 400 and "not a MAC address" in bad.text


def test_ipxe_boots_the_default_with_the_verified_root_digest(
    client: Any, admin_headers: dict[str, str], platform_db: Database, blobs: BlobCache, platform_id: int
) -> None:
    pub_id, files = _publication(platform_db, blobs, platform_id, "1.0.0")
    assert _set_default(client, admin_headers, pub_id).status_code == 200
    for arch in ("x86_64", "i386"):  # a BIOS iPXE is an i386 build: it boots amd64 kernels too
        r = client.get(f"/ipxe?mac={HEXHYP}&uuid=u-1&arch={arch}")
        base = f"http://127.0.0.1:8480/netboot/{pub_id}/amd64"
        root_sha = hashlib.sha256(files["rootfs.img"]).hexdigest()
        assert f"kernel {base}/vmlinuz initrd=initramfs.img diskci.root={base}/rootfs.img " in r.text
        assert f"diskci.root_sha256={root_sha} " in r.text
        assert (
            f"diskci.report=http://127.0.0.1:8480/api/v1/netboot/report?publication={pub_id}&mac={HEXHYP} "
            in r.text
        )
        assert "ip=dhcp console=ttyS0 quiet\n" in r.text
        assert f"initrd --name initramfs.img {base}/initramfs.img" in r.text
        assert r.text.rstrip().endswith("boot")
    by_platform = client.get("/ipxe?platform=debian-12-amd64&arch=x86_64")
    assert f"/netboot/{pub_id}/amd64/vmlinuz" in by_platform.text
    arm = client.get(f"/ipxe?mac={HEXHYP}&arch=arm64")
    assert "has no arm64 images" in arm.text and "kernel" not in arm.text


def test_artifact_download_with_etag_and_range(
    client: Any, platform_db: Database, blobs: BlobCache, platform_id: int
) -> None:
    pub_id, files = _publication(platform_db, blobs, platform_id, "1.0.0")
    url = f"/netboot/{pub_id}/amd64/rootfs.img"
    data = files["rootfs.img"]
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    full = client.get(url)
    assert full.status_code == 200 and full.content == data
    assert full.headers["etag"] == etag and full.headers["accept-ranges"] == "bytes"
    part = client.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = client.get(url, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == data[-100:]
    resumed = client.get(url, headers={"Range": "bytes=299990-", "If-Range": etag})
    assert resumed.status_code == 206 and resumed.content == data[299990:]
    stale = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"somethingelse"'})
    assert stale.status_code == 200 and stale.content == data
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    head = client.head(url)
    assert (
        head.status_code == 200 and head.headers["content-length"] == str(len(data)) and head.content == b""
    )
    bad_range = client.get(url, headers={"Range": f"bytes={len(data) + 10}-"})
    assert bad_range.status_code == 416


@pytest.mark.parametrize("status", ["failed", "processing", "pruned"])
def test_unpublished_publications_are_never_served(
    status: str,
    client: Any,
    admin_headers: dict[str, str],
    platform_db: Database,
    blobs: BlobCache,
    platform_id: int,
) -> None:
    pub_id, _files = _publication(platform_db, blobs, platform_id, "9.9.9", status=status)
    for name in ("vmlinuz", "initramfs.img", "rootfs.img"):
        r = client.get(f"/netboot/{pub_id}/amd64/{name}")
        assert r.status_code == 404 and r.json()["error"] == "NotFound"
    assert _set_default(client, admin_headers, pub_id).status_code >= 400  # never a default either
    assert "kernel" not in client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64").text


def test_default_pruned_after_being_set_is_no_longer_booted(
    client: Any, admin_headers: dict[str, str], platform_db: Database, blobs: BlobCache, platform_id: int
) -> None:
    pub_id, _files = _publication(platform_db, blobs, platform_id, "1.0.0")
    assert _set_default(client, admin_headers, pub_id).status_code == 200
    assert "kernel" in client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64").text
    with platform_db.session() as s:
        pub = s.get(DiskImagePublication, pub_id)
        assert pub is not None
        pub.status, pub.pruned_at = "pruned", datetime.now(UTC)
    r = client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64")
    assert "is pruned" in r.text and "kernel" not in r.text
    assert client.get(f"/netboot/{pub_id}/amd64/vmlinuz").status_code == 404
    assert client.get(f"/netboot/{pub_id}/amd64/no-such-file").status_code == 401  # not a boot file
    assert client.get(f"/netboot/{pub_id}/amd64/no-such-file", headers=admin_headers).status_code == 404


def test_missing_blob_is_not_found_not_an_error(
    client: Any, platform_db: Database, blobs: BlobCache, platform_id: int
) -> None:
    pub_id, files = _publication(platform_db, blobs, platform_id, "1.0.0")
    blobs.remove(hashlib.sha256(files["vmlinuz"]).hexdigest())
    r = client.get(f"/netboot/{pub_id}/amd64/vmlinuz")
    assert r.status_code == 404 and "not in the blob cache" in r.json()["detail"]


def test_boot_report_updates_the_node_and_records_an_event(
    client: Any, platform_db: Database, blobs: BlobCache, platform_id: int
) -> None:
    pub_id, _ = _publication(platform_db, blobs, platform_id, "1.0.0")
    r = client.post(f"/api/v1/netboot/report?publication={pub_id}&mac={HEXHYP}", json={"status": "verified"})
    assert r.status_code == 202 and r.json() == {"status": "verified"}
    r = client.post(
        f"/api/v1/netboot/report?publication={pub_id}",
        json={"event": "error", "reason": "sha256_mismatch", "mac": MAC},
    )
    assert r.status_code == 202
    with platform_db.read_session() as s:
        node = s.scalar(select(NodeInstance).where(NodeInstance.hostname == "node-1"))
        assert node is not None
        assert node.status == "error" and node.last_report is not None
        assert node.last_report["reason"] == "sha256_mismatch" and node.last_seen is not None
        events = list(s.scalars(select(Event).where(Event.type == "netboot_report").order_by(Event.id)))
        assert [(e.subject, e.reason) for e in events] == [
            ("node-1", "verified"),
            ("node-1", "sha256_mismatch"),
        ]
        assert events[0].payload["publication"] == pub_id
    report = f"/api/v1/netboot/report?publication={pub_id}"
    assert client.post(report, content=b"not json").status_code == 400
    assert client.post(report, json={"status": "booted"}).status_code == 400  # no MAC
    # an unknown MAC is answered as a known one is (nothing is stored)
    r = client.post(f"{report}&mac=52-54-00-00-00-01", json={"status": "booted"})
    assert r.status_code == 202 and r.json() == {"status": "booted"}
    assert client.post(f"{report}&mac={HEXHYP}", json={"status": "Not A Word!"}).status_code == 400
    big = {"status": "fetched", "detail": "x" * 70_000}
    assert client.post(f"{report}&mac={HEXHYP}", json=big).status_code == 413


def test_script_cache_serves_a_storm_without_the_database(
    platform_app: Any,
    platform_client: Any,
    platform_db: Database,
    blobs: BlobCache,
    platform_id: int,
    admin_headers: dict[str, str],
) -> None:
    platform_app.state.netboot = NetbootService(cache_seconds=60)
    pub_id, _files = _publication(platform_db, blobs, platform_id, "1.0.0")
    assert _set_default(platform_client, admin_headers, pub_id).status_code == 200
    first = platform_client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64").text
    with platform_db.session() as s:  # the node moves away: a cached answer does not notice ...
        node = s.scalar(select(NodeInstance).where(NodeInstance.hostname == "node-1"))
        assert node is not None
        node.mac_addresses = []
    assert platform_client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64").text == first
    platform_app.state.netboot.clear_cache()  # ... until it expires
    assert "no NodeInstance" in platform_client.get(f"/ipxe?mac={HEXHYP}&arch=x86_64").text
