"""The MCP server over its two transports, as real processes: streamable HTTP at ``/mcp`` on
``diskci platform serve`` (bearer tokens, tools per role, elicitation, request_confirmation across
sessions) and stdio on ``diskci platform mcp --token-name`` (read-only mode)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import ElicitResult
from served_platform import platform_serve, serve_env
from sqlalchemy import select

from diskci.platform.actions.catalog import load_all
from diskci.platform.actions.tokens import create_token
from diskci.platform.db.models import ApiToken, Role
from diskci.platform.db.session import Database

SECRET_KEY = "mcp-test-key-" + "m" * 40
REVOKE = "system_revoke_api_token"


def _env(state: Path) -> dict[str, str]:
    return serve_env(state, SECRET_KEY)


def _tokens(state: Path) -> dict[str, str]:
    db = Database(f"sqlite:///{state / 'platform.db'}")
    db.upgrade()
    try:
        with db.session() as s:
            return {
                name: create_token(s, name, role, actor="test").token
                for name, role in [
                    ("admin", Role.ADMIN),
                    ("viewer", Role.VIEWER),
                    ("victim", Role.VIEWER),
                    ("victim2", Role.VIEWER),
                ]
            }
    finally:
        db.dispose()


def _revoked(state: Path, name: str) -> bool:
    db = Database(f"sqlite:///{state / 'platform.db'}")
    try:
        with db.read_session() as s:
            return s.scalar(select(ApiToken.revoked_at).where(ApiToken.name == name)) is not None
    finally:
        db.dispose()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """``diskci platform serve`` on a free port: its base URL, state directory and bearer tokens by name."""
    state = tmp_path / "state"
    tokens = _tokens(state)
    with platform_serve(_env(state), tmp_path / "serve.log", consumer=False) as server:
        yield server.base, state, tokens


def _over_http(
    url: str, token: str, steps: Callable[[Client], Awaitable[Any]], elicit: Any = None, mode: str = "auto"
) -> Any:
    async def main() -> Any:
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, elicitation_callback=elicit, mode=mode) as client:
                return await steps(client)

    return anyio.run(main)


def test_http_needs_a_bearer_token(served: tuple[str, Path, dict[str, str]]) -> None:
    base, _state, _tokens = served
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for headers in [{}, {"Authorization": "Bearer dci_not-a-token"}]:
        r = httpx.post(f"{base}/mcp", json=body, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"] in ("MissingToken", "InvalidToken")
        assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_http_tools_per_role_calls_and_confirmations(
    served: tuple[str, Path, dict[str, str]], mode: str
) -> None:
    base, state, tokens = served
    url = f"{base}/mcp"
    specs = load_all()

    async def listing(client: Client) -> set[str]:
        return {t.name for t in (await client.list_tools()).tools}

    viewer = _over_http(url, tokens["viewer"], listing, mode=mode)
    assert viewer == {n for n, s in specs.items() if s.role is Role.VIEWER}
    admin = _over_http(url, tokens["admin"], listing, mode=mode)
    assert admin == set(specs) | {"request_confirmation"}

    async def read(client: Client) -> Any:
        return await client.call_tool("system_list_api_tokens", {})

    result = _over_http(url, tokens["admin"], read, mode=mode)
    assert not result.is_error and {t["name"] for t in result.structured_content["tokens"]} >= {
        "admin",
        "victim",
    }
    forbidden = _over_http(url, tokens["viewer"], read, mode=mode)
    assert forbidden.is_error and forbidden.structured_content["error"] == "Forbidden"

    # Refused without confirmation; the confirmation id works from another session (any replica).
    async def revoke(client: Client) -> Any:
        return await client.call_tool(REVOKE, {"name": "victim"})

    pending = _over_http(url, tokens["admin"], revoke, mode=mode)
    assert pending.is_error and pending.structured_content["error"] == "ConfirmationRequired"
    assert not _revoked(state, "victim")
    confirm = {
        "confirmation_id": pending.structured_content["confirmation_id"],
        "action": REVOKE,
        "arguments": {"name": "victim"},
    }

    async def redeem(client: Client) -> list[Any]:
        return [await client.call_tool("request_confirmation", confirm) for _ in range(2)]

    done, replay = _over_http(url, tokens["admin"], redeem, mode=mode)
    assert not done.is_error and done.structured_content["result"]["revoked_at"]
    assert _revoked(state, "victim")
    assert replay.is_error and replay.structured_content["error"] == "ConfirmationRefused"

    # Elicitation over HTTP: declined changes nothing, accepted acts.
    def answering(action: str) -> Any:
        async def elicit(_context: Any, _params: Any) -> ElicitResult:
            content = {"confirm": True} if action == "accept" else None
            return ElicitResult(action=action, content=content)

        return elicit

    async def revoke2(client: Client) -> Any:
        return await client.call_tool(REVOKE, {"name": "victim2"})

    declined = _over_http(url, tokens["admin"], revoke2, elicit=answering("decline"), mode=mode)
    assert declined.is_error and declined.structured_content["error"] == "ConfirmationRefused"
    assert not _revoked(state, "victim2")
    accepted = _over_http(url, tokens["admin"], revoke2, elicit=answering("accept"), mode=mode)
    assert not accepted.is_error, accepted.content
    assert _revoked(state, "victim2")


def test_stdio_acts_as_the_named_token_in_read_only_mode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _tokens(state)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "diskci.cli.main", "platform", "mcp", "--token-name", "admin", "--read-only"],
        env=_env(state),
    )

    async def main() -> tuple[set[str], Any, Any]:
        async with Client(params) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            listed = await client.call_tool("system_list_api_tokens", {})
            revoke = await client.call_tool(REVOKE, {"name": "victim"})
            return names, listed, revoke

    names, listed, revoke = anyio.run(main)
    assert names == {n for n, s in load_all().items() if s.read_only}
    assert not listed.is_error and {t["name"] for t in listed.structured_content["tokens"]} >= {"admin"}
    assert revoke.is_error and not _revoked(state, "victim")


def test_stdio_refuses_an_unknown_token_name(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _tokens(state)
    proc = subprocess.run(
        [sys.executable, "-m", "diskci.cli.main", "platform", "mcp", "--token-name", "nobody"],
        env=_env(state),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert "no live API token named 'nobody'" in proc.stderr
