"""``diskci platform serve`` as a real process: schema migrated at start, API up, and the in-process
queue consumer picking up a webhook delivery; SIGINT shuts it down cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from diskci.notify import sign_body
from diskci.platform.actions.tokens import create_token
from diskci.platform.db.models import Role
from diskci.platform.db.session import Database
from polling import http_ok, wait_until

SECRET_KEY = "serve-test-key-" + "s" * 40


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_runs_api_and_consumer(tmp_path: Path) -> None:
    port = _free_port()
    state = tmp_path / "state"
    env = {
        **os.environ,
        "DISKCI_STATE_DIR": str(state),
        "DISKCI_SECRET_KEY": SECRET_KEY,
        "DISKCI_QUEUE_URL": f"sqlite:///{state / 'queue.db'}",
    }
    env.pop("DISKCI_DATABASE_URL", None)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diskci.cli.main", "platform", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def serving() -> bool:
            if http_ok(f"{base}/healthz"):
                return True
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            return False

        wait_until(serving, 30, what="serve to come up")
        db = Database(f"sqlite:///{state / 'platform.db'}")  # migrated by serve at start
        with db.session() as s:
            token = create_token(s, "root", Role.ADMIN, actor="test").token
        db.dispose()
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(
            f"{base}/api/v1/system_create_node_platform",
            headers=auth,
            json={
                "name": "debian-12-amd64",
                "architectures": ["amd64"],
                # Nothing listens here: the processor will find the registry unreachable.
                "registry_repository": f"127.0.0.1:{_free_port()}/ops/disk-images/debian-12-amd64",
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
            "X-DiskCI-Signature-256": sign_body(secret.encode(), body),
            "X-DiskCI-Delivery": str(uuid.uuid4()),
            "X-DiskCI-Timestamp": str(int(time.time())),
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
        assert task["payload"] == {"delivery_id": headers["X-DiskCI-Delivery"]}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
