"""``diskci platform``: tokens and the generic action adapter, in-process against the database."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.platform.db.session import Database


@pytest.fixture
def run(platform_db: Database, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DISKCI_DATABASE_URL", platform_db.url)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, ["platform", *args], input=input, catch_exceptions=False)

    return invoke


def test_token_create_list_revoke(run: Any) -> None:
    created = run("token", "create", "ops", "--role", "operator", "--json")
    assert created.exit_code == 0, created.output
    out = json.loads(created.stdout)
    assert out["name"] == "ops" and out["role"] == "operator" and out["token"].startswith("dci_")
    listed = json.loads(run("token", "list", "--json").stdout)
    assert [t["name"] for t in listed["tokens"]] == ["ops"]
    assert out["token"] not in run("token", "list", "--json").stdout
    assert run("token", "revoke", "ops", "--json").exit_code == 0
    assert json.loads(run("token", "list", "--json").stdout)["tokens"][0]["revoked_at"] is not None


def test_generic_action_adapter(run: Any) -> None:
    data = {
        "name": "debian-12-amd64",
        "architectures": ["amd64"],
        "registry_repository": "oci-layout:/srv/diskci/layout",
        "cosign_identity_regexp": r"^https://ci\.example/.+$",
        "cosign_oidc_issuer": "https://ci.example",
    }
    r = run("system_create_node_platform", "--data", json.dumps(data), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["registry_repository"] == "oci-layout:/srv/diskci/layout"
    r = run(
        "system_set_disk_image_retention", "-s", "platform=debian-12-amd64", "-s", "routine_days=30", "--json"
    )
    assert json.loads(r.stdout) == {"platform": "debian-12-amd64", "routine_days": 30, "critical_days": 365}
    r = run("system_get_node_platform", "--data", "-", "--json", input='{"name": "debian-12-amd64"}')
    assert json.loads(r.stdout)["retention_routine_days"] == 30


def test_adapter_errors_and_destructive_confirmation(run: Any) -> None:
    from diskci.errors import InvalidRequest, NotFound, UsageError

    with pytest.raises(NotFound, match="no node platform named 'x'"):
        run("system_get_node_platform", "-s", "name=x")
    with pytest.raises(InvalidRequest, match="name: Field required"):
        run("system_get_node_platform")
    with pytest.raises(UsageError, match="--data is not JSON"):
        run("system_get_node_platform", "--data", "{oops")
    run("token", "create", "victim")
    with pytest.raises(UsageError, match="destructive: add --yes"):
        run("system_revoke_api_token", "-s", "name=victim")
    assert run("system_revoke_api_token", "-s", "name=victim", "--yes").exit_code == 0


def test_yes_confirms_through_a_recorded_confirmation(run: Any, platform_db: Database) -> None:
    from sqlalchemy import select

    from diskci.platform.db.models import Confirmation, Event

    run("token", "create", "victim")
    assert run("system_revoke_api_token", "-s", "name=victim", "--yes").exit_code == 0
    with platform_db.read_session() as s:
        confirming = select(Event.type).where(Event.type.like("confirmation_%")).order_by(Event.id)
        types = list(s.scalars(confirming))
        spent = list(s.scalars(select(Confirmation.used_at)))
    assert types == ["confirmation_requested", "confirmation_accepted"]
    assert len(spent) == 1 and spent[0] is not None
