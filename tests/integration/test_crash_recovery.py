"""A ``diskci platform serve`` SIGKILLed while it verifies a publication: after a restart the delivery
is recovered and ends in exactly one published publication, and the partial download is gone.

The kill is deterministic: the registry is reached through a proxy that, while stalling, sends half of
the big root image and then holds the connection, so the server is killed with its Task ``running``, its
publication ``processing`` and a ``.part`` download in the blob cache.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_publication_helpers import (
    IDENTITY_REGEXP,
    ISSUER,
    make_netboot_build,
    sign_and_push,
)
from served_platform import admin_token, platform_serve, serve_env
from sqlalchemy import func, select

from diskci.notify import sign_delivery
from diskci.platform.db.models import DiskImagePublication, Event, Task
from diskci.platform.db.session import Database
from diskci.supplychain.authority import SigningAuthority
from polling import wait_until

SECRET_KEY = "crash-test-key-" + "c" * 40
PLATFORM = "debian-12-crash"
ROOT_SIZE = 4 << 20  # the blob the proxy stalls in
HOOK = "/api/v1/system/webhooks/disk_image_built"
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class StallingProxy:
    """A pass-through HTTP proxy to ``upstream``; while ``stall`` is set, a blob answer of more than
    1 MiB is cut after its first half and held open until ``release`` is set."""

    def __init__(self, upstream: str) -> None:
        self.stall = threading.Event()
        self.release = threading.Event()
        self.stalled = threading.Event()
        host, port = upstream.split(":")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP | {"host"}}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in HOP | {"content-length"}:
                        self.send_header(key, value)
                size = int(resp.getheader("Content-Length") or len(data))
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if proxy.stall.is_set() and "/blobs/" in self.path and len(data) > 1 << 20:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    proxy.stalled.set()
                    proxy.release.wait(120)
                    self.close_connection = True
                    return
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def proxy(registry: str) -> Iterator[StallingProxy]:
    p = StallingProxy(registry)
    threading.Thread(target=p.server.serve_forever, daemon=True).start()
    yield p
    p.release.set()
    p.server.shutdown()
    p.server.server_close()


def signed(secret: str, delivery: str, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", **sign_delivery(secret, delivery, int(time.time()), body)}


def _parts(state: Path) -> list[str]:
    tmp = state / "blobs" / "tmp"
    return sorted(f.name for f in tmp.iterdir() if f.name.endswith(".part")) if tmp.is_dir() else []


def test_sigkill_mid_verification_recovers_to_one_publication(
    tmp_path: Path, registry: str, proxy: StallingProxy, authority: SigningAuthority
) -> None:
    build_dir = tmp_path / "build"
    make_netboot_build(build_dir, platform=PLATFORM, version="1.0.0", root_size=ROOT_SIZE)
    pushed = sign_and_push(build_dir, authority, f"{registry}/ops/disk-images/{PLATFORM}")
    repository = f"{proxy.address}/ops/disk-images/{PLATFORM}"  # the platform reads through the proxy
    state = tmp_path / "state"
    env = {**serve_env(state, SECRET_KEY), "DISKCI_TASK_LEASE_SECONDS": "2"}
    db = Database(f"sqlite:///{state / 'platform.db'}")
    body = json.dumps(
        {
            "node_platform": PLATFORM,
            "version": "1.0.0",
            "reference": f"{repository}:1.0.0",
            "manifest_digest": pushed.digest,
            "source": {"repo": "https://git.example.com/ops/images", "ref": "refs/tags/v1", "commit": "c0"},
            "run_id": "1",
        }
    ).encode()
    delivery = str(uuid.uuid4())

    def tasks() -> list[tuple[str, str]]:
        with db.read_session() as s:
            return [(t.task_id, t.status) for t in s.scalars(select(Task).order_by(Task.id))]

    def publications() -> list[str]:
        with db.read_session() as s:
            return [p.status for p in s.scalars(select(DiskImagePublication))]

    proxy.stall.set()
    try:
        with platform_serve(env, tmp_path / "serve1.log", stop_signal=signal.SIGKILL, stop_timeout=10) as one:
            auth = {"Authorization": f"Bearer {admin_token(state)}"}
            r = httpx.post(
                f"{one.base}/api/v1/system_create_node_platform",
                headers=auth,
                json={
                    "name": PLATFORM,
                    "architectures": ["amd64"],
                    "registry_repository": repository,
                    "cosign_identity_regexp": f"^{IDENTITY_REGEXP}$",
                    "cosign_oidc_issuer": ISSUER,
                    "trusted_root": authority.trusted_root_json().decode(),
                },
            )
            assert r.status_code == 200, r.text
            secret = httpx.post(
                f"{one.base}/api/v1/provision_disk_image_webhook", headers=auth, json={"platform": PLATFORM}
            ).json()["secret"]
            r = httpx.post(f"{one.base}{HOOK}", content=body, headers=signed(secret, delivery, body))
            assert r.status_code == 202, r.text
            log1 = (tmp_path / "serve1.log").read_text
            wait_until(proxy.stalled.is_set, 60, what="the download to stall", detail=log1)
            wait_until(lambda: _parts(state), 10, what="a .part download")
            # SIGKILL (the block's stop signal): mid-download, mid-verification.
        assert one.returncode == -signal.SIGKILL
        assert [status for _, status in tasks()] == ["running"]
        assert publications() == ["processing"]
        assert _parts(state), "the killed process left its partial download"
        proxy.stall.clear()
        proxy.release.set()

        def lease_expired() -> bool:  # the dead process's lease (2 s) has run out
            with db.read_session() as s:
                leases = [t.lease_expires_at for t in s.scalars(select(Task))]
            now = datetime.now(UTC).replace(tzinfo=None)
            return all(lease is not None and lease.replace(tzinfo=None) < now for lease in leases)

        wait_until(lease_expired, 10, what="the dead process's lease to run out")

        with platform_serve(env, tmp_path / "serve2.log") as two:
            assert not _parts(state), "the partial download of the dead process is removed at start"

            def published() -> bool:
                return publications() == ["published"]

            wait_until(published, 60, interval=0.2, what="the recovery", detail=lambda: f"{tasks()}")
            # The sender's retry of the same delivery: its work is done, so it is a replay now.
            r = httpx.post(f"{two.base}{HOOK}", content=body, headers=signed(secret, delivery, body))
            assert r.status_code == 409 and r.json()["error"] == "ReplayedDelivery", r.text
    finally:
        proxy.release.set()
    statuses = [status for _, status in tasks()]
    assert statuses == ["failed", "succeeded"], statuses  # the abandoned task, and its recovery
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(DiskImagePublication)) == 1
        assert s.scalar(select(func.count()).where(Event.type == "disk_image_published")) == 1
    assert not _parts(state)
    db.dispose()
    assert os.listdir(state / "blobs" / "sha256")
