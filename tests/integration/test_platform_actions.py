"""The operator actions, called through the registry on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from diskci.errors import Conflict, Forbidden, InvalidRequest, NotFound
from diskci.platform.actions.catalog import (
    ConfirmationRequired,
    confirmation_needed,
    invoke,
    load_all,
    preview_action,
)
from diskci.platform.db.models import DiskImagePublication, DiskImageWebhook, Event, NodePlatform, Role
from diskci.platform.db.session import Database
from diskci.platform.secrets import SecretBox
from diskci.platform.settings import PlatformSettings

REPO = "127.0.0.1:5000/ops/disk-images/debian-12-amd64"
REGEXP = r"^https://ci\.example/ops/images/\.forgejo/workflows/build\.yml@refs/heads/main$"
ISSUER = "https://ci.example"


def call(
    db: Database, settings: PlatformSettings, action: str, role: Role = Role.ADMIN, /, **data: Any
) -> Any:
    return invoke(action, data, database=db, settings=settings, actor="test", role=role)


def platform(db: Database, settings: PlatformSettings, name: str = "debian-12-amd64", **over: Any) -> Any:
    data = {
        "name": name,
        "architectures": ["amd64", "arm64"],
        "registry_repository": REPO,
        "cosign_identity_regexp": REGEXP,
        "cosign_oidc_issuer": ISSUER,
        **over,
    }
    return call(db, settings, "system_create_node_platform", **data)


def add_publication(
    db: Database,
    platform_name: str,
    version: str,
    *,
    status: str = "published",
    age_days: float = 0,
    critical: bool = False,
) -> int:
    with db.session() as s:
        p = s.scalar(select(NodePlatform).where(NodePlatform.name == platform_name))
        assert p is not None
        pub = DiskImagePublication(
            platform_id=p.id,
            version=version,
            reference=f"{REPO}:{version}",
            status=status,
            manifest_digest="sha256:" + hashlib.sha256(f"{platform_name}:{version}".encode()).hexdigest(),
            critical=critical,
            artifacts={"amd64": {"artifacts": []}},
            created_at=datetime.now(UTC) - timedelta(days=age_days),
        )
        s.add(pub)
        s.flush()
        return pub.id


def test_every_seed_action_is_registered() -> None:
    names = set(load_all())
    for seed in (
        "provision_disk_image_webhook",
        "system_list_disk_image_webhooks",
        "system_list_disk_image_publications",
        "system_set_default_disk_image_publication",
        "system_set_disk_image_retention",
        "system_get_instance_stats",
        "system_update_node_platform",
        "system_preview_disk_image_retention",
        "system_mark_disk_image_publication_critical",
        "system_list_recent_events",
    ):
        assert seed in names


def test_create_list_get_update_platform(platform_db: Database, platform_settings: PlatformSettings) -> None:
    out = platform(platform_db, platform_settings)
    assert out.architectures == ["amd64", "arm64"]
    assert out.retention_routine_days == 90 and out.retention_critical_days == 365
    listed = call(platform_db, platform_settings, "system_list_node_platforms", Role.VIEWER)
    assert [p.name for p in listed.platforms] == ["debian-12-amd64"]
    got = call(
        platform_db, platform_settings, "system_get_node_platform", Role.VIEWER, name="debian-12-amd64"
    )
    assert got.registry_repository == REPO
    new_regexp = r"^https://ci\.example/ops/.+$"
    updated = call(
        platform_db,
        platform_settings,
        "system_update_node_platform",
        name="debian-12-amd64",
        cosign_identity_regexp=new_regexp,
        architectures=["amd64"],
    )
    assert updated.cosign_identity_regexp == new_regexp and updated.architectures == ["amd64"]
    with pytest.raises(Conflict, match="already exists"):
        platform(platform_db, platform_settings)
    with pytest.raises(NotFound, match="no node platform named 'nope'"):
        call(platform_db, platform_settings, "system_get_node_platform", name="nope")


@pytest.mark.parametrize(
    ("regexp", "message"),
    [
        ("^https://ci\\.example/(unclosed$", "does not compile"),
        ("https://ci\\.example/.+", "must be anchored"),
        ("^.*$", "foreign identity"),
        ("^https?://.+$", "foreign identity"),
    ],
)
def test_update_refuses_bad_identity_regexp(
    platform_db: Database, platform_settings: PlatformSettings, regexp: str, message: str
) -> None:
    platform(platform_db, platform_settings)
    with pytest.raises(InvalidRequest, match=message):
        call(
            platform_db,
            platform_settings,
            "system_update_node_platform",
            name="debian-12-amd64",
            cosign_identity_regexp=regexp,
        )
    got = call(platform_db, platform_settings, "system_get_node_platform", name="debian-12-amd64")
    assert got.cosign_identity_regexp == REGEXP  # nothing changed


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("registry_repository", "127.0.0.1:5000/Ops/Images:latest", "not host"),
        ("registry_repository", "oci-layout:relative/path", "absolute path"),
        ("cosign_oidc_issuer", "ci.example", "http\\(s\\) URL"),
        ("trusted_root", "{not json", "not JSON"),
        ("architectures", ["sparc"], "architectures"),
        ("name", "Bad Name", "name"),
    ],
)
def test_create_refuses_bad_fields(
    platform_db: Database, platform_settings: PlatformSettings, field: str, value: Any, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        platform(platform_db, platform_settings, **{field: value})
    assert call(platform_db, platform_settings, "system_list_node_platforms").platforms == []


def test_webhook_provision_and_rotation(platform_db: Database, platform_settings: PlatformSettings) -> None:
    platform(platform_db, platform_settings)
    first = call(platform_db, platform_settings, "provision_disk_image_webhook", platform="debian-12-amd64")
    assert first.rotated is False and len(first.secret) >= 32
    assert first.url == "http://127.0.0.1:8480/api/v1/system/webhooks/disk_image_built"
    assert first.secret_fingerprint.startswith("sha256:")
    second = call(platform_db, platform_settings, "provision_disk_image_webhook", platform="debian-12-amd64")
    assert second.rotated is True and second.secret != first.secret
    assert second.previous_fingerprint == first.secret_fingerprint
    assert second.previous_valid_until is not None
    assert second.previous_valid_until > datetime.now(UTC) + timedelta(hours=23)
    given = "g" * 40
    # A third rotation inside the grace window would end the first secret at once: destructive, so it
    # is refused unconfirmed (nothing changes) and its preview names the secret that would stop working.
    with pytest.raises(ConfirmationRequired):
        call(platform_db, platform_settings, "provision_disk_image_webhook", platform="debian-12-amd64")
    wanted = {"platform": "debian-12-amd64", "secret": given}
    args: dict[str, Any] = {"database": platform_db, "settings": platform_settings, "actor": "test"}
    assert confirmation_needed("provision_disk_image_webhook", wanted, role=Role.ADMIN, **args)
    preview = preview_action("provision_disk_image_webhook", wanted, role=Role.ADMIN, **args)
    assert preview["stops_working_now"]["fingerprint"] == first.secret_fingerprint
    assert preview["becomes_previous"]["fingerprint"] == second.secret_fingerprint
    with platform_db.read_session() as s:
        assert s.scalar(select(DiskImageWebhook.secret_fingerprint)) == second.secret_fingerprint
    third = invoke("provision_disk_image_webhook", wanted, role=Role.ADMIN, confirmed=True, **args)
    assert third.secret == given and third.previous_fingerprint == second.secret_fingerprint
    # Stored encrypted: the plaintext is nowhere in the row, and it decrypts with the key.
    with platform_db.session() as s:
        row = s.scalar(select(DiskImageWebhook))
        assert row is not None
        assert given not in row.secret_encrypted and second.secret not in (
            row.previous_secret_encrypted or ""
        )
        box = SecretBox(key=platform_settings.resolve_secret_key())
        assert box.decrypt(row.secret_encrypted, purpose=f"disk_image_webhook:{row.platform_id}") == given
    listed = call(platform_db, platform_settings, "system_list_disk_image_webhooks", Role.OPERATOR)
    assert [w.secret_fingerprint for w in listed.webhooks] == [third.secret_fingerprint]
    assert "secret" not in listed.webhooks[0].model_dump()
    with pytest.raises(InvalidRequest, match="secret"):
        call(
            platform_db,
            platform_settings,
            "provision_disk_image_webhook",
            platform="debian-12-amd64",
            secret="short",
        )


def test_list_publications_filters_and_pagination(
    platform_db: Database, platform_settings: PlatformSettings
) -> None:
    platform(platform_db, platform_settings)
    platform(platform_db, platform_settings, name="ubuntu-24.04-arm64")
    for i in range(7):
        add_publication(platform_db, "debian-12-amd64", f"1.{i}", age_days=10 - i)
    add_publication(platform_db, "debian-12-amd64", "bad", status="failed")
    add_publication(platform_db, "ubuntu-24.04-arm64", "2.0", critical=True)
    page1 = call(
        platform_db,
        platform_settings,
        "system_list_disk_image_publications",
        Role.VIEWER,
        platform="debian-12-amd64",
        status=["published"],
        limit=3,
    )
    assert page1.total == 7 and [p.version for p in page1.publications] == ["1.6", "1.5", "1.4"]
    assert page1.next_offset == 3
    page3 = call(
        platform_db,
        platform_settings,
        "system_list_disk_image_publications",
        platform="debian-12-amd64",
        status=["published"],
        limit=3,
        offset=6,
    )
    assert [p.version for p in page3.publications] == ["1.0"] and page3.next_offset is None
    failed = call(platform_db, platform_settings, "system_list_disk_image_publications", status=["failed"])
    assert [p.version for p in failed.publications] == ["bad"]
    crit = call(platform_db, platform_settings, "system_list_disk_image_publications", critical=True)
    assert [p.platform for p in crit.publications] == ["ubuntu-24.04-arm64"]
    recent = call(
        platform_db,
        platform_settings,
        "system_list_disk_image_publications",
        created_after=(datetime.now(UTC) - timedelta(days=5, hours=1)).isoformat(),
    )
    assert {p.version for p in recent.publications} == {"1.5", "1.6", "bad", "2.0"}
    with pytest.raises(InvalidRequest, match="status"):
        call(platform_db, platform_settings, "system_list_disk_image_publications", status=["gone"])


def test_set_default_only_published_of_that_platform(
    platform_db: Database, platform_settings: PlatformSettings
) -> None:
    platform(platform_db, platform_settings)
    platform(platform_db, platform_settings, name="other")
    good = add_publication(platform_db, "debian-12-amd64", "1.0")
    failed = add_publication(platform_db, "debian-12-amd64", "1.1", status="failed")
    pruned = add_publication(platform_db, "debian-12-amd64", "0.9", status="pruned")
    foreign = add_publication(platform_db, "other", "1.0")
    for pub, message in (
        (failed, "is failed"),
        (pruned, "is pruned"),
        (foreign, "belongs to platform 'other'"),
    ):
        with pytest.raises(Conflict, match=message):
            call(
                platform_db,
                platform_settings,
                "system_set_default_disk_image_publication",
                Role.OPERATOR,
                platform="debian-12-amd64",
                publication_id=pub,
            )
    with pytest.raises(NotFound):
        call(
            platform_db,
            platform_settings,
            "system_set_default_disk_image_publication",
            platform="debian-12-amd64",
            publication_id=999999,
        )
    out = call(
        platform_db,
        platform_settings,
        "system_set_default_disk_image_publication",
        Role.OPERATOR,
        platform="debian-12-amd64",
        publication_id=good,
    )
    assert out.default_publication.id == good and out.default_publication.is_default
    assert out.previous_default_id is None
    got = call(platform_db, platform_settings, "system_get_node_platform", name="debian-12-amd64")
    assert got.default_publication_id == good
    events = call(
        platform_db, platform_settings, "system_list_recent_events", type=["disk_image_default_changed"]
    )
    assert [e.payload["publication_id"] for e in events.events] == [good]


def test_mark_critical_and_retention_preview(
    platform_db: Database, platform_settings: PlatformSettings
) -> None:
    platform(platform_db, platform_settings)
    old_default = add_publication(platform_db, "debian-12-amd64", "0.1", age_days=400)
    old_routine = add_publication(platform_db, "debian-12-amd64", "0.2", age_days=120)
    old_critical = add_publication(platform_db, "debian-12-amd64", "0.3", age_days=120)
    ancient_critical = add_publication(platform_db, "debian-12-amd64", "0.4", age_days=500, critical=True)
    add_publication(platform_db, "debian-12-amd64", "0.5", age_days=200, status="failed")
    newest = add_publication(platform_db, "debian-12-amd64", "1.0", age_days=100)
    call(
        platform_db,
        platform_settings,
        "system_set_default_disk_image_publication",
        platform="debian-12-amd64",
        publication_id=old_default,
    )
    marked = call(
        platform_db,
        platform_settings,
        "system_mark_disk_image_publication_critical",
        Role.OPERATOR,
        publication_id=old_critical,
    )
    assert marked.critical is True
    preview = call(
        platform_db,
        platform_settings,
        "system_preview_disk_image_retention",
        Role.VIEWER,
        platform="debian-12-amd64",
    )
    assert {c.id for c in preview.candidates} == {old_routine, ancient_critical}
    assert newest not in {c.id for c in preview.candidates}
    changed = call(
        platform_db,
        platform_settings,
        "system_set_disk_image_retention",
        platform="debian-12-amd64",
        critical_days=100,
    )
    assert changed.routine_days == 90 and changed.critical_days == 100
    preview = call(platform_db, platform_settings, "system_preview_disk_image_retention")
    assert {c.id for c in preview.candidates} == {old_routine, old_critical, ancient_critical}
    # The preview deleted nothing.
    listed = call(platform_db, platform_settings, "system_list_disk_image_publications", status=["published"])
    assert listed.total == 5
    with pytest.raises(InvalidRequest, match="routine_days"):
        call(platform_db, platform_settings, "system_set_disk_image_retention", platform="debian-12-amd64")
    with pytest.raises(InvalidRequest, match="greater than or equal to 1"):
        call(
            platform_db,
            platform_settings,
            "system_set_disk_image_retention",
            platform="debian-12-amd64",
            routine_days=0,
        )


def test_recent_events_filters(platform_db: Database, platform_settings: PlatformSettings) -> None:
    platform(platform_db, platform_settings)
    platform(platform_db, platform_settings, name="other")
    call(platform_db, platform_settings, "provision_disk_image_webhook", platform="other")
    with platform_db.session() as s:
        s.add(Event(type="old_thing", payload={}, created_at=datetime.now(UTC) - timedelta(days=3)))
    by_platform = call(
        platform_db, platform_settings, "system_list_recent_events", Role.VIEWER, platform="other"
    )
    assert [e.type for e in by_platform.events] == ["disk_image_webhook_provisioned", "node_platform_created"]
    by_type = call(
        platform_db, platform_settings, "system_list_recent_events", type=["node_platform_created"]
    )
    assert sorted(e.platform for e in by_type.events) == ["debian-12-amd64", "other"]
    since = call(
        platform_db,
        platform_settings,
        "system_list_recent_events",
        since=(datetime.now(UTC) - timedelta(days=1)).isoformat(),
    )
    assert "old_thing" not in {e.type for e in since.events}
    until = call(
        platform_db,
        platform_settings,
        "system_list_recent_events",
        until=(datetime.now(UTC) - timedelta(days=1)).replace(tzinfo=None).isoformat(),
    )
    assert [e.type for e in until.events] == ["old_thing"]
    limited = call(platform_db, platform_settings, "system_list_recent_events", limit=1)
    assert len(limited.events) == 1


def test_instances_and_stats(platform_db: Database, platform_settings: PlatformSettings) -> None:
    platform(platform_db, platform_settings)
    node = call(
        platform_db,
        platform_settings,
        "system_register_node_instance",
        Role.OPERATOR,
        hostname="node-1",
        platform="debian-12-amd64",
        mac_addresses=["52-54-00-AB-CD-EF"],
    )
    assert node.mac_addresses == ["52:54:00:ab:cd:ef"] and node.status == "registered"
    with pytest.raises(Conflict, match="52:54:00:ab:cd:ef already belongs to node 'node-1'"):
        call(
            platform_db,
            platform_settings,
            "system_register_node_instance",
            hostname="node-2",
            platform="debian-12-amd64",
            mac_addresses=["52:54:00:ab:cd:ef"],
        )
    with pytest.raises(InvalidRequest, match="not a MAC address"):
        call(
            platform_db,
            platform_settings,
            "system_register_node_instance",
            hostname="node-3",
            platform="debian-12-amd64",
            mac_addresses=["zz:54:00:ab:cd:ef"],
        )
    add_publication(platform_db, "debian-12-amd64", "1.0")
    add_publication(platform_db, "debian-12-amd64", "1.1", status="failed")
    stats = call(platform_db, platform_settings, "system_get_instance_stats", Role.VIEWER)
    assert stats.node_platforms == 1
    assert stats.node_instances == {"registered": 1}
    assert stats.publications == {"published": 1, "failed": 1}
    assert stats.events >= 2 and stats.last_event_at is not None
    listed = call(platform_db, platform_settings, "system_list_node_instances", platform="debian-12-amd64")
    assert [n.hostname for n in listed.instances] == ["node-1"]


def test_roles_are_enforced_and_failures_roll_back(
    platform_db: Database, platform_settings: PlatformSettings
) -> None:
    with pytest.raises(Forbidden, match="needs the admin role"):
        call(platform_db, platform_settings, "system_create_node_platform", Role.OPERATOR, name="x")
    with pytest.raises(Forbidden, match="needs the operator role"):
        call(
            platform_db,
            platform_settings,
            "system_set_default_disk_image_publication",
            Role.VIEWER,
            platform="x",
            publication_id=1,
        )
    platform(platform_db, platform_settings)
    # An action that fails after changing the row leaves nothing behind (one transaction per action):
    # the regexp is assigned, then the contradictory trusted-root flags are refused.
    with pytest.raises(InvalidRequest, match="not both"):
        call(
            platform_db,
            platform_settings,
            "system_update_node_platform",
            name="debian-12-amd64",
            cosign_identity_regexp=r"^https://ci\.example/other/.+$",
            trusted_root="{}",
            clear_trusted_root=True,
        )
    got = call(platform_db, platform_settings, "system_get_node_platform", name="debian-12-amd64")
    assert got.cosign_identity_regexp == REGEXP
    with platform_db.session() as s:
        count = s.execute(text("SELECT count(*) FROM events WHERE type = 'node_platform_updated'")).scalar()
    assert count == 0


def test_concurrent_creates_give_one_platform_and_conflicts(
    platform_db: Database, platform_settings: PlatformSettings
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def create(_: int) -> str:
        try:
            platform(platform_db, platform_settings)
        except Conflict as exc:
            return type(exc).__name__
        return "created"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(create, range(4)))
    assert outcomes.count("created") == 1
    assert set(outcomes) - {"created"} <= {"PlatformExists", "ConcurrentChange"}
    assert len(call(platform_db, platform_settings, "system_list_node_platforms").platforms) == 1
