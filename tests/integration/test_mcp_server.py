"""The MCP server generated from the action catalog, driven in-process by the MCP SDK's own client:
tools per role and in read-only mode, schemas and annotations, tool errors naming the field, and
destructive tools confirmed through elicitation or ``request_confirmation`` (or refused, nothing changed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.to_thread
import pytest
from mcp.client import Client
from mcp_types import CallToolResult, ElicitResult
from sqlalchemy import select, update

from diskci.platform.actions.catalog import invoke, load_all
from diskci.platform.db.models import ApiToken, Confirmation, Event, Role, utcnow
from diskci.platform.db.session import Database
from diskci.platform.mcp.server import REQUEST_CONFIRMATION, build_server
from diskci.platform.mcp.transport import named_caller
from diskci.platform.ports import Ports
from diskci.platform.settings import PlatformSettings

REVOKE = "system_revoke_api_token"
Elicitation = Any  # an ElicitationFnT


@pytest.fixture
def tokens(make_token: Any) -> dict[str, str]:
    """Tokens named by role (``admin``, ``admin2``, ``operator``, ``viewer``) and a ``victim`` to revoke."""
    for name, role in [
        ("admin", "admin"),
        ("admin2", "admin"),
        ("operator", "operator"),
        ("viewer", "viewer"),
        ("victim", "viewer"),
    ]:
        make_token(role, name)
    return {}


def _server(db: Database, settings: PlatformSettings, token_name: str, *, read_only: bool = False) -> Any:
    async def caller_of(_ctx: Any) -> Any:
        return await anyio.to_thread.run_sync(named_caller, db, token_name)

    return build_server(
        database=db, settings=settings, ports=Ports(), caller_of=caller_of, read_only=read_only
    )


def _session(
    db: Database,
    settings: PlatformSettings,
    token_name: str,
    steps: Callable[[Client], Awaitable[Any]],
    *,
    elicit: Elicitation | None = None,
    read_only: bool = False,
    mode: str = "auto",
) -> Any:
    async def main() -> Any:
        server = _server(db, settings, token_name, read_only=read_only)
        async with Client(server, elicitation_callback=elicit, mode=mode) as client:
            return await steps(client)

    return anyio.run(main)


def _answer(action: str, confirm: bool = True) -> Elicitation:
    async def elicit(_context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        if action == "accept":
            return ElicitResult(action="accept", content={"confirm": confirm})
        return ElicitResult(action=action)

    asked: list[str] = []
    elicit.asked = asked  # type: ignore[attr-defined]
    return elicit


def _revoked(db: Database, name: str = "victim") -> bool:
    with db.read_session() as s:
        return s.scalar(select(ApiToken.revoked_at).where(ApiToken.name == name)) is not None


def _events(db: Database, type_: str) -> list[SimpleNamespace]:
    """The events of ``type_`` (their reason and payload), oldest first."""
    with db.read_session() as s:
        rows = s.scalars(select(Event).where(Event.type == type_).order_by(Event.id))
        return [SimpleNamespace(reason=e.reason, payload=e.payload) for e in rows]


def _call(name: str, arguments: dict[str, Any]) -> Callable[[Client], Awaitable[CallToolResult]]:
    async def steps(client: Client) -> CallToolResult:
        return await client.call_tool(name, arguments)

    return steps


def _list(client: Client) -> Awaitable[Any]:
    return client.list_tools()


def test_tools_per_role_with_schemas_and_every_annotation(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    specs = load_all()
    for token, role in [("admin", Role.ADMIN), ("operator", Role.OPERATOR), ("viewer", Role.VIEWER)]:
        listed = {t.name: t for t in _session(platform_db, platform_settings, token, _list).tools}
        allowed = {name for name, spec in specs.items() if role.allows(spec.role)}
        assert set(listed) - {REQUEST_CONFIRMATION} == allowed, token
        assert (REQUEST_CONFIRMATION in listed) == any(specs[n].may_destroy for n in allowed)
        for name in allowed:
            tool, spec = listed[name], specs[name]
            assert tool.input_schema == spec.input_model.model_json_schema(by_alias=True)
            assert tool.output_schema is not None and tool.output_schema["type"] == "object"
            assert spec.description in (tool.description or "")
            hints = tool.annotations
            assert hints is not None
            assert hints.read_only_hint is spec.read_only
            assert hints.destructive_hint is spec.may_destroy
            assert hints.idempotent_hint is spec.read_only
            assert hints.open_world_hint is False
    admin = {t.name for t in _session(platform_db, platform_settings, "admin", _list).tools}
    assert REVOKE in admin and "system_list_api_tokens" in admin


def test_read_only_mode_lists_only_read_only_tools(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    tools = _session(platform_db, platform_settings, "admin", _list, read_only=True).tools
    read_only = {name for name, spec in load_all().items() if spec.read_only}
    assert {t.name for t in tools} == read_only
    assert all(t.annotations and t.annotations.read_only_hint for t in tools)
    result = _session(
        platform_db, platform_settings, "admin", _call(REVOKE, {"name": "victim"}), read_only=True
    )
    assert result.is_error and not _revoked(platform_db)


def test_read_only_tool_gives_structured_result(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    result = _session(platform_db, platform_settings, "admin", _call("system_list_api_tokens", {}))
    assert not result.is_error
    assert result.structured_content is not None
    names = {t["name"] for t in result.structured_content["tokens"]}
    assert {"admin", "viewer", "victim"} <= names


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        (REVOKE, {}, "name"),  # missing
        ("system_get_task", {"task_id": "t", "bogus": 1}, "bogus"),  # extra
        ("system_list_recent_events", {"limit": "3"}, "limit"),  # wrongly typed (no coercion)
        ("system_list_recent_events", {"limit": True}, "limit"),
    ],
)
def test_bad_arguments_are_tool_errors_naming_the_field(
    platform_db: Database,
    platform_settings: PlatformSettings,
    tokens: Any,
    tool: str,
    arguments: dict[str, Any],
    field: str,
) -> None:
    result = _session(platform_db, platform_settings, "admin", _call(tool, arguments))
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"] == "InvalidRequest"
    assert result.structured_content["fields"] == [field]
    assert field in result.structured_content["detail"]
    assert _events(platform_db, "confirmation_requested") == []


def test_a_tool_the_role_does_not_allow_is_forbidden(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    for tool, arguments in [("system_list_api_tokens", {}), (REVOKE, {"name": "victim"})]:
        result = _session(platform_db, platform_settings, "viewer", _call(tool, arguments))
        assert result.is_error and result.structured_content is not None
        assert result.structured_content["error"] == "Forbidden"
    assert not _revoked(platform_db)


def test_destructive_tool_refused_without_confirmation(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    result = _session(platform_db, platform_settings, "admin", _call(REVOKE, {"name": "victim"}))
    assert result.is_error and result.structured_content is not None
    body = result.structured_content
    assert body["error"] == "ConfirmationRequired"
    assert body["action"] == REVOKE and body["arguments"] == {"name": "victim"}
    assert body["confirmation_id"].startswith("cfm_") and body["expires_at"]
    assert not _revoked(platform_db)
    [event] = _events(platform_db, "confirmation_requested")
    assert (
        event.payload["actor"] == "token:admin"
        and event.payload["confirmation_id"] == body["confirmation_id"]
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_destructive_tool_confirmed_through_elicitation(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any, mode: str
) -> None:
    elicit = _answer("accept")
    result = _session(
        platform_db, platform_settings, "admin", _call(REVOKE, {"name": "victim"}), elicit=elicit, mode=mode
    )
    assert not result.is_error, result.content
    assert result.structured_content is not None and result.structured_content["revoked_at"]
    assert _revoked(platform_db)
    [asked] = elicit.asked
    assert REVOKE in asked and '"victim"' in asked
    [event] = _events(platform_db, "confirmation_accepted")
    assert event.payload == {
        "actor": "token:admin",
        "action": REVOKE,
        "arguments": {"name": "victim"},
        "via": "elicitation",
    }
    assert _events(platform_db, "confirmation_requested") == []


@pytest.mark.parametrize(
    ("action", "confirm", "reason"),
    [("decline", True, "declined"), ("cancel", True, "cancelled"), ("accept", False, "declined")],
)
def test_declined_elicitation_changes_nothing(
    platform_db: Database,
    platform_settings: PlatformSettings,
    tokens: Any,
    action: str,
    confirm: bool,
    reason: str,
) -> None:
    elicit = _answer(action, confirm)
    result = _session(
        platform_db, platform_settings, "admin", _call(REVOKE, {"name": "victim"}), elicit=elicit
    )
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"] == "ConfirmationRefused"
    assert not _revoked(platform_db)
    [event] = _events(platform_db, "confirmation_refused")
    assert event.reason == reason and event.payload["actor"] == "token:admin"


def _confirm_steps(
    arguments: dict[str, Any] | None = None, before: Callable[[str], None] | None = None, times: int = 1
) -> Callable[[Client], Awaitable[list[CallToolResult]]]:
    async def steps(client: Client) -> list[CallToolResult]:
        first = await client.call_tool(REVOKE, {"name": "victim"})
        assert first.structured_content is not None
        cid = first.structured_content["confirmation_id"]
        if before is not None:
            await anyio.to_thread.run_sync(before, cid)
        return [
            await client.call_tool(
                REQUEST_CONFIRMATION,
                {"confirmation_id": cid, "action": REVOKE, "arguments": arguments or {"name": "victim"}},
            )
            for _ in range(times)
        ]

    return steps


def test_confirmed_through_request_confirmation_and_a_replay_refused(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    done, replay = _session(platform_db, platform_settings, "admin", _confirm_steps(times=2))
    assert not done.is_error, done.content
    assert done.structured_content is not None
    assert done.structured_content["action"] == REVOKE and done.structured_content["result"]["revoked_at"]
    assert _revoked(platform_db)
    assert replay.is_error and replay.structured_content is not None
    assert replay.structured_content["error"] == "ConfirmationRefused"
    [accepted] = _events(platform_db, "confirmation_accepted")
    assert accepted.payload["via"] == "id" and accepted.payload["actor"] == "token:admin"
    [refused] = _events(platform_db, "confirmation_refused")
    assert refused.reason == "replayed"


def test_expired_confirmation_refused(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    def expire(cid: str) -> None:
        with platform_db.session() as s:
            s.execute(
                update(Confirmation)
                .where(Confirmation.confirmation_id == cid)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )

    [result] = _session(platform_db, platform_settings, "admin", _confirm_steps(before=expire))
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"] == "ConfirmationRefused"
    assert "expired" in result.structured_content["detail"]
    assert not _revoked(platform_db)
    [refused] = _events(platform_db, "confirmation_refused")
    assert refused.reason == "expired"


def test_changed_arguments_refused(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    [result] = _session(platform_db, platform_settings, "admin", _confirm_steps(arguments={"name": "viewer"}))
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"] == "ConfirmationRefused"
    assert not _revoked(platform_db, "victim") and not _revoked(platform_db, "viewer")
    [refused] = _events(platform_db, "confirmation_refused")
    assert refused.reason == "changed"


def test_foreign_confirmation_refused(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    first = _session(platform_db, platform_settings, "admin", _call(REVOKE, {"name": "victim"}))
    assert first.structured_content is not None
    confirm = {"confirmation_id": first.structured_content["confirmation_id"], "action": REVOKE}
    confirm["arguments"] = {"name": "victim"}
    foreign = _session(platform_db, platform_settings, "admin2", _call(REQUEST_CONFIRMATION, confirm))
    assert foreign.is_error and foreign.structured_content is not None
    assert foreign.structured_content["error"] == "ConfirmationRefused"
    assert not _revoked(platform_db)
    [refused] = _events(platform_db, "confirmation_refused")
    assert refused.reason == "foreign" and refused.payload["actor"] == "token:admin2"
    # The caller it was issued to can still use it.
    own = _session(platform_db, platform_settings, "admin", _call(REQUEST_CONFIRMATION, confirm))
    assert not own.is_error and _revoked(platform_db)


def test_request_confirmation_arguments_are_checked(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    result = _session(
        platform_db, platform_settings, "admin", _call(REQUEST_CONFIRMATION, {"action": REVOKE})
    )
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["fields"] == ["confirmation_id"]
    unknown = {"confirmation_id": "cfm_nope", "action": REVOKE, "arguments": {"name": "victim"}}
    result = _session(platform_db, platform_settings, "admin", _call(REQUEST_CONFIRMATION, unknown))
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"] == "ConfirmationRefused"
    assert not _revoked(platform_db)


def test_a_revoked_caller_token_stops_working(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    result = _session(platform_db, platform_settings, "victim", _call("system_list_recent_events", {}))
    assert not result.is_error
    with platform_db.session() as s:
        s.execute(update(ApiToken).where(ApiToken.name == "victim").values(revoked_at=utcnow()))
    result = _session(platform_db, platform_settings, "victim", _call("system_list_recent_events", {}))
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"] == "UnknownTokenName"


def test_a_tool_destructive_only_in_some_states_asks_only_then(
    platform_db: Database, platform_settings: PlatformSettings, tokens: Any
) -> None:
    """Provisioning a webhook acts at once, and so does its first rotation; rotating again while the
    previous secret is in its grace window would end that secret, so it waits for a confirmation."""
    hook = "provision_disk_image_webhook"
    invoke(
        "system_create_node_platform",
        {"name": "debian-12-amd64", "architectures": ["amd64"], "registry_repository": "127.0.0.1:5000/img",
         "cosign_identity_regexp": "^x$", "cosign_oidc_issuer": "https://ci.example"},
        database=platform_db, settings=platform_settings, actor="test", role=Role.ADMIN,
    )  # fmt: skip
    args = {"platform": "debian-12-amd64"}

    async def steps(client: Client) -> list[CallToolResult]:
        made = await client.call_tool(hook, args)
        rotated = await client.call_tool(hook, args)
        asked = await client.call_tool(hook, args)
        assert asked.structured_content is not None
        confirmed = await client.call_tool(
            REQUEST_CONFIRMATION,
            {"confirmation_id": asked.structured_content.get("confirmation_id", ""), "action": hook,
             "arguments": args},
        )  # fmt: skip
        return [made, rotated, asked, confirmed]

    made, rotated, asked, confirmed = _session(platform_db, platform_settings, "admin", steps)
    assert not made.is_error and not rotated.is_error, (made.content, rotated.content)
    assert made.structured_content is not None and rotated.structured_content is not None
    assert rotated.structured_content["rotated"] is True
    assert asked.is_error and asked.structured_content is not None
    body = asked.structured_content
    assert body["error"] == "ConfirmationRequired"
    assert (
        body["would_affect"]["stops_working_now"]["fingerprint"]
        == (made.structured_content["secret_fingerprint"])
    )
    assert not confirmed.is_error, confirmed.content
    assert confirmed.structured_content is not None
    result = confirmed.structured_content["result"]
    assert result["previous_fingerprint"] == rotated.structured_content["secret_fingerprint"]
    [event] = _events(platform_db, "confirmation_accepted")
    assert event.payload["action"] == hook and event.payload["actor"] == "token:admin"
