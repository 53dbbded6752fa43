"""Boot reports cannot be forged into the database or fill it (SQLite and PostgreSQL): only the statuses
and reasons nodes send, only a publication the node could have been served, identity from the report
URL and never the body, bounded fields, rate limits per MAC and per source address, bounded event
storage, and the same answer for a registered MAC and an unknown one."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from netboot_support import HEXHYP, MAC, add_platform_with_node, add_publication
from sqlalchemy import func, select

from diskci.image.artifacts.rootimage import marker_script
from diskci.platform.db.models import Event, NodeInstance, NodePlatform
from diskci.platform.db.session import Database
from diskci.platform.services.blobcache import BlobCache
from diskci.platform.services.netboot import (
    REPORT_REASONS,
    REPORT_STATUSES,
    NetbootService,
    parse_report,
)
from diskci.platform.services.ratelimit import TokenBuckets
from diskci.platform.services.retention import DiskImageRetentionService, cap_events
from diskci.platform.settings import PlatformSettings

INIT_SH = Path(__file__).parents[2] / "src/diskci/image/initramfs/init.sh"
UNKNOWN = "52-54-00-00-00-99"
URL = "/api/v1/netboot/report"


@pytest.fixture
def blobs(platform_settings: PlatformSettings) -> BlobCache:
    return BlobCache(platform_settings.blob_dir)


@pytest.fixture
def platform_id(platform_db: Database) -> int:
    return add_platform_with_node(platform_db)


def _publish(database: Database, blobs: BlobCache, platform_id: int, version: str, **kw: Any) -> int:
    files = {"vmlinuz": os.urandom(1000), "initramfs.img": os.urandom(1000), "rootfs.img": os.urandom(1000)}
    digest = "sha256:" + version.encode().hex().ljust(64, "0")[:64]
    return add_publication(database, blobs, platform_id, files, version=version, manifest_digest=digest, **kw)


@pytest.fixture
def pub_id(platform_db: Database, blobs: BlobCache, platform_id: int) -> int:
    return _publish(platform_db, blobs, platform_id, "1.0.0", make_default=True)


@pytest.fixture
def client(platform_app: Any, platform_client: Any) -> Any:
    platform_app.state.netboot = NetbootService(cache_seconds=0)
    return platform_client


def _events(database: Database) -> list[Event]:
    with database.read_session() as s:
        events = list(s.scalars(select(Event).where(Event.type == "netboot_report").order_by(Event.id)))
        s.expunge_all()
        return events


def _node(database: Database) -> NodeInstance:
    with database.read_session() as s:
        node = s.scalar(select(NodeInstance).where(NodeInstance.hostname == "node-1"))
        assert node is not None
        s.expunge(node)
        return node


def test_what_nodes_send_is_what_is_accepted() -> None:
    script = INIT_SH.read_text()
    sent = set(re.findall(r"^\s*report ([a-z_]+)", script, re.M))
    assert sent == {"fetched", "verified", "switching_root", "error"}
    assert set(re.findall(r"\bfail ([a-z0-9_]+) ", script)) == REPORT_REASONS
    assert '"event":"booted"' in marker_script("debian-12-amd64", "2026.11.0")
    assert sent | {"booted"} == REPORT_STATUSES


@pytest.mark.parametrize(
    "body",
    [
        {"status": "pwned"},
        {"status": "failed"},
        {"event": "x" * 5000},
        {"status": ["booted"]},
        {"event": "error", "reason": "because I said so"},
        {"event": "error", "reason": 7},
        {"event": "booted", "message": {"nested": True}},
    ],
)
def test_unknown_statuses_and_reasons_are_refused(
    client: Any, platform_db: Database, pub_id: int, body: dict[str, Any]
) -> None:
    r = client.post(f"/api/v1/netboot/report?publication={pub_id}&mac={HEXHYP}", json=body)
    assert r.status_code == 400 and r.json()["error"] == "InvalidRequest", r.text
    assert _events(platform_db) == [] and _node(platform_db).status == "registered"


def test_a_report_without_a_publication_is_refused(client: Any, pub_id: int) -> None:
    r = client.post(f"/api/v1/netboot/report?mac={HEXHYP}", json={"status": "booted"})
    assert r.status_code == 400 and "publication" in r.json()["detail"]


def test_only_a_publication_the_node_could_have_been_served_is_recorded(
    client: Any, platform_db: Database, blobs: BlobCache, platform_id: int, pub_id: int
) -> None:
    with platform_db.session() as s:
        other = NodePlatform(
            name="other",
            architectures=["amd64"],
            registry_repository="127.0.0.1:5000/ops/disk-images/other",
            cosign_identity_regexp="https://git.example.com/.*",
            cosign_oidc_issuer="https://git.example.com",
        )
        s.add(other)
        s.flush()
        other_id = other.id
    foreign = _publish(platform_db, blobs, other_id, "9.9.9")
    failed = _publish(platform_db, blobs, platform_id, "0.9.0", status="failed")
    older = _publish(platform_db, blobs, platform_id, "0.8.0")  # published, not the default: servable
    for publication in (foreign, failed, 999_999):
        r = client.post(
            f"/api/v1/netboot/report?publication={publication}&mac={HEXHYP}", json={"event": "booted"}
        )
        assert r.status_code == 202 and r.json() == {"status": "booted"}
    assert _events(platform_db) == [] and _node(platform_db).status == "registered"
    for publication in (pub_id, older):
        r = client.post(
            f"/api/v1/netboot/report?publication={publication}&mac={HEXHYP}", json={"event": "booted"}
        )
        assert r.status_code == 202
    assert [e.payload["publication"] for e in _events(platform_db)] == [pub_id, older]


def test_the_body_never_overrides_identity_and_fields_are_bounded(
    client: Any, platform_db: Database, pub_id: int
) -> None:
    forged = {
        "event": "error",
        "reason": "sha256_mismatch",
        "message": "m" * 60_000,
        "root": "r" * 2000,
        "root_sha256": "not hex",
        "uptime": 12.5,
        "mac": "52:54:00:66:66:66",
        "node_id": 4242,
        "publication": 31337,
        "received_at": "1970-01-01T00:00:00+00:00",
        "source": "10.9.9.9",
        "hostname": "root",
        "injected": {"x": "y" * 100},
    }
    r = client.post(f"/api/v1/netboot/report?publication={pub_id}&mac={HEXHYP}", json=forged)
    assert r.status_code == 202
    node = _node(platform_db)
    (event,) = _events(platform_db)
    for record in (node.last_report, event.payload):
        assert record is not None
        assert record["publication"] == pub_id and record["status"] == "error"
        assert record["received_at"] > "2000" and record["source"] == "testclient"
        assert len(record["message"]) == 1024 and len(record["root"]) == 512
        assert "root_sha256" not in record and "injected" not in record and "hostname" not in record
        assert record["uptime"] == 12.5
    assert event.payload["mac"] == MAC and event.payload["node_id"] == node.id
    assert event.subject == "node-1" and event.reason == "sha256_mismatch"
    assert len(json.dumps(event.payload)) < 2500


def test_a_registered_mac_and_an_unknown_one_get_the_same_answer(
    client: Any, platform_db: Database, pub_id: int
) -> None:
    answers = []
    for mac in (HEXHYP, UNKNOWN):
        r = client.post(f"/api/v1/netboot/report?publication={pub_id}&mac={mac}", json={"event": "fetched"})
        answers.append((r.status_code, r.content, sorted(k for k in r.headers if k != "date")))
    assert answers[0] == answers[1]
    assert len(_events(platform_db)) == 1  # only the registered node's


def test_reports_are_rate_limited_per_mac(platform_app: Any, client: Any, pub_id: int) -> None:
    platform_app.state.netboot = NetbootService(cache_seconds=0, report_rate_per_mac=(0.01, 3))
    url = f"/api/v1/netboot/report?publication={pub_id}"
    codes = [client.post(f"{url}&mac={HEXHYP}", json={"event": "fetched"}).status_code for _ in range(5)]
    assert codes == [202, 202, 202, 429, 429]
    r = client.post(f"{url}&mac={HEXHYP}", json={"event": "fetched"})
    assert r.json()["error"] == "RateLimited" and int(r.headers["retry-after"]) >= 1
    # the limit is the MAC's, known or not, from the query or the body
    assert client.post(f"{url}&mac={UNKNOWN}", json={"event": "fetched"}).status_code == 202
    assert client.post(url, json={"event": "fetched", "mac": MAC}).status_code == 429


def test_reports_are_rate_limited_per_source_address(platform_app: Any, client: Any, pub_id: int) -> None:
    platform_app.state.netboot = NetbootService(cache_seconds=0, report_rate_per_source=(0.01, 4))
    url = f"/api/v1/netboot/report?publication={pub_id}"
    codes = [
        client.post(f"{url}&mac=52-54-00-00-01-{i:02x}", json={"event": "fetched"}).status_code
        for i in range(6)
    ]
    assert codes == [202, 202, 202, 202, 429, 429]
    # refused before the body is read: even a bad body gets the 429
    assert client.post(url, content=b"not json").status_code == 429


def test_token_buckets_refill_and_stay_bounded() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=1.0, burst=2, max_keys=3, clock=lambda: now[0])
    assert [buckets.allow("a") for _ in range(3)] == [True, True, False]
    now[0] = 1.0
    assert buckets.allow("a") and not buckets.allow("a")
    for key in "bcde":
        buckets.allow(key)
    assert len(buckets._buckets) == 3


def test_stored_reports_per_node_are_capped_across_replicas(platform_db: Database, pub_id: int) -> None:
    # two services stand for two replicas: the cap is counted in the database, not in either process
    replicas = [NetbootService(), NetbootService()]
    stored = []
    for i in range(8):
        report = parse_report({"event": "fetched"}, mac=HEXHYP, publication=pub_id)
        with platform_db.session() as s:
            stored.append(replicas[i % 2].record_report(s, report, per_node_per_minute=5))
    assert stored == [True] * 5 + [False] * 3
    assert len(_events(platform_db)) == 5


def test_a_flood_of_large_reports_stays_small(
    platform_app: Any, client: Any, platform_db: Database, pub_id: int
) -> None:
    platform_app.state.netboot = NetbootService(
        cache_seconds=0, report_rate_per_mac=(1000, 1000), report_rate_per_source=(1000, 1000)
    )
    body = {"event": "error", "reason": "download_failed", "message": "x" * 30_000, "junk": "y" * 30_000}
    assert len(json.dumps(body)) > 60_000
    for _ in range(200):
        r = client.post(f"/api/v1/netboot/report?publication={pub_id}&mac={HEXHYP}", json=body)
        assert r.status_code == 202
    events = _events(platform_db)
    assert len(events) == 30  # REPORTS_PER_NODE_PER_MINUTE
    assert sum(len(json.dumps(e.payload)) for e in events) < 30 * 1500


def test_report_events_are_capped_on_insert(platform_db: Database, pub_id: int) -> None:
    for _ in range(120):
        report = parse_report({"event": "fetched"}, mac=HEXHYP, publication=pub_id)
        with platform_db.session() as s:
            NetbootService.record_report(s, report, events_max=10, per_node_per_minute=1000)
    count = len(_events(platform_db))
    assert 10 <= count < 10 + 50  # trimmed every 50th report
    with platform_db.session() as s:
        assert cap_events(s, "netboot_report", keep=10) == count - 10
    events = _events(platform_db)
    assert len(events) == 10 and events[-1].id == max(e.id for e in events)


def test_the_retention_sweep_deletes_old_events(
    platform_db: Database, blobs: BlobCache, platform_id: int
) -> None:
    now = datetime.now(UTC)
    with platform_db.session() as s:
        s.add(Event(type="netboot_report", subject="node-1", payload={}, created_at=now - timedelta(days=40)))
        s.add(Event(type="disk_image_published", payload={}, created_at=now - timedelta(days=40)))
        s.add(Event(type="netboot_report", subject="node-1", payload={}, created_at=now - timedelta(days=1)))
    service = DiskImageRetentionService(
        database=platform_db,
        blobs=blobs,
        deleter=lambda *a: None,
        clock=lambda: now,
        event_retention_days=30,
    )
    assert service.preview().events_removed == 0
    result = service.sweep()
    assert result.events_removed == 2 and result.as_dict()["events_removed"] == 2
    with platform_db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 1
