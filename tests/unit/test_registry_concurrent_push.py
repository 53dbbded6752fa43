"""While another pusher links the same blob, docker-registry can answer a HEAD of it 500 and refuse a
manifest naming it (MANIFEST_BLOB_UNKNOWN) for a moment (it rewrites the link in place): the client
asks again; any other refusal, or one that persists, is a ``RegistryError`` naming the registry's codes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from diskci import mediatypes as mt
from diskci.errors import RegistryError
from diskci.registry import remote
from diskci.registry.reference import Reference
from diskci.registry.remote import RemoteRegistry
from diskci.registry.store import sha256_digest

MANIFEST = b'{"schemaVersion":2}'


def answer(
    status: int, errors: list[dict[str, str]] | None = None, digest: str | None = None
) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = json.dumps({"errors": errors}).encode() if errors is not None else b""
    if digest:
        resp.headers["Docker-Content-Digest"] = digest
    return resp


BLOB_UNKNOWN = [
    {"code": "DIGEST_INVALID", "message": "provided digest did not match uploaded content"},
    {"code": "MANIFEST_BLOB_UNKNOWN", "message": "blob unknown to registry"},
]


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> tuple[RemoteRegistry, list[requests.Response], list[str]]:
    monkeypatch.setattr(remote, "retrying", lambda attempts, first_delay: iter(range(attempts)))
    reg = RemoteRegistry(Reference.parse("127.0.0.1:5000/ops/img:1"), insecure=True)
    answers: list[requests.Response] = []
    sent: list[str] = []

    def request(method: str, url: str, **_kw: Any) -> requests.Response:
        sent.append(f"{method} {url}")
        return answers.pop(0)

    monkeypatch.setattr(reg, "_send", request)
    return reg, answers, sent


def test_blob_unknown_then_stored(client: tuple[RemoteRegistry, list[requests.Response], list[str]]) -> None:
    reg, answers, sent = client
    digest = sha256_digest(MANIFEST)
    answers += [answer(400, BLOB_UNKNOWN), answer(400, BLOB_UNKNOWN), answer(201, digest=digest)]
    assert reg.push_manifest(MANIFEST, mt.OCI_MANIFEST, tag="1") == digest
    assert sent == ["PUT /manifests/1"] * 3


def test_blob_unknown_that_persists_is_refused(
    client: tuple[RemoteRegistry, list[requests.Response], list[str]],
) -> None:
    reg, answers, sent = client
    answers += [answer(400, BLOB_UNKNOWN) for _ in range(remote._ATTEMPTS)]
    with pytest.raises(RegistryError, match=r"answered 400: DIGEST_INVALID: .*MANIFEST_BLOB_UNKNOWN"):
        reg.push_manifest(MANIFEST, mt.OCI_MANIFEST)
    assert len(sent) == remote._ATTEMPTS


@pytest.mark.parametrize(
    "refusal",
    [
        answer(400, [{"code": "MANIFEST_INVALID", "message": "manifest invalid"}]),
        answer(401, [{"code": "UNAUTHORIZED", "message": "authentication required"}]),
        answer(400),  # not a distribution error body
    ],
)
def test_other_refusals_are_not_asked_again(
    client: tuple[RemoteRegistry, list[requests.Response], list[str]], refusal: requests.Response
) -> None:
    reg, answers, sent = client
    answers.append(refusal)
    with pytest.raises(RegistryError, match=f"answered {refusal.status_code}"):
        reg.push_manifest(MANIFEST, mt.OCI_MANIFEST)
    assert len(sent) == 1


def test_blob_head_failing_for_a_moment(
    client: tuple[RemoteRegistry, list[requests.Response], list[str]],
) -> None:
    reg, answers, sent = client
    answers += [answer(500), answer(200)]
    assert reg.has_blob("sha256:" + "0" * 64)
    answers += [answer(500) for _ in range(remote._ATTEMPTS)]
    with pytest.raises(RegistryError, match=r"HEAD blob sha256:0+: registry 127\.0\.0\.1:5000 answered 500"):
        reg.has_blob("sha256:" + "0" * 64)
    assert len(sent) == 2 + remote._ATTEMPTS
