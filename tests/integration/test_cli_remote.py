"""``diskci platform <action> --url URL --token TOKEN`` against a real ``diskci platform serve``: the same
output as local mode, the token's role, the server's errors as diskci errors, destructive calls
confirmed only with ``--yes``; and local mode's refusal of a state directory that does not exist."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from loopback import free_port
from served_platform import platform_serve, serve_env
from sqlalchemy import select
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.cli.remote_actions import RemoteActionFailed
from diskci.errors import Forbidden, NotFound, Unauthorized, UsageError
from diskci.platform.actions.tokens import create_token
from diskci.platform.db.models import ApiToken, Role
from diskci.platform.db.session import Database

SECRET_KEY = "remote-cli-test-key-" + "r" * 40
PLATFORM = {
    "name": "debian-12-amd64",
    "architectures": ["amd64"],
    "registry_repository": "oci-layout:/srv/diskci/layout",
    "cosign_identity_regexp": r"^https://ci\.example/.+$",
    "cosign_oidc_issuer": "https://ci.example",
}


@dataclass
class Served:
    state: Path
    url: str
    tokens: dict[str, str]
    env: dict[str, str]


def _state_db(state: Path) -> Database:
    return Database(f"sqlite:///{state / 'platform.db'}")


def _revoked(state: Path, name: str) -> bool:
    db = _state_db(state)
    try:
        with db.read_session() as s:
            return s.scalar(select(ApiToken.revoked_at).where(ApiToken.name == name)) is not None
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("remote-cli")
    state = tmp / "state"
    env = serve_env(state, SECRET_KEY)
    with platform_serve(env, tmp / "serve.log", consumer=False) as server:
        db = _state_db(state)  # migrated by serve at start
        try:
            with db.session() as s:
                roles = {"admin": Role.ADMIN, "ops": Role.OPERATOR, "viewer": Role.VIEWER}
                tokens = {
                    name: create_token(s, name, role, actor="test").token for name, role in roles.items()
                }
                for victim in ("victim", "victim2"):
                    create_token(s, victim, Role.VIEWER, actor="test")
        finally:
            db.dispose()
        yield Served(state=state, url=server.base, tokens=tokens, env=env)


@pytest.fixture
def cli(served: Served, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``diskci platform ARGS`` in-process, in the server's environment (local mode uses its state)."""
    for key in ("DISKCI_STATE_DIR", "DISKCI_SECRET_KEY", "DISKCI_QUEUE_URL"):
        monkeypatch.setenv(key, served.env[key])
    for key in ("DISKCI_DATABASE_URL", "DISKCI_URL", "DISKCI_TOKEN", "DISKCI_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(app, ["platform", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    return run


def _remote(served: Served, token: str) -> tuple[str, ...]:
    return ("--url", served.url, "--token", served.tokens[token])


def _diskci(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diskci.cli.main", *args],
        env={**env, "COLUMNS": "500"},  # error messages on one line
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_remote_calls_print_what_local_mode_prints(served: Served, cli: Any) -> None:
    created = cli("system_create_node_platform", "--data", json.dumps(PLATFORM), *_remote(served, "admin"))
    assert json.loads(created.stdout)["name"] == PLATFORM["name"]
    for args in (
        ("system_list_node_platforms", "--json"),
        ("system_list_node_platforms",),  # stdout is not a terminal: the JSON, not a table
        ("system_get_node_platform", "-s", f"name={PLATFORM['name']}"),
        ("system_list_disk_image_publications", "-s", f"platform={PLATFORM['name']}", "--json"),
    ):
        remote = cli(*args, *_remote(served, "ops")).stdout
        local = cli(*args).stdout
        assert remote == local, args
    listed = json.loads(cli("system_list_node_platforms", *_remote(served, "viewer")).stdout)
    assert [p["name"] for p in listed["platforms"]] == [PLATFORM["name"]]


def test_the_servers_errors_are_the_diskci_errors_of_local_mode(served: Served, cli: Any) -> None:
    with pytest.raises(NotFound, match="no node platform named 'nope'") as remote:
        cli("system_get_node_platform", "-s", "name=nope", *_remote(served, "viewer"))
    with pytest.raises(NotFound) as local:
        cli("system_get_node_platform", "-s", "name=nope")
    assert type(remote.value) is type(local.value)
    assert remote.value.diagnostics() == local.value.diagnostics()
    with pytest.raises(
        Forbidden, match="system_create_api_token needs the admin role; this token has viewer"
    ):
        cli("system_create_api_token", "-s", "name=sneaky", *_remote(served, "viewer"))
    with pytest.raises(Unauthorized):
        cli("system_list_node_platforms", "--url", served.url, "--token", "dci_not-a-token")


def test_a_viewer_calling_an_admin_action_exits_with_forbiddens_message(served: Served) -> None:
    env = {**served.env, "DISKCI_URL": served.url, "DISKCI_TOKEN": served.tokens["viewer"]}
    proc = _diskci("platform", "token", "create", "sneaky", "--role", "admin", env=env)
    assert proc.returncode == Forbidden.exit_code, proc.stderr
    assert "system_create_api_token needs the admin role; this token has viewer" in proc.stderr
    assert proc.stdout == ""
    db = _state_db(served.state)
    try:
        with db.read_session() as s:
            assert s.scalar(select(ApiToken.id).where(ApiToken.name == "sneaky")) is None
    finally:
        db.dispose()


def test_a_destructive_remote_call_acts_only_with_yes(served: Served, cli: Any) -> None:
    revoke = ("system_revoke_api_token", "-s", "name=victim")
    with pytest.raises(UsageError, match="destructive: add --yes to confirm") as remote:
        cli(*revoke, *_remote(served, "admin"))
    assert not _revoked(served.state, "victim")
    with pytest.raises(UsageError) as local:
        cli(*revoke)  # local mode refuses with the same words, naming what it would affect
    assert remote.value.diagnostics() == local.value.diagnostics()
    assert "it would affect:" in remote.value.diagnostics()
    assert not _revoked(served.state, "victim")
    done = json.loads(cli(*revoke, "--yes", *_remote(served, "admin")).stdout)
    assert done["name"] == "victim" and done["revoked_at"] is not None
    assert _revoked(served.state, "victim")
    # ``token revoke`` names its token: that is its confirmation, remotely too
    token_file = served.state.parent / "admin.token"
    token_file.write_text(served.tokens["admin"] + "\n")
    cli("token", "revoke", "victim2", "--url", served.url, "--token-file", str(token_file))
    assert _revoked(served.state, "victim2")


def test_an_unreachable_platform_is_named(served: Served, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = _diskci("platform", "system_list_node_platforms", "--url", url, "--token", "x", env=served.env)
    assert proc.returncode == RemoteActionFailed.exit_code
    assert f"cannot reach the platform at {url}" in proc.stderr
    assert proc.stdout == ""


def test_remote_options_are_checked(served: Served, cli: Any) -> None:
    with pytest.raises(UsageError, match="needs an API token"):
        cli("system_list_node_platforms", "--url", served.url)
    with pytest.raises(UsageError, match="not an http"):
        cli("system_list_node_platforms", "--url", "ftp://127.0.0.1/", "--token", "x")
    with pytest.raises(UsageError, match="only with --url"):
        cli("system_list_node_platforms", "--token", "x")
    with pytest.raises(UsageError, match="one or the other"):
        cli("system_list_node_platforms", *_remote(served, "ops"), "--state-dir", str(served.state))


def test_local_mode_refuses_a_missing_state_directory_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "nothing-here"
    env = serve_env(state, SECRET_KEY)
    proc = _diskci("platform", "system_list_node_platforms", env=env)
    assert proc.returncode == UsageError.exit_code, proc.stderr
    assert f"no platform database at {state / 'platform.db'}" in proc.stderr
    assert f"the state directory {state} does not exist" in proc.stderr
    assert "diskci platform migrate --state-dir" in proc.stderr
    assert proc.stdout == ""
    monkeypatch.setenv("DISKCI_SECRET_KEY", SECRET_KEY)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, ["platform", *args, "--state-dir", str(state)], catch_exceptions=False)

    with pytest.raises(UsageError, match="no platform database"):
        run("token", "list")
    assert not state.exists()
    state.mkdir()
    with pytest.raises(UsageError, match="the file does not exist"):
        run("system_list_recent_events")
    assert list(state.iterdir()) == []
    assert run("migrate").exit_code == 0
    assert json.loads(run("system_list_node_platforms").stdout) == {"platforms": []}
