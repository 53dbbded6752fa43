"""The platform's OIDC provider routes for CI jobs: discovery, the JWKS, and the ID-token endpoint.

- ``GET /.well-known/openid-configuration``: issuer (the platform's ``ci_base_url``), ``jwks_uri``,
  the algorithms, subject and response types and claims supported.
- ``GET /.well-known/jwks``: the JWK Set of the keys ID tokens are signed with (``platform.ci.oidc``).
- ``GET /api/actions/id-token?audience=X`` with ``Authorization: Bearer <runtime token>`` (what a job's
  ``ACTIONS_ID_TOKEN_REQUEST_URL`` and ``ACTIONS_ID_TOKEN_REQUEST_TOKEN`` name, as on GitHub Actions):
  ``{"value": "<JWT>", "count": 1}`` while the job is in progress, else 401. Without ``audience`` the
  token's audience is the issuer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse

from diskci.platform.ci import oidc
from diskci.platform.db.session import Database
from diskci.platform.secrets import SecretBox
from diskci.platform.settings import PlatformSettings

__all__ = ["CONFIGURATION_PATH", "ID_TOKEN_PATH", "JWKS_PATH", "router"]

CONFIGURATION_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks"
ID_TOKEN_PATH = "/api/actions/id-token"
# discovery documents and keys change rarely; verifiers may keep them a few minutes
_CACHE = {"Cache-Control": "public, max-age=300"}

router = APIRouter(include_in_schema=False)


@router.get(CONFIGURATION_PATH)
def openid_configuration(request: Request) -> JSONResponse:
    issuer: str = request.app.state.settings.ci_base_url
    document: dict[str, Any] = {
        "issuer": issuer,
        "jwks_uri": issuer + JWKS_PATH,
        "id_token_signing_alg_values_supported": [oidc.ALGORITHM],
        "subject_types_supported": ["public"],
        "response_types_supported": ["id_token"],
        "scopes_supported": ["openid"],
        "claims_supported": list(oidc.CLAIMS),
    }
    return JSONResponse(document, headers=_CACHE)


@router.get(JWKS_PATH)
def jwks(request: Request) -> JSONResponse:
    database: Database = request.app.state.database
    with database.read_session() as session:
        keys = oidc.jwks(session)
    return JSONResponse(keys, headers=_CACHE)


@router.get(ID_TOKEN_PATH)
def id_token(
    request: Request,
    audience: Annotated[str | None, Query(max_length=oidc.MAX_AUDIENCE)] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    settings: PlatformSettings = request.app.state.settings
    database: Database = request.app.state.database
    scheme, _, runtime_token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not runtime_token.strip():
        raise oidc.RuntimeTokenRefused(
            "missing runtime token: send Authorization: Bearer <ACTIONS_ID_TOKEN_REQUEST_TOKEN>"
        )
    issuer = settings.ci_base_url
    wanted = oidc.check_audience(issuer if audience is None else audience)
    box = SecretBox(key=settings.resolve_secret_key())
    with database.session() as session:
        job = oidc.job_for_runtime_token(session, runtime_token.strip())
        token = oidc.mint_id_token(session, job, audience=wanted, issuer=issuer, box=box)
    return JSONResponse({"value": token, "count": 1}, headers={"Cache-Control": "no-store"})
