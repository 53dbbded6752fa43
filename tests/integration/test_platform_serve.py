"""``diskci platform serve`` as a real process: schema migrated at start, API up, and the in-process
queue consumer picking up a webhook delivery; SIGINT shuts it down cleanly."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from loopback import free_port
from served_platform import admin_token, platform_serve, serve_env

from diskci.notify import sign_delivery
from polling import wait_until

SECRET_KEY = "serve-test-key-" + "s" * 40


def test_serve_runs_api_and_consumer(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform_serve(serve_env(state, SECRET_KEY), tmp_path / "serve.log", stop_timeout=30) as server:
        base = server.base
        token = admin_token(state)  # platform.db migrated by serve at start
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(
            f"{base}/api/v1/system_create_node_platform",
            headers=auth,
            json={
                "name": "debian-12-amd64",
                "architectures": ["amd64"],
                # Nothing listens here: the processor will find the registry unreachable.
                "registry_repository": f"127.0.0.1:{free_port()}/ops/disk-images/debian-12-amd64",
                "cosign_identity_regexp": r"^https://ci\.example/.+$",
                "cosign_oidc_issuer": "https://ci.example",
            },
        )
        assert r.status_code == 200, r.text
        secret = httpx.post(
            f"{base}/api/v1/provision_disk_image_webhook", headers=auth, json={"platform": "debian-12-amd64"}
        ).json()["secret"]
        body = json.dumps(
            {
                "node_platform": "debian-12-amd64",
                "version": "1",
                "reference": "127.0.0.1:1/ops/disk-images/debian-12-amd64:1",
                "manifest_digest": "sha256:" + "cd" * 32,
                "source": {"repo": "ops/images", "ref": "refs/heads/main", "commit": "abcdef0"},
                "run_id": "1",
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            **sign_delivery(secret, str(uuid.uuid4()), int(time.time()), body),
        }
        r = httpx.post(f"{base}/api/v1/system/webhooks/disk_image_built", content=body, headers=headers)
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]

        def get_task() -> Any:
            url = f"{base}/api/v1/system_get_task"
            return httpx.post(url, headers=auth, json={"task_id": task_id}).json()

        def started_task() -> Any:
            task = get_task()
            return task if task["started_at"] is not None else None

        task = wait_until(  # the in-process consumer picks the task up
            started_task, 30, interval=0.2, what="the task to start", detail=lambda: f"task: {get_task()}"
        )
        assert task["payload"] == {"delivery_id": headers["webhook-id"]}
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()
