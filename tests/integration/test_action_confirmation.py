"""Destructive actions are confirmed in ``invoke()`` for every adapter; ports reach actions through it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from diskci.platform.actions.catalog import ConfirmationRequired, invoke
from diskci.platform.actions.tokens import create_token
from diskci.platform.db.models import ApiToken, Event, Role
from diskci.platform.db.session import Database
from diskci.platform.ports import Ports, PortUnavailable
from diskci.platform.settings import PlatformSettings


def _revoke(db: Database, settings: PlatformSettings, **kw: Any) -> Any:
    name, data = "system_revoke_api_token", {"name": "victim"}
    return invoke(name, data, database=db, settings=settings, actor="t", role=Role.ADMIN, **kw)


def test_invoke_refuses_an_unconfirmed_destructive_action(
    platform_db: Database, platform_settings: PlatformSettings
) -> None:
    with platform_db.session() as s:
        create_token(s, "victim", Role.VIEWER, actor="test")
    with pytest.raises(ConfirmationRequired, match="system_revoke_api_token is destructive") as caught:
        _revoke(platform_db, platform_settings)
    assert caught.value.http_status == 428 and caught.value.action == "system_revoke_api_token"
    assert _revoke(platform_db, platform_settings, confirmed=True).revoked_at is not None


def test_http_destructive_route_documents_the_two_steps(platform_app: Any) -> None:
    routes = {r.path: r for r in platform_app.routes if hasattr(r, "description")}
    revoke = routes["/api/v1/system_revoke_api_token"]
    assert revoke.openapi_extra["x-diskci-destructive"] is True
    assert "confirmed in two steps" in revoke.description and "X-Diskci-Confirmation" in revoke.description
    assert revoke.openapi_extra["parameters"][0]["name"] == "X-Diskci-Confirmation"
    assert 428 in revoke.responses
    assert "confirmation" not in routes["/api/v1/system_list_node_platforms"].description
    doc = platform_app.openapi()["paths"]["/api/v1/system_revoke_api_token"]["post"]
    assert "428" in doc["responses"] and doc["parameters"][0]["in"] == "header"


def _revoked(db: Database, name: str) -> bool:
    with db.read_session() as s:
        return s.scalar(select(ApiToken.revoked_at).where(ApiToken.name == name)) is not None


def _events(db: Database) -> list[tuple[str, str | None, str | None]]:
    with db.read_session() as s:
        rows = s.scalars(select(Event).where(Event.type.like("confirmation_%")).order_by(Event.id))
        return [(e.type, e.reason, (e.payload or {}).get("actor")) for e in rows]


def test_http_destructive_call_is_confirmed_with_its_one_time_id(
    platform_client: Any, platform_db: Database, make_token: Any
) -> None:
    admin = {"Authorization": f"Bearer {make_token('admin', 'root')}"}
    other = {"Authorization": f"Bearer {make_token('admin', 'other')}"}
    make_token("viewer", "victim")
    make_token("viewer", "victim2")
    url = "/api/v1/system_revoke_api_token"
    r = platform_client.post(url, headers=admin, json={"name": "victim"})
    assert r.status_code == 428, r.text
    body = r.json()
    assert body["error"] == "ConfirmationRequired" and body["action"] == "system_revoke_api_token"
    assert body["arguments"] == {"name": "victim"} and "X-Diskci-Confirmation" in body["detail"]
    assert body["confirmation_id"].startswith("cfm_") and body["expires_at"]
    assert not _revoked(platform_db, "victim")  # nothing was done
    cid = body["confirmation_id"]
    # Another caller, or other arguments, is refused; the foreign try leaves the id usable.
    r = platform_client.post(url, headers={**other, "X-Diskci-Confirmation": cid}, json={"name": "victim"})
    assert r.status_code == 403 and r.json()["error"] == "ConfirmationRefused"
    assert not _revoked(platform_db, "victim")
    r = platform_client.post(url, headers={**admin, "X-Diskci-Confirmation": cid}, json={"name": "victim"})
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    # Replayed: refused, nothing changes.
    r = platform_client.post(url, headers={**admin, "X-Diskci-Confirmation": cid}, json={"name": "victim"})
    assert r.status_code == 403 and "already used" in r.json()["detail"]
    # Changed arguments: refused, and victim2 stays.
    cid2 = platform_client.post(url, headers=admin, json={"name": "victim"}).json()["confirmation_id"]
    r = platform_client.post(url, headers={**admin, "X-Diskci-Confirmation": cid2}, json={"name": "victim2"})
    assert r.status_code == 403 and "other arguments" in r.json()["detail"]
    assert not _revoked(platform_db, "victim2")
    r = platform_client.post(url, headers={**admin, "X-Diskci-Confirmation": "cfm_nope"}, json={"name": "x"})
    assert r.status_code == 403 and "no confirmation" in r.json()["detail"]
    assert _events(platform_db) == [
        ("confirmation_requested", None, "token:root"),
        ("confirmation_refused", "foreign", "token:other"),
        ("confirmation_accepted", None, "token:root"),
        ("confirmation_refused", "replayed", "token:root"),
        ("confirmation_requested", None, "token:root"),
        ("confirmation_refused", "changed", "token:root"),
        ("confirmation_refused", "unknown", "token:root"),
    ]


def test_http_destructive_call_checks_role_and_input_before_issuing(
    platform_client: Any, platform_db: Database, make_token: Any
) -> None:
    viewer = {"Authorization": f"Bearer {make_token('viewer')}"}
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    url = "/api/v1/system_revoke_api_token"
    assert platform_client.post(url, headers=viewer, json={"name": "x"}).status_code == 403
    r = platform_client.post(url, headers=admin, json={"nom": "x"})
    assert r.status_code == 400 and r.json()["error"] == "InvalidRequest"
    assert _events(platform_db) == []


def test_ports_without_a_queue_name_the_missing_port() -> None:
    with pytest.raises(PortUnavailable, match="no task queue"):
        Ports().enqueue_publication("d-1")
    assert Ports(enqueue=lambda d: f"task-{d}").enqueue_publication("d-1") == "task-d-1"


def test_http_rotation_in_the_grace_window_is_confirmed(
    platform_client: Any, platform_db: Database, platform_settings: PlatformSettings, make_token: Any
) -> None:
    """Provisioning a webhook is not destructive, nor is its first rotation; a rotation while the previous
    secret is still in its grace window ends that secret, so it is confirmed like any destructive call."""
    admin = {"Authorization": f"Bearer {make_token('admin', 'root')}"}
    invoke(
        "system_create_node_platform",
        {"name": "p1", "architectures": ["amd64"], "registry_repository": "127.0.0.1:5000/img",
         "cosign_identity_regexp": "^x$", "cosign_oidc_issuer": "https://ci.example"},
        database=platform_db, settings=platform_settings, actor="test", role=Role.ADMIN,
    )  # fmt: skip
    url = "/api/v1/provision_disk_image_webhook"
    first = platform_client.post(url, headers=admin, json={"platform": "p1"})
    second = platform_client.post(url, headers=admin, json={"platform": "p1"})
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    asked = platform_client.post(url, headers=admin, json={"platform": "p1"})
    assert asked.status_code == 428, asked.text
    body = asked.json()
    assert body["would_affect"]["stops_working_now"]["fingerprint"] == first.json()["secret_fingerprint"]
    listed = platform_client.post("/api/v1/system_list_disk_image_webhooks", headers=admin, json={})
    assert listed.json()["webhooks"][0]["secret_fingerprint"] == second.json()["secret_fingerprint"]
    done = platform_client.post(
        url, headers={**admin, "X-Diskci-Confirmation": body["confirmation_id"]}, json={"platform": "p1"}
    )
    assert done.status_code == 200, done.text
    assert done.json()["previous_fingerprint"] == second.json()["secret_fingerprint"]
    doc = platform_client.get("/api/v1/openapi.json").json()["paths"][url]["post"]
    assert "grace window" in doc["x-diskci-destructive-when"] and doc["parameters"][0]["in"] == "header"
