"""Test helpers for CI jobs' OIDC ID tokens: a job in progress with its runtime token, in a platform
database, and a stand-in OIDC issuer (its discovery document and JWK Set behind an httpx mock transport)
that mints tokens with any claims, key or algorithm a test wants."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from diskci.ci.workflow import WORKFLOW_PATH, render, workflow
from diskci.platform.ci import oidc, runners, scheduler
from diskci.platform.db.models import NodePlatform
from diskci.platform.db.session import Database
from diskci.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"
REF = "refs/tags/v0.3.0"


def platform_row(db: Database, name: str = "debian-12", **fields: Any) -> int:
    """A NodePlatform named ``name`` (the ``repository`` its jobs' tokens carry)."""
    values: dict[str, Any] = {
        "architectures": ["amd64"],
        "registry_repository": f"127.0.0.1:5000/ops/disk-images/{name}",
        "cosign_identity_regexp": ".*",
        "cosign_oidc_issuer": "https://ci.example",
        **fields,
    }
    with db.session() as session:
        platform = NodePlatform(name=name, **values)
        session.add(platform)
        session.flush()
        return platform.id


def start_job(
    db: Database, platform_id: int, *, ref: str = REF, runner_name: str = "worker-1"
) -> tuple[int, str]:
    """A run of the build workflow at ``ref`` whose first job a new runner took: (job id, runtime token)."""
    spec = load_spec(ROOT / "platforms/debian-12-amd64.yaml")
    text = render(workflow(spec, "platforms/debian-12-amd64.yaml"))
    with db.session() as session:
        platform = session.get(NodePlatform, platform_id)
        assert platform is not None
        scheduler.create_run(session, platform, text, ref=ref, sha=SHA)
        registration = runners.new_registration_token(session, labels=["amd64:host"])
    with db.session() as session:
        runner, _ = runners.register(
            session, registration_token=registration, name=runner_name, labels=[], version="test"
        )
        job = scheduler.claim_job(session, runner)
        assert job is not None
        return job.id, oidc.issue_runtime_token(session, job)


def workflow_identity(issuer: str, repository: str, ref: str = REF) -> str:
    return f"{issuer}/{repository}/{WORKFLOW_PATH}@{ref}"


class FakeIssuer:
    """An OIDC issuer at ``url``: ``/.well-known/openid-configuration`` and its JWK Set, served through
    ``transport``; ``fetches`` counts the JWK Set downloads."""

    def __init__(self, url: str = "https://ci.example") -> None:
        self.url = url
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {"k1": ec.generate_private_key(ec.SECP256R1())}
        self.fetches = 0
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == f"{self.url}/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": self.url, "jwks_uri": f"{self.url}/jwks"})
        if str(request.url) == f"{self.url}/jwks":
            self.fetches += 1
            return httpx.Response(200, content=json.dumps(self.jwks()).encode())
        return httpx.Response(404)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.keys.items():
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
        return {"keys": keys}

    def client(self) -> httpx.Client:
        return httpx.Client(transport=self.transport)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": f"repo:debian-12:ref:{REF}",
            "aud": "sigstore",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "j1",
            "repository": "debian-12",
            "ref": REF,
            "sha": SHA,
            "workflow_ref": f"debian-12/{WORKFLOW_PATH}@{REF}",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        *,
        kid: str = "k1",
        key: ec.EllipticCurvePrivateKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        signer = key or self.keys[kid]
        return jwt.encode(
            self.claims(**claims), signer, algorithm="ES256", headers={"kid": kid, **(headers or {})}
        )
