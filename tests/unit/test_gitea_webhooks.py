"""Gitea's webhook deliveries: the X-Gitea-Signature check (good, bad, missing) and typed events."""

from __future__ import annotations

import json

import pytest

from diskci.platform.gitea.webhooks import (
    BadGiteaSignature,
    MalformedGiteaEvent,
    PushEvent,
    WorkflowJobEvent,
    WorkflowRunEvent,
    read_delivery,
    sign_body,
)

SECRET = "webhook-secret-" + "s" * 20
REPOSITORY = {"id": 1, "full_name": "ops/images"}
RUN = {"id": 7, "run_number": 3, "path": "build.yaml@refs/tags/v1", "event": "push", "head_sha": "b" * 40,
       "status": "completed", "conclusion": "success", "started_at": "2025-05-01T10:00:00Z",
       "completed_at": "2025-05-01T10:05:00Z"}  # fmt: skip
JOB = {"id": 11, "run_id": 7, "name": "build amd64", "status": "in_progress", "conclusion": "",
       "labels": ["amd64"], "runner_id": 2, "runner_name": "worker", "steps": [
           {"name": "Build", "number": 1, "status": "in_progress", "conclusion": "",
            "started_at": "2025-05-01T10:00:00Z", "completed_at": "1970-01-01T00:00:00Z"}],
       "started_at": "2025-05-01T10:00:00Z", "completed_at": "1970-01-01T00:00:00Z"}  # fmt: skip


def delivery(event: str, payload: object, *, secret: str = SECRET) -> tuple[dict[str, str], bytes]:
    body = json.dumps(payload).encode()
    headers = {"X-Gitea-Event": event, "X-Gitea-Delivery": "0b9a-delivery",
               "X-Gitea-Signature": sign_body(secret, body)}  # fmt: skip
    return headers, body


def test_workflow_run_event() -> None:
    sender = {"login": "ops"}
    payload = {"action": "completed", "workflow_run": RUN, "repository": REPOSITORY, "sender": sender}
    headers, body = delivery("workflow_run", payload)
    got = read_delivery(headers, body, SECRET)
    assert (got.delivery_id, got.event_name) == ("0b9a-delivery", "workflow_run")
    assert isinstance(got.event, WorkflowRunEvent)
    assert (got.event.action, got.event.repository, got.event.sender) == ("completed", "ops/images", "ops")
    assert (got.event.run.id, got.event.run.ref, got.event.run.conclusion) == (7, "refs/tags/v1", "success")


def test_workflow_job_event() -> None:
    headers, body = delivery("workflow_job", {"action": "in_progress", "workflow_job": JOB,
                                              "repository": REPOSITORY})  # fmt: skip
    event = read_delivery(headers, body, SECRET).event
    assert isinstance(event, WorkflowJobEvent) and event.action == "in_progress"
    assert (event.job.runner_name, event.job.conclusion, event.job.completed_at) == ("worker", None, None)
    assert event.job.steps[0].completed_at is None  # Gitea's epoch: not yet


def test_push_event_and_a_deleted_ref() -> None:
    payload = {"ref": "refs/tags/v1", "before": "0" * 40, "after": "b" * 40, "repository": REPOSITORY,
               "pusher": {"login": "ops"}}  # fmt: skip
    event = read_delivery(*delivery("push", payload), SECRET).event
    assert event == PushEvent("refs/tags/v1", "0" * 40, "b" * 40, "ops/images", "ops")
    assert not event.deleted
    gone = read_delivery(*delivery("push", {**payload, "after": "0" * 40}), SECRET).event
    assert isinstance(gone, PushEvent) and gone.deleted


def test_an_event_diskci_does_not_read_is_typed_none() -> None:
    got = read_delivery(*delivery("issues", {"action": "opened"}), SECRET)
    assert (got.event_name, got.event) == ("issues", None)


def test_headers_in_any_case_and_the_hub_signature() -> None:
    headers, body = delivery("push", {"ref": "refs/heads/main", "after": "c" * 40})
    lowered = {"x-gitea-event": "push", "x-hub-signature-256": "sha256=" + headers["X-Gitea-Signature"]}
    assert isinstance(read_delivery(lowered, body, SECRET).event, PushEvent)


def test_a_bad_signature_is_refused() -> None:
    headers, body = delivery("push", {"ref": "refs/heads/main", "after": "c" * 40}, secret="another-secret")
    with pytest.raises(BadGiteaSignature, match="does not match") as caught:
        read_delivery(headers, body, SECRET)
    assert caught.value.http_status == 401
    headers, body = delivery("push", {"ref": "refs/heads/main", "after": "c" * 40})
    with pytest.raises(BadGiteaSignature):
        read_delivery(headers, body + b" ", SECRET)  # the body changed after signing


def test_a_missing_signature_is_refused() -> None:
    headers, body = delivery("push", {"ref": "refs/heads/main", "after": "c" * 40})
    del headers["X-Gitea-Signature"]
    with pytest.raises(BadGiteaSignature, match="no Gitea webhook signature"):
        read_delivery(headers, body, SECRET)
    with pytest.raises(BadGiteaSignature):
        read_delivery({**headers, "X-Gitea-Signature": "not-hex"}, body, SECRET)


@pytest.mark.parametrize(
    ("event", "body", "message"),
    [
        ("push", b"not json", "not JSON"),
        ("push", b"[1, 2]", "not a JSON object"),
        ("push", b'{"ref": "refs/heads/main"}', "needs 'ref' and 'after'"),
        ("workflow_run", b'{"action": "completed"}', "not a workflow_run event"),
        ("workflow_job", b'{"workflow_job": {"id": "x"}}', "not a workflow_job event"),
    ],
)
def test_a_signed_body_that_is_not_its_event(event: str, body: bytes, message: str) -> None:
    headers = {"X-Gitea-Event": event, "X-Gitea-Signature": sign_body(SECRET, body)}
    with pytest.raises(MalformedGiteaEvent, match=message) as caught:
        read_delivery(headers, body, SECRET)
    assert caught.value.http_status == 400
