"""Destructive actions are confirmed in ``invoke()`` for every adapter; ports reach actions through it."""

from __future__ import annotations

from typing import Any

import pytest

from diskci.platform.actions.catalog import ConfirmationRequired, invoke
from diskci.platform.actions.tokens import create_token
from diskci.platform.db.models import Role
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


def test_http_route_is_the_confirmation_and_says_so(platform_app: Any) -> None:
    routes = {r.path: r for r in platform_app.routes if hasattr(r, "description")}
    revoke = routes["/api/v1/system_revoke_api_token"]
    assert revoke.openapi_extra["x-diskci-destructive"] is True
    assert "Calling this route is the confirmation" in revoke.description
    assert "confirmation" not in routes["/api/v1/system_list_node_platforms"].description


def test_ports_without_a_queue_name_the_missing_port() -> None:
    with pytest.raises(PortUnavailable, match="no task queue"):
        Ports().enqueue_publication("d-1")
    assert Ports(enqueue=lambda d: f"task-{d}").enqueue_publication("d-1") == "task-d-1"
