"""The platform as its CI jobs' OIDC provider, over HTTP: discovery and the JWKS, a task's runtime token
buying ID tokens at /api/actions/id-token while its job runs (as GitHub Actions serves them), and every
bad request refused with a clear error."""

from __future__ import annotations

from typing import Any

import jwt

from diskci.platform.ci import oidc, runners, scheduler
from diskci.platform.db.models import CiJob
from diskci.platform.db.session import Database
from diskci.supplychain.id_token import IdTokenVerifier
from oidc_helpers import platform_row, start_job

BASE = "http://127.0.0.1:8480"  # the test settings' public_base_url


def _ask(client: Any, token: str | None, audience: str | None = "sigstore") -> Any:
    params = {} if audience is None else {"audience": audience}
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return client.get("/api/actions/id-token", params=params, headers=headers)


def test_discovery_names_the_issuer_and_its_keys(platform_client: Any, platform_db: Database) -> None:
    config = platform_client.get("/.well-known/openid-configuration").json()
    assert config["issuer"] == BASE and config["jwks_uri"] == f"{BASE}/.well-known/jwks"
    assert config["id_token_signing_alg_values_supported"] == ["ES256"]
    assert {"public"} == set(config["subject_types_supported"])
    assert {"workflow_ref", "repository", "runner", "sha"} <= set(config["claims_supported"])
    assert platform_client.get("/.well-known/jwks").json() == {"keys": []}  # none made before a token


def test_a_running_job_gets_id_tokens_that_the_authority_accepts(
    platform_client: Any, platform_db: Database
) -> None:
    job_id, runtime = start_job(platform_db, platform_row(platform_db, "debian-12"))
    r = _ask(platform_client, runtime)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.json()["count"] == 1
    token = r.json()["value"]
    verifier = IdTokenVerifier([BASE], client=platform_client)  # discovery and JWKS through the app
    who = verifier.verify(token)
    assert who.identity == f"{BASE}/debian-12/.gitea/workflows/build.yaml@refs/tags/v0.3.0"
    assert who.issuer == BASE and who.claims["aud"] == "sigstore"
    # without an audience, the token is for the issuer (as GitHub defaults to its own URL)
    plain = _ask(platform_client, runtime, audience=None).json()["value"]
    assert jwt.decode(plain, options={"verify_signature": False})["aud"] == BASE
    # once the job ended, the same runtime token buys nothing
    with platform_db.session() as session:
        job = session.get(CiJob, job_id)
        assert job is not None
        scheduler.record_state(session, job, conclusion="failure")
    r = _ask(platform_client, runtime)
    assert r.status_code == 401 and r.json() == {
        "error": "RuntimeTokenRefused",
        "detail": "unknown runtime token, or its job is no longer in progress",
    }


def test_bad_requests_are_refused_clearly(platform_client: Any, platform_db: Database) -> None:
    _, runtime = start_job(platform_db, platform_row(platform_db))
    r = _ask(platform_client, None)
    assert r.status_code == 401 and "missing runtime token" in r.json()["detail"]
    r = platform_client.get("/api/actions/id-token", headers={"Authorization": f"Basic {runtime}"})
    assert r.status_code == 401
    assert _ask(platform_client, "not-a-runtime-token").status_code == 401
    r = _ask(platform_client, runtime, audience="x" * 300)
    assert r.status_code == 400 and r.json()["error"] == "InvalidRequest"
    r = _ask(platform_client, runtime, audience="two words")
    assert r.status_code == 400 and r.json()["error"] == "InvalidAudience"
    assert platform_client.get("/.well-known/jwks").json() == {"keys": []}  # nothing was minted


def test_fetch_task_hands_the_job_its_runtime_token(platform_client: Any, platform_db: Database) -> None:
    from diskci.ci.workflow import render, workflow
    from diskci.platform.db.models import NodePlatform
    from diskci.spec import load_spec
    from oidc_helpers import ROOT, SHA

    platform_id = platform_row(platform_db)
    text = render(workflow(load_spec(ROOT / "platforms/debian-12-amd64.yaml"), "platforms/x.yaml"))
    with platform_db.session() as session:
        platform = session.get(NodePlatform, platform_id)
        assert platform is not None
        scheduler.create_run(session, platform, text, ref="refs/tags/v1", sha=SHA)
        registration = runners.new_registration_token(session, labels=["amd64:host"])
    service = "/api/actions/runner.v1.RunnerService"
    r = platform_client.post(
        f"{service}/Register", json={"name": "w", "token": registration, "version": "v0.2.11", "labels": []}
    )
    runner = r.json()["runner"]
    headers = {"x-runner-uuid": runner["uuid"], "x-runner-token": runner["token"]}
    task = platform_client.post(f"{service}/FetchTask", json={"tasksVersion": "0"}, headers=headers).json()[
        "task"
    ]
    runtime = task["context"]["token"]
    assert runtime
    with platform_db.read_session() as session:
        assert oidc.job_for_runtime_token(session, runtime).id == int(task["id"])
    claims = jwt.decode(_ask(platform_client, runtime).json()["value"], options={"verify_signature": False})
    assert (claims["runner"], claims["ref"], claims["sha"]) == ("w", "refs/tags/v1", SHA)
