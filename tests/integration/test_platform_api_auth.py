"""The HTTP API: bearer tokens and roles, the error shape, OpenAPI generated from the action registry."""

from __future__ import annotations

from typing import Any

import pytest

from diskci.platform.actions.catalog import load_all

NEW_PLATFORM = {
    "name": "debian-12-amd64",
    "architectures": ["amd64"],
    "registry_repository": "127.0.0.1:5000/ops/disk-images/debian-12-amd64",
    "cosign_identity_regexp": r"^https://ci\.example/.+$",
    "cosign_oidc_issuer": "https://ci.example",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_healthz(platform_client: Any) -> None:
    r = platform_client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("auth", "detail"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer dci_not-a-real-token"}, "invalid or revoked"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing bearer token"),
    ],
)
def test_requests_without_a_valid_token_are_refused(
    platform_client: Any, auth: dict[str, str], detail: str
) -> None:
    r = platform_client.post("/api/v1/system_list_node_platforms", headers=auth, json={})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert detail in r.json()["detail"]


def test_roles(platform_client: Any, make_token: Any) -> None:
    viewer, operator, admin = (bearer(make_token(role)) for role in ("viewer", "operator", "admin"))
    # viewer: reads only
    assert platform_client.post("/api/v1/system_list_node_platforms", headers=viewer).status_code == 200
    r = platform_client.post("/api/v1/system_create_node_platform", headers=viewer, json=NEW_PLATFORM)
    assert r.status_code == 403 and r.json() == {
        "error": "Forbidden",
        "detail": "system_create_node_platform needs the admin role; this token has viewer",
    }
    # operator: may not create platforms or webhooks, may register nodes
    assert (
        platform_client.post(
            "/api/v1/system_create_node_platform", headers=operator, json=NEW_PLATFORM
        ).status_code
        == 403
    )
    r = platform_client.post("/api/v1/system_create_node_platform", headers=admin, json=NEW_PLATFORM)
    assert r.status_code == 200, r.text
    r = platform_client.post(
        "/api/v1/provision_disk_image_webhook", headers=operator, json={"platform": "debian-12-amd64"}
    )
    assert r.status_code == 403
    r = platform_client.post(
        "/api/v1/system_register_node_instance",
        headers=operator,
        json={"hostname": "n1", "platform": "debian-12-amd64", "mac_addresses": ["52:54:00:00:00:01"]},
    )
    assert r.status_code == 200, r.text
    assert platform_client.post("/api/v1/system_list_disk_image_webhooks", headers=viewer).status_code == 403
    assert (
        platform_client.post("/api/v1/system_list_disk_image_webhooks", headers=operator).status_code == 200
    )
    assert platform_client.post("/api/v1/system_list_api_tokens", headers=operator).status_code == 403


def test_revoked_token_stops_working(platform_client: Any, make_token: Any) -> None:
    admin = bearer(make_token("admin", "root"))
    victim_token = make_token("viewer", "victim")
    assert (
        platform_client.post("/api/v1/system_get_instance_stats", headers=bearer(victim_token)).status_code
        == 200
    )
    # Destructive: the first call answers 428 with a confirmation id, the repeated call with it acts.
    r = platform_client.post("/api/v1/system_revoke_api_token", headers=admin, json={"name": "victim"})
    assert r.status_code == 428 and r.json()["error"] == "ConfirmationRequired"
    confirm = {**admin, "X-Diskci-Confirmation": r.json()["confirmation_id"]}
    r = platform_client.post("/api/v1/system_revoke_api_token", headers=confirm, json={"name": "victim"})
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = platform_client.post("/api/v1/system_get_instance_stats", headers=bearer(victim_token))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    listed = platform_client.post("/api/v1/system_list_api_tokens", headers=admin).json()
    assert {t["name"] for t in listed["tokens"]} == {"root", "victim"}
    assert all("token" not in t and "token_hash" not in t for t in listed["tokens"])


def test_created_token_works_and_is_shown_once(platform_client: Any, admin_headers: dict[str, str]) -> None:
    r = platform_client.post(
        "/api/v1/system_create_api_token", headers=admin_headers, json={"name": "dash", "role": "viewer"}
    )
    assert r.status_code == 200
    token = r.json()["token"]
    assert (
        platform_client.post("/api/v1/system_list_node_platforms", headers=bearer(token)).status_code == 200
    )
    r = platform_client.post(
        "/api/v1/system_create_api_token", headers=admin_headers, json={"name": "dash", "role": "viewer"}
    )
    assert r.status_code == 409 and r.json()["error"] == "TokenExists"


def test_error_shape(platform_client: Any, admin_headers: dict[str, str]) -> None:
    r = platform_client.post("/api/v1/system_get_node_platform", headers=admin_headers, json={"name": "nope"})
    assert r.status_code == 404
    assert r.json() == {"error": "PlatformNotFound", "detail": "no node platform named 'nope'"}
    r = platform_client.post("/api/v1/system_get_node_platform", headers=admin_headers, json={"nom": "x"})
    assert r.status_code == 400 and r.json()["error"] == "InvalidRequest"
    assert "name" in r.json()["detail"] and "nom" in r.json()["detail"]
    r = platform_client.post(
        "/api/v1/system_get_node_platform",
        headers={**admin_headers, "Content-Type": "application/json"},
        content=b"{broken",
    )
    assert r.status_code == 400 and r.json()["error"] == "InvalidRequest"


def test_openapi_lists_every_action(platform_client: Any) -> None:
    doc = platform_client.get("/api/v1/openapi.json").json()
    for name, spec in load_all().items():
        op = doc["paths"][f"/api/v1/{name}"]["post"]
        assert op["operationId"] == name
        assert op["x-diskci-role"] == spec.role.value
        assert op["security"] == [{"HTTPBearer": []}]
    webhook = doc["paths"]["/api/v1/system/webhooks/disk_image_built"]["post"]
    assert "security" not in webhook


def test_api_document_lists_every_action_with_its_role() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "platform-api.md").read_text()
    for name, spec in load_all().items():
        assert f"| `{name}` | {spec.role.value} |" in doc, f"docs/platform-api.md does not list {name}"


def test_unreachable_database_is_503(tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from diskci.platform.db.session import Database, set_default
    from diskci.platform.http.app import create_app
    from diskci.platform.settings import PlatformSettings

    platform_settings = PlatformSettings(state_dir=tmp_path, secret_key="k" * 40)  # type: ignore[arg-type]

    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    try:
        app = create_app(platform_settings, database=down, enqueue=lambda d: d, migrate=False)
        with TestClient(app) as client:
            r = client.get("/healthz")
            assert r.status_code == 503 and r.json()["error"] == "DatabaseUnavailable"
            r = client.post("/api/v1/system_list_node_platforms", headers={"Authorization": "Bearer dci_x"})
            assert r.status_code == 503 and r.json()["error"] == "DatabaseUnavailable"
    finally:
        set_default(None)  # create_app made it the process-wide database
        down.dispose()
