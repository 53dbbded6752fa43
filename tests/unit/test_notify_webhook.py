"""The disk_image_built webhook: Standard Webhooks signature, delivery id, retries on 5xx, failure on 4xx."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from diskci.errors import NotifyError
from diskci.notify import DiskImageBuilt, SourceRef, payload_schema, send_notification, signing_key

SECRET = b"s3cret-webhook-key"
PAYLOAD = DiskImageBuilt(
    node_platform="debian-12",
    version="1.0.0",
    reference="127.0.0.1:5000/ops/disk-images/debian-12:1.0.0",
    manifest_digest="sha256:" + "ab" * 32,
    source=SourceRef(repo="https://git.example.com/ops/images", ref="refs/tags/v1.0.0", commit="c0ffee"),
    run_id="42",
    critical=True,
)


class Hook:
    """A local webhook receiver answering with scripted statuses."""

    def __init__(self, statuses: list[tuple[int, dict[str, Any]]]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests.append((dict(self.headers), body))
                status, reply = hook.statuses.pop(0) if len(hook.statuses) > 1 else hook.statuses[0]
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/system/webhooks/disk_image_built"


@pytest.fixture
def hook_factory() -> Iterator[Any]:
    started: list[Hook] = []

    def start(statuses: list[tuple[int, dict[str, Any]]]) -> Hook:
        hook = Hook(statuses)
        threading.Thread(target=hook.server.serve_forever, daemon=True).start()
        started.append(hook)
        return hook

    yield start
    for h in started:
        h.server.shutdown()
        h.server.server_close()


def test_signed_delivery_after_retries(hook_factory: Any) -> None:
    hook = hook_factory([(503, {"detail": "busy"}), (502, {}), (202, {"task_id": "t1"})])
    delivery = send_notification(hook.url, SECRET, PAYLOAD, backoff=0.01)
    assert delivery.status == 202 and delivery.attempts == 3
    assert len(hook.requests) == 3
    ids = {h["webhook-id"] for h, _ in hook.requests}
    assert ids == {delivery.delivery_id}  # one delivery, retried
    for headers, body in hook.requests:
        # The standardwebhooks library's own verification accepts it: id, timestamp and body signed.
        assert Webhook(SECRET).verify(body, headers) == json.loads(body)
        assert headers["webhook-signature"].startswith("v1,")
        assert int(headers["webhook-timestamp"]) > 1_700_000_000
        jsonschema.validate(json.loads(body), payload_schema())
        # Neither the id nor the timestamp can be changed without breaking the signature.
        other_id = "00000000-0000-4000-8000-000000000000"
        earlier = str(int(headers["webhook-timestamp"]) - 1)
        for name, value in (("webhook-id", other_id), ("webhook-timestamp", earlier)):
            forged = {**headers, name: value}
            with pytest.raises(WebhookVerificationError, match="No matching signature"):
                Webhook(SECRET).verify(body, forged)
    assert json.loads(hook.requests[0][1])["source"]["commit"] == "c0ffee"


def test_signing_key_reads_standard_and_plain_secrets() -> None:
    raw = b"\x00\x01binary-key-bytes\xff"
    assert signing_key("whsec_" + base64.b64encode(raw).decode()) == raw
    assert signing_key(b"whsec_" + base64.b64encode(raw)) == raw
    assert signing_key("plain-token_urlsafe-secret") == b"plain-token_urlsafe-secret"
    with pytest.raises(NotifyError, match="empty"):
        signing_key("")


def test_client_error_fails_at_once_with_server_message(hook_factory: Any) -> None:
    hook = hook_factory([(401, {"detail": "bad signature for webhook 7"})])
    with pytest.raises(NotifyError, match=r"HTTP 401.*bad signature for webhook 7"):
        send_notification(hook.url, SECRET, PAYLOAD, backoff=0.01)
    assert len(hook.requests) == 1


def test_replay_refusal_after_a_lost_answer_counts_as_delivered(hook_factory: Any) -> None:
    # The first attempt reached the platform but its answer was lost (502 from a proxy); the retry
    # carries the same delivery id and is refused as a replay: the notification was delivered.
    hook = hook_factory([(502, {}), (409, {"error": "ReplayedDelivery", "detail": "seen"})])
    delivery = send_notification(hook.url, SECRET, PAYLOAD, backoff=0.01)
    assert delivery.status == 409 and delivery.attempts == 2


def test_replay_refusal_on_the_first_attempt_is_an_error(hook_factory: Any) -> None:
    hook = hook_factory([(409, {"error": "ReplayedDelivery", "detail": "delivery id already used"})])
    with pytest.raises(NotifyError, match="HTTP 409"):
        send_notification(hook.url, SECRET, PAYLOAD, backoff=0.01)


def test_server_errors_and_connection_errors_give_up(hook_factory: Any) -> None:
    hook = hook_factory([(500, {"detail": "db down"})])
    with pytest.raises(NotifyError, match=r"after 3 attempts.*db down"):
        send_notification(hook.url, SECRET, PAYLOAD, attempts=3, backoff=0.01)
    assert len(hook.requests) == 3
    url = hook.url
    hook.server.shutdown()
    hook.server.server_close()
    with pytest.raises(NotifyError, match="cannot reach"):
        send_notification(url, SECRET, PAYLOAD, attempts=2, backoff=0.01)


def test_documented_schema_is_current() -> None:
    doc = Path(__file__).parents[2] / "docs" / "webhook-payload.schema.json"
    assert json.loads(doc.read_text()) == payload_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**PAYLOAD.model_dump(), "manifest_digest": "sha256:zz"}, payload_schema())
