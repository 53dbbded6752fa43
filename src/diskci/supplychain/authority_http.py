"""``diskci authority serve``: the signing authority over HTTP, so signers never hold CA keys.

Public API: ``create_app(directory, oidc_issuers=[...], audience="sigstore") -> FastAPI`` and
``AuthorityClient(url, id_token)`` (a ``SigningBackend`` for ``sign_publication``).

A certificate is issued only for a CI job's OIDC ID token (``Authorization: Bearer <ID token>``) from
one of the trusted issuers, for the audience (``supplychain.id_token``): its identity is the token's
``<iss>/<workflow_ref>`` and its issuer the token's ``iss``, so a caller cannot choose whom it signs
as. Endpoints (every request but the trusted root and the log's state carries the token):

- ``POST /api/v2/signingCert`` (Fulcio-like): ``{publicKey (PEM), proofOfPossession (base64
  ECDSA-SHA256 signature of the token's ``sub`` claim by that key, as Fulcio asks), identity
  (optional: refused unless it is the token's)}`` → ``{"signedCertificateEmbeddedSct": {"chain":
  {"certificates": [leaf, intermediate, root] (PEM)}}}``
- ``POST /api/v1/log/entries`` (Rekor-like): ``{envelope (DSSE JSON), certificate (PEM)}`` →
  ``{"entry": <TransparencyLogEntry JSON, as in a bundle>}``
- ``GET /api/v1/log``: tree size and root hash; ``GET /api/v1/trusted_root``: trusted_root.json.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from diskci.errors import DiskciError, Forbidden, InvalidRequest, SupplyChainError, Unauthorized
from diskci.supplychain.authority import AuthorityError, SigningAuthority
from diskci.supplychain.id_token import IdTokenRefused, IdTokenVerifier, JobIdentity, unverified_claims
from diskci.supplychain.id_token import identity_of as token_identity
from diskci.supplychain.tlog import LogEntry

DEFAULT_AUDIENCE = "sigstore"


class CertificateRequest(BaseModel):
    publicKey: str = Field(max_length=8192)
    proofOfPossession: str = Field(max_length=1024)
    identity: str | None = Field(default=None, max_length=2048)


class LogRequest(BaseModel):
    envelope: dict[str, Any]
    certificate: str


def create_app(
    directory: Path,
    *,
    oidc_issuers: Sequence[str] = (),
    audience: str = DEFAULT_AUDIENCE,
    verifier: IdTokenVerifier | None = None,
) -> FastAPI:
    """The FastAPI app serving the authority in ``directory`` to CI jobs of the ``oidc_issuers``.

    ``verifier``: a ready ``IdTokenVerifier`` instead (tests hand one fetching through a TestClient).
    """
    authority = SigningAuthority.open(directory)
    tokens = verifier or IdTokenVerifier(oidc_issuers, audience=audience)
    app = FastAPI(title="diskci signing authority", version="1")

    @app.exception_handler(DiskciError)
    async def _error(_request: Request, exc: DiskciError) -> JSONResponse:
        status = getattr(exc, "http_status", 400 if isinstance(exc, SupplyChainError) else 500)
        return JSONResponse({"error": type(exc).__name__, "detail": exc.message}, status_code=status)

    async def job(authorization: Annotated[str | None, Header()] = None) -> JobIdentity:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise IdTokenRefused("missing ID token: send Authorization: Bearer <the CI job's OIDC ID token>")
        return await run_in_threadpool(tokens.verify, token.strip())  # may fetch the issuer's keys

    @app.get("/api/v1/trusted_root")
    def trusted_root() -> dict[str, Any]:
        return authority.trusted_root()

    @app.get("/api/v1/log")
    def log_info() -> dict[str, Any]:
        return {"treeSize": authority.log.size, "rootHash": authority.log.root_hash().hex()}

    @app.post("/api/v2/signingCert")
    def signing_cert(req: CertificateRequest, who: JobIdentity = Depends(job)) -> dict[str, Any]:
        if req.identity is not None and req.identity != who.identity:
            raise Forbidden(
                f"the ID token's identity is {who.identity!r}: it cannot sign as {req.identity!r}"
            )
        try:
            key = serialization.load_pem_public_key(req.publicKey.encode())
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise InvalidRequest("publicKey must be an EC P-256 key")
            key.verify(
                base64.b64decode(req.proofOfPossession), who.subject.encode(), ec.ECDSA(hashes.SHA256())
            )
        except (ValueError, InvalidSignature) as exc:
            raise InvalidRequest(
                f"bad public key or proof of possession (a signature of the token's sub claim): {exc}"
            ) from None
        leaf = authority.issue_certificate(key, identity=who.identity, issuer=who.issuer)
        pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in [leaf, *authority.chain()]]
        return {"signedCertificateEmbeddedSct": {"chain": {"certificates": pems}}}

    @app.post("/api/v1/log/entries", status_code=201)
    def log_entry(req: LogRequest, _who: JobIdentity = Depends(job)) -> dict[str, Any]:
        try:
            cert = x509.load_pem_x509_certificate(req.certificate.encode())
        except ValueError as exc:
            raise InvalidRequest(f"certificate is not PEM: {exc}") from None
        return {"entry": authority.log_dsse(req.envelope, cert).to_bundle_json()}

    return app


class AuthorityClient:
    """``SigningBackend`` talking to ``diskci authority serve`` with a CI job's OIDC ID token.

    ``identity`` is what the certificates will name: the token's ``<iss>/<workflow_ref>`` (read from
    the token here, checked by the authority)."""

    def __init__(
        self, url: str, id_token: str, *, timeout: float = 30.0, client: httpx.Client | None = None
    ) -> None:
        """``client``: an httpx client to send through (e.g. a TestClient of ``create_app``)."""
        self.url = url.rstrip("/")
        claims = unverified_claims(id_token)
        self.identity = token_identity(claims)
        self.issuer = str(claims.get("iss", ""))
        self._subject = str(claims.get("sub", ""))
        self._client = client or httpx.Client(base_url=self.url, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {id_token}"}  # per request: a given client stays as it is

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._client.post(path, json=body, headers=self._headers)
        except httpx.TransportError as exc:
            raise AuthorityError(f"cannot reach the signing authority at {self.url}: {exc}") from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            if resp.status_code == 401:
                raise Unauthorized(f"{self.url} refused the ID token: {detail}")
            raise AuthorityError(f"{self.url}{path}: HTTP {resp.status_code}: {detail}")
        data: dict[str, Any] = resp.json()
        return data

    def issue_certificate(
        self, key: ec.EllipticCurvePrivateKey, *, identity: str, issuer: str | None = None
    ) -> x509.Certificate:
        """A leaf for the token's identity (``identity`` must be it) and the token's issuer."""
        if identity != self.identity:
            raise AuthorityError(
                f"the ID token signs as {self.identity!r}, not {identity!r}",
                hint="the certificate's identity is the CI job's: drop --identity or give that one",
            )
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        proof = key.sign(self._subject.encode(), ec.ECDSA(hashes.SHA256()))
        data = self._post(
            "/api/v2/signingCert",
            {
                "identity": identity,
                "publicKey": pem.decode(),
                "proofOfPossession": base64.b64encode(proof).decode(),
            },
        )
        leaf_pem = data["signedCertificateEmbeddedSct"]["chain"]["certificates"][0]
        return x509.load_pem_x509_certificate(leaf_pem.encode())

    def log_dsse(self, envelope: dict[str, Any], certificate: x509.Certificate) -> LogEntry:
        data = self._post(
            "/api/v1/log/entries",
            {
                "envelope": envelope,
                "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
            },
        )
        return LogEntry.from_bundle_json(data["entry"])
