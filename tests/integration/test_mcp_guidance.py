"""The runbook's guidance served by the MCP server, read with the MCP SDK's own client in-process: a
prompt per operator intent (naming only tools that exist), and the platforms, publications, recent
events and troubleshooting table as resources (read as the caller)."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError
from sqlalchemy import update

import diskci.supplychain.verifier as verifier
from diskci.platform.actions.catalog import invoke, load_all
from diskci.platform.db.models import ApiToken, Role, utcnow
from diskci.platform.db.session import Database
from diskci.platform.mcp import guidance
from diskci.platform.mcp.server import REQUEST_CONFIRMATION, TROUBLESHOOTING_URI, build_server
from diskci.platform.mcp.transport import named_caller
from diskci.platform.ports import Ports
from diskci.platform.settings import PlatformSettings

PLATFORM = {
    "name": "debian-12-amd64",
    "architectures": ["amd64"],
    "registry_repository": "oci-layout:/srv/diskci/layout",
    "cosign_identity_regexp": r"^https://ci\.example/.+$",
    "cosign_oidc_issuer": "https://ci.example",
}
TOOL_NAME = re.compile(
    r"\b(?:system_[a-z_]+|provision_[a-z_]+|bootstrap_[a-z_]+|get_gitea_[a-z_]+|request_confirmation)\b"
)


def _run(
    db: Database,
    settings: PlatformSettings,
    steps: Callable[[Client], Awaitable[Any]],
    *,
    token_name: str = "viewer",
    read_only: bool = False,
) -> Any:
    async def caller_of(_ctx: Any) -> Any:
        return await anyio.to_thread.run_sync(named_caller, db, token_name)

    async def main() -> Any:
        server = build_server(
            database=db, settings=settings, ports=Ports(), caller_of=caller_of, read_only=read_only
        )
        async with Client(server) as client:
            return await steps(client)

    return anyio.run(main)


@pytest.fixture
def viewer(make_token: Any) -> None:
    make_token("viewer", "viewer")


def _known_tools() -> set[str]:
    return set(load_all()) | {REQUEST_CONFIRMATION}


def test_every_named_tool_exists() -> None:
    known = _known_tools()
    for intent in guidance.INTENTS:
        assert set(intent.tools) <= known, intent.name
        text = guidance.render(intent, {})
        assert set(TOOL_NAME.findall(text)) <= known, intent.name
        assert set(TOOL_NAME.findall(text)) >= set(intent.tools), intent.name
    for row in guidance.TROUBLESHOOTING:
        for check in row.checks:
            assert set(TOOL_NAME.findall(check)) <= known, check


def test_troubleshooting_lists_every_verifier_reason() -> None:
    doc = verifier.__doc__ or ""
    reasons = set(re.findall(r"``([a-z_]+)``", doc)) - {"verify_bundle"}
    assert {"signature_missing", "identity_mismatch", "fsverity_mismatch"} <= reasons
    listed = {code for row in guidance.TROUBLESHOOTING for code in row.reasons}
    assert reasons <= listed


def test_prompts_listed_and_rendered(
    platform_db: Database, platform_settings: PlatformSettings, viewer: None
) -> None:
    async def steps(client: Client) -> Any:
        listed = await client.list_prompts()
        retention = await client.get_prompt("tune_retention", {"platform": "debian-12-amd64"})
        publish = await client.get_prompt("publish_version", {"platform": "p1", "version": "v0.3.0"})
        worker = await client.get_prompt("decommission_ci_worker", {})
        return listed, retention, publish, worker

    listed, retention, publish, worker = _run(platform_db, platform_settings, steps)
    by_name = {p.name: p for p in listed.prompts}
    assert list(by_name) == [i.name for i in guidance.INTENTS]
    assert {a.name: a.required for a in by_name["publish_version"].arguments or []} == {
        "platform": True,
        "version": True,
    }
    text = retention.messages[0].content.text
    assert "debian-12-amd64" in text and "90 days" in text and "365 days" in text
    assert "default publication is never pruned" in text
    assert "system_preview_disk_image_retention" in text and "system_set_disk_image_retention" in text
    text = publish.messages[0].content.text
    assert "v0.3.0 on p1" in text and "system_set_default_disk_image_publication" in text
    text = worker.messages[0].content.text
    assert "system_list_ci_workers" in text and "system_get_instance_stats" in text
    assert "system_terminate_ci_worker" in text and REQUEST_CONFIRMATION in text
    assert "not available" not in text


def test_a_required_prompt_argument_is_asked_for(
    platform_db: Database, platform_settings: PlatformSettings, viewer: None
) -> None:
    async def steps(client: Client) -> Any:
        with pytest.raises(MCPError, match="platform"):
            await client.get_prompt("tune_retention", {})

    _run(platform_db, platform_settings, steps)


def test_resources_listed_and_read_as_the_caller(
    platform_db: Database, platform_settings: PlatformSettings, viewer: None
) -> None:
    invoke(
        "system_create_node_platform",
        PLATFORM,
        database=platform_db,
        settings=platform_settings,
        actor="test",
        role=Role.ADMIN,
    )

    async def steps(client: Client) -> Any:
        listed = await client.list_resources()
        platforms = await client.read_resource("diskci://platforms")
        publications = await client.read_resource("diskci://publications")
        events = await client.read_resource("diskci://events/recent")
        table = await client.read_resource(TROUBLESHOOTING_URI)
        return listed, platforms, publications, events, table

    listed, platforms, publications, events, table = _run(platform_db, platform_settings, steps)
    assert {str(r.uri) for r in listed.resources} == {
        "diskci://platforms",
        "diskci://publications",
        "diskci://events/recent",
        "diskci://ci/runs",
        "diskci://ci/workers",
        TROUBLESHOOTING_URI,
    }
    assert all(r.mime_type == "application/json" for r in listed.resources)
    names = [p["name"] for p in json.loads(platforms.contents[0].text)["platforms"]]
    assert names == ["debian-12-amd64"]
    assert json.loads(publications.contents[0].text)["publications"] == []
    types = [e["type"] for e in json.loads(events.contents[0].text)["events"]]
    assert "node_platform_created" in types
    rows = json.loads(table.contents[0].text)
    failed = next(r for r in rows if "failed verification" in r["symptom"])
    assert "signature_missing" in failed["reasons"]
    assert any("system_get_disk_image_publication" in c for c in failed["checks"])
    reasons = {code for row in rows for code in row["reasons"]}
    assert {"worker_lost", "not_reproducible", "identity_mismatch", "disk_image_rebuild_identical"} <= reasons
    checks = " ".join(c for row in rows for c in row["checks"])
    assert {"system_list_ci_workers", "system_get_instance_stats", "get_gitea_job_logs"} <= set(
        TOOL_NAME.findall(checks)
    )


def test_no_prompt_says_a_tool_is_missing() -> None:
    for intent in guidance.INTENTS:
        assert "not available" not in guidance.render(intent, {}), intent.name


def test_a_revoked_caller_cannot_read_resources(
    platform_db: Database, platform_settings: PlatformSettings, viewer: None
) -> None:
    with platform_db.session() as s:
        s.execute(update(ApiToken).where(ApiToken.name == "viewer").values(revoked_at=utcnow()))

    async def steps(client: Client) -> Any:
        with pytest.raises(MCPError, match="UnknownTokenName"):
            await client.read_resource("diskci://platforms")
        return await client.read_resource(TROUBLESHOOTING_URI)  # guidance, no data

    assert _run(platform_db, platform_settings, steps).contents


def test_read_only_prompts_say_so(
    platform_db: Database, platform_settings: PlatformSettings, viewer: None
) -> None:
    async def steps(client: Client) -> Any:
        return await client.get_prompt("check_build", {})

    result = _run(platform_db, platform_settings, steps, read_only=True)
    assert "read-only" in result.messages[0].content.text
