"""``diskci authority serve``: the signing authority over HTTP, so signers never hold CA keys.

Public API: ``create_app(directory) -> FastAPI`` and ``AuthorityClient(url, token)`` (a
``SigningBackend`` for ``sign_publication``).

Endpoints (every request but the trusted root carries ``Authorization: Bearer <signer credential>``,
made by ``diskci authority issue``; the credential fixes the issuer and an allowed identity prefix):

- ``POST /api/v2/signingCert`` (Fulcio-like): ``{identity, publicKey (PEM), proofOfPossession
  (base64 ECDSA-SHA256 signature of the identity by that key)}`` → ``{"signedCertificateEmbeddedSct":
  {"chain": {"certificates": [leaf, intermediate, root] (PEM)}}}``
- ``POST /api/v1/log/entries`` (Rekor-like): ``{envelope (DSSE JSON), certificate (PEM)}`` →
  ``{"entry": <TransparencyLogEntry JSON, as in a bundle>}``
- ``GET /api/v1/log``: tree size and root hash; ``GET /api/v1/trusted_root``: trusted_root.json.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from diskci.errors import DiskciError, Forbidden, InvalidRequest, SupplyChainError, Unauthorized
from diskci.supplychain.authority import AuthorityError, Credential, SigningAuthority
from diskci.supplychain.tlog import LogEntry


class CertificateRequest(BaseModel):
    identity: str
    publicKey: str
    proofOfPossession: str


class LogRequest(BaseModel):
    envelope: dict[str, Any]
    certificate: str


def create_app(directory: Path) -> FastAPI:
    """The FastAPI app serving the authority in ``directory``."""
    authority = SigningAuthority.open(directory)
    app = FastAPI(title="diskci signing authority", version="1")

    @app.exception_handler(DiskciError)
    async def _error(_request: Request, exc: DiskciError) -> JSONResponse:
        status = getattr(exc, "http_status", 400 if isinstance(exc, SupplyChainError) else 500)
        return JSONResponse({"error": type(exc).__name__, "detail": exc.message}, status_code=status)

    def credential(authorization: Annotated[str | None, Header()] = None) -> Credential:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("missing signer credential (Authorization: Bearer ...)")
        return authority.check_credential(authorization.removeprefix("Bearer ").strip())

    @app.get("/api/v1/trusted_root")
    def trusted_root() -> dict[str, Any]:
        return authority.trusted_root()

    @app.get("/api/v1/log")
    def log_info() -> dict[str, Any]:
        return {"treeSize": authority.log.size, "rootHash": authority.log.root_hash().hex()}

    @app.post("/api/v2/signingCert")
    def signing_cert(req: CertificateRequest, cred: Credential = Depends(credential)) -> dict[str, Any]:
        if cred.identity_prefix and not req.identity.startswith(cred.identity_prefix):
            raise Forbidden(f"signer {cred.signer} may not sign as {req.identity!r}")
        try:
            key = serialization.load_pem_public_key(req.publicKey.encode())
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise InvalidRequest("publicKey must be an EC P-256 key")
            key.verify(
                base64.b64decode(req.proofOfPossession), req.identity.encode(), ec.ECDSA(hashes.SHA256())
            )
        except (ValueError, InvalidSignature) as exc:
            raise InvalidRequest(f"bad public key or proof of possession: {exc}") from None
        leaf = authority.issue_certificate(key, identity=req.identity, issuer=cred.issuer)
        pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in [leaf, *authority.chain()]]
        return {"signedCertificateEmbeddedSct": {"chain": {"certificates": pems}}}

    @app.post("/api/v1/log/entries", status_code=201)
    def log_entry(req: LogRequest, cred: Credential = Depends(credential)) -> dict[str, Any]:
        try:
            cert = x509.load_pem_x509_certificate(req.certificate.encode())
        except ValueError as exc:
            raise InvalidRequest(f"certificate is not PEM: {exc}") from None
        return {"entry": authority.log_dsse(req.envelope, cert).to_bundle_json()}

    return app


class AuthorityClient:
    """``SigningBackend`` talking to ``diskci authority serve`` with a signer credential."""

    def __init__(
        self, url: str, token: str, *, timeout: float = 30.0, client: httpx.Client | None = None
    ) -> None:
        """``client``: an httpx client to send through (e.g. a TestClient of ``create_app``)."""
        self.url = url.rstrip("/")
        self._client = client or httpx.Client(base_url=self.url, timeout=timeout)
        self._client.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._client.post(path, json=body)
        except httpx.TransportError as exc:
            raise AuthorityError(f"cannot reach the signing authority at {self.url}: {exc}") from None
        if resp.status_code == 401:
            raise Unauthorized(f"{self.url}: {resp.json().get('detail', resp.text)}")
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise AuthorityError(f"{self.url}{path}: HTTP {resp.status_code}: {detail}")
        data: dict[str, Any] = resp.json()
        return data

    def issue_certificate(
        self, key: ec.EllipticCurvePrivateKey, *, identity: str, issuer: str | None = None
    ) -> x509.Certificate:
        """A leaf for ``identity``; the issuer is the one the signer credential is bound to."""
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        proof = key.sign(identity.encode(), ec.ECDSA(hashes.SHA256()))
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
