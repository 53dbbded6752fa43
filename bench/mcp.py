"""A read-only MCP tool call over streamable HTTP against the same action over the HTTP API (goal: ≤ 2×).

Starts a real ``diskci platform serve`` (SQLite in a temporary state directory, no queue consumer) with
an admin token, then, in one run and one event loop: opens one MCP session at ``/mcp`` and one
keep-alive HTTP client, warms both up, and times ``--calls`` alternating calls of the same read-only
action (``--action``, default ``system_get_instance_stats``) each way; then times ``tools/list`` with
every action registered. Prints both medians, their ratio and the listing time. Nothing is timed while
the server starts.

Run: ``.venv/bin/python bench/mcp.py [--calls 200] [--action system_list_node_platforms]``
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

# This file is named mcp.py: its directory, first on sys.path when run as a script, would shadow the
# MCP SDK's package ``mcp``.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

GOAL_RATIO = 2.0
SECRET_KEY = "bench-mcp-key-" + "b" * 40


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _admin_token(state: Path) -> str:
    from diskci.platform.actions.tokens import create_token
    from diskci.platform.db.models import Role
    from diskci.platform.db.session import Database

    db = Database(f"sqlite:///{state / 'platform.db'}")
    db.upgrade()
    try:
        with db.session() as s:
            return create_token(s, "bench", Role.ADMIN, actor="bench").token
    finally:
        db.dispose()


def _serve(state: Path, port: int, log: Any) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DISKCI_STATE_DIR": str(state),
        "DISKCI_SECRET_KEY": SECRET_KEY,
        "DISKCI_QUEUE_URL": f"sqlite:///{state / 'queue.db'}",
    }
    env.pop("DISKCI_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "diskci.cli.main", "platform", "serve", "--port", str(port), "--no-consumer"]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_up(base: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"platform serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("platform serve did not come up within 30 s")


async def _measure(base: str, token: str, action: str, calls: int, listings: int) -> dict[str, Any]:
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {token}"}
    api_times: list[float] = []
    mcp_times: list[float] = []
    list_times: list[float] = []
    async with (
        httpx.AsyncClient(base_url=base, headers=headers) as api,
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
    ):
        for _ in range(10):  # warm up both paths (imports, connections, caches)
            (await api.post(f"/api/v1/{action}", json={})).raise_for_status()
            result = await client.call_tool(action, {})
            if result.is_error:
                raise SystemExit(f"the tool call failed: {result.content}")
        for _ in range(calls):
            start = time.perf_counter()
            (await api.post(f"/api/v1/{action}", json={})).raise_for_status()
            api_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = await client.call_tool(action, {})
            mcp_times.append(time.perf_counter() - start)
            assert not result.is_error
        tools = 0
        for _ in range(listings):
            start = time.perf_counter()
            tools = len((await client.list_tools()).tools)
            list_times.append(time.perf_counter() - start)
    return {"api": api_times, "mcp": mcp_times, "list": list_times, "tools": tools}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls each way")
    parser.add_argument("--listings", type=int, default=50, help="timed tools/list requests")
    parser.add_argument("--action", default="system_get_instance_stats", help="a read-only action, no input")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="diskci-bench-mcp-") as tmp:
        state = Path(tmp) / "state"
        token = _admin_token(state)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with (Path(tmp) / "serve.log").open("wb") as log:
            proc = _serve(state, port, log)
            try:
                _wait_up(base, proc)
                got = anyio.run(_measure, base, token, args.action, args.calls, args.listings)
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    api = statistics.median(got["api"]) * 1000
    mcp = statistics.median(got["mcp"]) * 1000
    listing = statistics.median(got["list"]) * 1000
    ratio = mcp / api
    print(f"action           {args.action} ({args.calls} calls each way, alternating)")
    print(f"HTTP API         median {api:.2f} ms")
    print(f"MCP tool call    median {mcp:.2f} ms (streamable HTTP, one session)")
    verdict = "ok" if ratio <= GOAL_RATIO else "OVER"
    print(f"ratio            {ratio:.2f}x (goal <= {GOAL_RATIO:.0f}x): {verdict}")
    print(f"tools/list       median {listing:.2f} ms ({got['tools']} tools, every action registered)")
    return 0 if ratio <= GOAL_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
