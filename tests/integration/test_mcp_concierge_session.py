"""A scripted System Concierge session (no model): the MCP SDK's client against a real ``diskci platform
serve`` over streamable HTTP, following the prompts' text. It triggers a build (bootstrap_disk_image_ci
on an image-build repository from ``diskci ci init-repo``; the run stays queued: no image is built),
chains run status → publications, tunes retention with the defaults the prompt reminds, prunes with
a confirmation, and decommissions CI workers (provisioned on the local provider, their runners
registered and busy) with confirmation through elicitation and through request_confirmation; a
replayed confirmation is refused. Every destructive first answer names what it would affect, over
MCP as over the HTTP API. With ``DISKCI_MCP_READ_ONLY`` the served /mcp lists only read-only tools."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import ElicitResult
from served_platform import platform_serve, serve_env
from sqlalchemy import select

from diskci.platform.actions.catalog import load_all
from diskci.platform.actions.tokens import create_token
from diskci.platform.ci import runners, scheduler
from diskci.platform.db.models import CiRunner, Event, NodeInstance, Role
from diskci.platform.db.session import Database

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "diskci.cli.main"]
SECRET_KEY = "mcp-concierge-key-" + "c" * 40
PLATFORM = "debian-12-amd64"
TOOL_NAME = re.compile(
    r"\b(?:system_[a-z_]+|provision_[a-z_]+|bootstrap_[a-z_]+|get_gitea_[a-z_]+|request_confirmation)\b"
)
HEARTBEAT = "/api/actions/diskci.v1.WorkerService/Heartbeat"


@dataclass
class Served:
    base: str
    state: Path
    db: Database
    token: str
    repository: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A served platform (no queue consumer: provider tasks stay queued), an admin token, and an
    image-build repository made by ``diskci ci init-repo`` with the one-architecture spec."""
    repository = tmp_path / "images"
    spec = ROOT / "platforms" / f"{PLATFORM}.yaml"
    subprocess.run([*CLI, "ci", "init-repo", str(repository), "--spec", str(spec)], check=True)
    state = tmp_path / "state"
    with platform_serve(serve_env(state, SECRET_KEY), tmp_path / "serve.log", consumer=False) as server:
        db = Database(f"sqlite:///{state / 'platform.db'}")
        with db.session() as s:
            token = create_token(s, "concierge", Role.ADMIN, actor="test").token
        try:
            yield Served(server.base, state, db, token, repository)
        finally:
            db.dispose()


@dataclass
class Assistant:
    """A client that follows a prompt: it calls only the tools the current prompt names."""

    client: Client
    calls: list[str] = field(default_factory=list)
    allowed: set[str] = field(default_factory=set)

    async def follow(self, prompt: str, arguments: dict[str, str]) -> str:
        result = await self.client.get_prompt(prompt, arguments)
        text = "\n".join(m.content.text for m in result.messages if hasattr(m.content, "text"))
        self.allowed = set(TOOL_NAME.findall(text))
        return text

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        assert tool in self.allowed, f"{tool} is not named by the prompt being followed"
        self.calls.append(tool)
        return await self.client.call_tool(tool, arguments)

    async def ok(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self.call(tool, arguments)
        assert not result.is_error, result.content
        return dict(result.structured_content or {})


def _session(served: Served, steps: Any, elicit: Any = None) -> Any:
    async def main() -> Any:
        headers = {"Authorization": f"Bearer {served.token}"}
        async with create_mcp_http_client(headers=headers) as http:
            transport = streamable_http_client(f"{served.base}/mcp", http_client=http)
            async with Client(transport, elicitation_callback=elicit) as client:
                return await steps(Assistant(client))

    return anyio.run(main)


def _busy_runner(served: Served, runner_token: str, hostname: str) -> CiRunner:
    """What the worker's runner agent does: register with the provisioning's token, heartbeat, take a job."""
    with served.db.session() as s:
        runner, token = runners.register(s, registration_token=runner_token, name=hostname, labels=["amd64"])
        uuid = runner.uuid
    beat = {
        "disk": {"path": "/var/lib/diskci", "total": 100 * 2**30, "free": 40 * 2**30},
        "memory": {"total": 8 * 2**30, "available": 6 * 2**30},
        "load": [0.5, 0.25, 0.1],
    }
    r = httpx.post(
        f"{served.base}{HEARTBEAT}",
        json=beat,
        headers={"x-runner-uuid": uuid, "x-runner-token": token},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    with served.db.session() as s:
        row = s.scalar(select(CiRunner).where(CiRunner.uuid == uuid))
        assert row is not None
        assert scheduler.claim_job(s, row) is not None
        s.expunge(row)
        return row


def _events(served: Served, type: str) -> list[Event]:
    with served.db.read_session() as s:
        rows = list(s.scalars(select(Event).where(Event.type == type).order_by(Event.id)))
        for row in rows:
            s.expunge(row)
        return rows


def test_a_concierge_session_walks_the_runbook(served: Served) -> None:
    platform = {
        "name": PLATFORM,
        "architectures": ["amd64"],
        "registry_repository": f"oci-layout:{served.state / 'layout'}",
        "cosign_identity_regexp": r"^https://ci\.example/.+$",
        "cosign_oidc_issuer": "https://ci.example",
    }

    # 1. "build a new disk image": the prompt's chain, up to a queued run and its (absent) publication
    async def build(a: Assistant) -> dict[str, Any]:
        a.allowed = {"system_create_node_platform"}
        await a.ok("system_create_node_platform", platform)
        text = await a.follow("build_disk_image", {"platform": PLATFORM, "ref": "main"})
        assert "bootstrap_disk_image_ci" in text and "push" in text and "get_gitea_workflow_run" in text
        assert (await a.ok("system_get_node_platform", {"name": PLATFORM}))["architectures"] == ["amd64"]
        await a.ok(
            "system_configure_disk_image_ci",
            {"node_platform": PLATFORM, "image_build_repository": str(served.repository)},
        )
        assert (await a.ok("system_list_ci_workers", {}))["workers"] == []
        started = await a.ok("bootstrap_disk_image_ci", {"node_platform": PLATFORM, "ref": "main"})
        assert started["status"] == "queued" and started["jobs"] == ["build amd64", "publish"]

        # 2. "check a build": run status -> jobs -> logs -> publication
        text = await a.follow("check_build", {"platform": PLATFORM, "run_id": str(started["run_id"])})
        runs = await a.ok("system_list_disk_image_ci_runs", {"node_platform": PLATFORM})
        assert [r["run_id"] for r in runs["runs"]] == [started["run_id"]]
        run = await a.ok("get_gitea_workflow_run", {"run_id": started["run_id"]})
        build_job = run["jobs"][0]
        assert build_job["status"] == "queued" and build_job["waiting_for_labels"] == ["amd64"]
        logs = await a.ok("get_gitea_job_logs", {"run_id": run["run_id"], "job_name": build_job["name"]})
        assert logs["logs"] == [] and logs["complete"] is False
        assert run["publication_id"] is None  # not built yet: the publications say the same
        a.allowed |= {"system_list_disk_image_publications"}
        listed = await a.ok("system_list_disk_image_publications", {"platform": PLATFORM})
        assert listed["publications"] == []
        return run

    run = _session(served, build)

    # The HTTP API's two-step confirmation carries the same preview (cancel: the run, its jobs).
    auth = {"Authorization": f"Bearer {served.token}"}
    asked = httpx.post(
        f"{served.base}/api/v1/system_cancel_disk_image_ci_run",
        json={"run_id": run["run_id"]},
        headers=auth,
        timeout=30,
    )
    assert asked.status_code == 428, asked.text
    affected = asked.json()["would_affect"]
    assert affected["run"]["run_id"] == run["run_id"]
    assert [j["job_name"] for j in affected["jobs_cancelled"]] == ["build amd64", "publish"]

    # 3. "tune image retention": the defaults reminded, previewed, set, and a prune confirmed
    async def retention(a: Assistant) -> None:
        text = await a.follow("tune_retention", {"platform": PLATFORM})
        reminded = re.search(r"kept (\d+) days, critical ones (\d+) days", text)
        assert reminded is not None and reminded.groups() == ("90", "365")
        assert "default publication is never pruned" in text
        current = await a.ok("system_get_node_platform", {"name": PLATFORM})
        assert (current["retention_routine_days"], current["retention_critical_days"]) == (90, 365)
        assert (await a.ok("system_preview_disk_image_retention", {"platform": PLATFORM}))["candidates"] == []
        done = await a.ok(
            "system_set_disk_image_retention",
            {"platform": PLATFORM, "routine_days": 30, "critical_days": 365},
        )
        assert (done["routine_days"], done["critical_days"]) == (30, 365)
        pending = await a.call("system_prune_disk_image_publications", {"platform": PLATFORM})
        body = pending.structured_content
        assert pending.is_error and body["error"] == "ConfirmationRequired"
        assert body["would_affect"]["publications_pruned"] == []
        confirmed = await a.ok(
            "request_confirmation",
            {
                "confirmation_id": body["confirmation_id"],
                "action": "system_prune_disk_image_publications",
                "arguments": body["arguments"],
            },
        )
        assert confirmed["result"]["pruned"] == []

    _session(served, retention)

    # 4. "decommission a CI worker": two local workers, each with its runner busy on a job
    async def provision(a: Assistant) -> list[dict[str, Any]]:
        a.allowed = {"system_provision_ci_worker"}
        return [
            await a.ok(
                "system_provision_ci_worker",
                {
                    "hostname": hostname,
                    "provider": "local",
                    "provider_region_id": "local",
                    "provider_instance_type_id": "local.small",
                    "build_targets": ["amd64"],
                },
            )
            for hostname in ("worker-a", "worker-b")
        ]

    provisioned = _session(served, provision)
    a_id, b_id = (p["instance"]["id"] for p in provisioned)
    _busy_runner(served, provisioned[0]["runner_token"], "worker-a")
    second = httpx.post(  # a second run, for worker-b's job
        f"{served.base}/api/v1/bootstrap_disk_image_ci",
        json={"node_platform": PLATFORM, "ref": "main"},
        headers=auth,
        timeout=60,
    )
    assert second.status_code == 200, second.text
    _busy_runner(served, provisioned[1]["runner_token"], "worker-b")

    asked_messages: list[str] = []

    async def accept(_context: Any, params: Any) -> ElicitResult:
        asked_messages.append(params.message)
        return ElicitResult(action="accept", content={"confirm": True})

    async def decommission_elicited(a: Assistant) -> dict[str, Any]:
        text = await a.follow("decommission_ci_worker", {"worker": "worker-a"})
        assert "request_confirmation" in text
        workers = {w["hostname"]: w for w in (await a.ok("system_list_ci_workers", {}))["workers"]}
        assert workers["worker-a"]["current_job"] == {"run_id": run["run_id"], "job_name": "build amd64"}
        stats = await a.ok("system_get_instance_stats", {"instance_id": a_id})
        assert stats["worker"]["hostname"] == "worker-a" and stats["worker"]["load"] == [0.5, 0.25, 0.1]
        return await a.ok("system_terminate_ci_worker", {"id": a_id})

    terminated = _session(served, decommission_elicited, elicit=accept)
    assert terminated["status"] == "terminating"
    assert terminated["cancelled_jobs"] == [{"run_id": run["run_id"], "job_name": "build amd64"}]
    assert len(asked_messages) == 1
    assert "worker-a" in asked_messages[0] and "It would affect" in asked_messages[0]
    assert '"job_name": "build amd64"' in asked_messages[0]

    async def decommission_by_id(a: Assistant) -> tuple[Any, Any, Any]:
        await a.follow("decommission_ci_worker", {"worker": "worker-b"})
        pending = await a.call("system_terminate_ci_worker", {"id": b_id})
        with served.db.read_session() as s:
            node = s.get(NodeInstance, b_id)
            assert node is not None and node.status == "provisioning"  # nothing done yet
        body = pending.structured_content
        confirm = {
            "confirmation_id": body["confirmation_id"],
            "action": "system_terminate_ci_worker",
            "arguments": body["arguments"],
        }
        a.allowed.add("request_confirmation")
        done = await a.call("request_confirmation", confirm)
        replay = await a.call("request_confirmation", confirm)
        return pending, done, replay

    pending, done, replay = _session(served, decommission_by_id)
    body = pending.structured_content
    assert pending.is_error and body["error"] == "ConfirmationRequired"
    would = body["would_affect"]
    assert would["worker"] == {"id": b_id, "hostname": "worker-b", "status": "provisioning"}
    assert would["runners_revoked"] == ["worker-b"]
    assert [j["job_name"] for j in would["jobs_cancelled"]] == ["build amd64"]
    assert would["machine_destroyed"]["provider"] == "local"
    assert not done.is_error and done.structured_content["result"]["status"] == "terminating"
    assert replay.is_error and replay.structured_content["error"] == "ConfirmationRefused"

    # Every confirmation and refusal is an event with its actor; the preview is kept with the request.
    requested = _events(served, "confirmation_requested")
    assert any(e.payload.get("would_affect", {}).get("worker", {}).get("id") == b_id for e in requested)
    refused = _events(served, "confirmation_refused")
    assert [e.reason for e in refused] == ["replayed"]
    accepted = _events(served, "confirmation_accepted")
    assert {e.payload["actor"] for e in accepted} == {"token:concierge"}
    assert {e.payload.get("via") for e in accepted} == {"elicitation", "id"}


def test_a_missing_worker_is_refused_at_once_without_a_confirmation(served: Served) -> None:
    async def steps(a: Assistant) -> Any:
        await a.follow("decommission_ci_worker", {})
        return await a.call("system_terminate_ci_worker", {"id": 999})

    result = _session(served, steps)
    assert result.is_error and result.structured_content["error"] == "CiWorkerNotFound"
    assert _events(served, "confirmation_requested") == []


def test_read_only_http_mcp_lists_only_read_only_tools(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**serve_env(state, SECRET_KEY), "DISKCI_MCP_READ_ONLY": "1"}
    with platform_serve(env, tmp_path / "serve.log", consumer=False) as server:
        db = Database(f"sqlite:///{state / 'platform.db'}")
        try:
            with db.session() as s:
                token = create_token(s, "admin", Role.ADMIN, actor="test").token
        finally:
            db.dispose()
        served = Served(server.base, state, db, token, tmp_path)

        async def steps(a: Assistant) -> tuple[set[str], Any]:
            names = {t.name for t in (await a.client.list_tools()).tools}
            a.allowed = {"system_revoke_api_token"}
            return names, await a.call("system_revoke_api_token", {"name": "admin"})

        names, revoke = _session(served, steps)
    assert names == {n for n, s in load_all().items() if s.read_only}
    assert revoke.is_error  # not a tool of this server
    assert json.dumps(revoke.model_dump(mode="json")).count("ConfirmationRequired") == 0
