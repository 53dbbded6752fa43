"""``diskci authority serve``: the signing authority as a small Sigstore instance (Fulcio + Rekor v1).

Public API: ``create_app(directory, oidc_issuers=[...], audience="sigstore") -> FastAPI``. The
standard clients (sigstore-python's signer, cosign) sign against it with a signing configuration
naming its URL as both the CA and the transparency log (``sigstore_signer.trust_config_for``).

Fulcio (https://github.com/sigstore/fulcio/blob/main/fulcio.proto, HTTP form):

- ``POST /api/v2/signingCert``: the ID token (``Authorization: Bearer`` or ``credentials.
  oidcIdentityToken``) and either ``certificateSigningRequest`` (base64 PEM CSR, self-signed: its
  signature is the proof of possession) or ``publicKeyRequest {publicKey {content: PEM},
  proofOfPossession}`` (a signature of the token's ``sub``). Only a token of a configured issuer for
  the audience, unexpired, signed by a key of the issuer's JWKS is accepted; the certificate's SAN is
  ``<iss>/<workflow_ref>`` and its Fulcio extensions the token's claims (``fulcio_claims``); 10
  minutes. → ``{"signedCertificateEmbeddedSct": {"chain": {"certificates": [PEM leaf, chain...]}}}``
- ``GET /api/v2/trustBundle`` → ``{"chains": [{"certificates": [...]}]}``; ``GET
  /api/v2/configuration`` → the issuers it trusts.
- Errors as grpc-gateway gives them: ``{"code": <gRPC code>, "message", "details": []}`` with 400
  (bad request, unsupported key), 401 (token refused), 503 (issuer keys unreachable).

Rekor v1 (https://github.com/sigstore/rekor/blob/main/openapi.yaml):

- ``POST /api/v1/log/entries`` (dsse, hashedrekord 0.0.1; ``rekor_entries``) → 201 ``{uuid:
  LogEntry}`` with its inclusion proof, checkpoint and SET; a duplicate → 409 with the existing
  entry's ``Location``; malformed → 400; over ``MAX_ENTRY_BYTES`` → 413. Errors ``{"code", "message"}``.
- ``GET /api/v1/log`` (tree size, root, signed tree head), ``GET /api/v1/log/entries/{uuid}``,
  ``GET /api/v1/log/entries?logIndex=N``, ``GET /api/v1/log/proof?firstSize=&lastSize=``.

Also ``GET /api/v1/trusted_root``: what verifiers must trust (``trusted_root.json``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from diskci.errors import DiskciError, InvalidRequest, NotFound, SupplyChainError
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.fulcio_claims import ci_extensions
from diskci.supplychain.id_token import IdTokenRefused, IdTokenVerifier
from diskci.supplychain.rekor_entries import MAX_ENTRY_BYTES, entry_response
from diskci.supplychain.tlog import DuplicateEntry

__all__ = ["DEFAULT_AUDIENCE", "create_app"]

DEFAULT_AUDIENCE = "sigstore"
MAX_CERT_REQUEST_BYTES = 64 * 1024
_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 413: 3, 503: 14}


class EntityTooLarge(InvalidRequest):
    http_status = 413


def _status(exc: DiskciError) -> int:
    return int(getattr(exc, "http_status", 400 if isinstance(exc, SupplyChainError) else 500))


def _fulcio_error(exc: DiskciError) -> JSONResponse:
    status = _status(exc)
    return JSONResponse({"code": _GRPC.get(status, 2), "message": exc.message, "details": []}, status)


def _rekor_error(exc: DiskciError) -> JSONResponse:
    status = _status(exc)
    headers = {}
    if isinstance(exc, DuplicateEntry):
        headers["Location"] = f"/api/v1/log/entries/{exc.leaf.hex()}"
    return JSONResponse({"code": status, "message": exc.message}, status, headers=headers)


async def _json_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise EntityTooLarge(f"the request is over {limit} bytes")
    raw = await request.body()
    if len(raw) > limit:
        raise EntityTooLarge(f"the request is over {limit} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not JSON: {exc}") from None


def _p256(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidRequest("unsupported key type: only ECDSA P-256 keys are certified here")
    return key


def _requested_key(body: Any, subject: str) -> ec.EllipticCurvePublicKey:
    """The key to certify, once its holder proved possession (a self-signed CSR, or a signature of
    the token's subject)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request must be a JSON object")
    if "certificateSigningRequest" in body:
        try:
            csr = x509.load_pem_x509_csr(base64.b64decode(str(body["certificateSigningRequest"])))
        except ValueError as exc:
            raise InvalidRequest(f"certificateSigningRequest is not a base64 PEM CSR: {exc}") from None
        key = _p256(csr.public_key())
        if not csr.is_signature_valid:
            raise InvalidRequest("the CSR's signature (the proof of possession) does not verify")
        return key
    request = body.get("publicKeyRequest")
    if not isinstance(request, dict):
        raise InvalidRequest("send certificateSigningRequest or publicKeyRequest")
    try:
        pem = str(request["publicKey"]["content"])
        loaded = serialization.load_pem_public_key(pem.encode())
        proof = base64.b64decode(str(request["proofOfPossession"]), validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"publicKeyRequest needs publicKey.content (PEM) and proofOfPossession: {exc}"
        ) from None
    key = _p256(loaded)
    try:
        key.verify(proof, subject.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise InvalidRequest(
            "the proof of possession does not verify: it must be this key's signature of the token's sub"
        ) from None
    return key


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
    app = FastAPI(title="diskci signing authority (Fulcio + Rekor APIs)", version="2")

    @app.exception_handler(DiskciError)
    async def _error(request: Request, exc: DiskciError) -> JSONResponse:
        if request.url.path.startswith("/api/v2/"):
            return _fulcio_error(exc)
        return _rekor_error(exc)

    def pem(cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    # --- Fulcio --------------------------------------------------------------------------------
    @app.post("/api/v2/signingCert")
    async def signing_cert(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        body = await _json_body(request, MAX_CERT_REQUEST_BYTES)
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token and isinstance(body, dict):
            token = str((body.get("credentials") or {}).get("oidcIdentityToken") or "")
        if not token:
            raise IdTokenRefused("missing ID token: send Authorization: Bearer <the CI job's OIDC ID token>")
        # 1. the token: a trusted issuer's, for the audience, unexpired, signed by its JWKS' key
        # (on the event loop when its keys are cached: CPU only; off it when they must be fetched)
        who = tokens.verify_cached(token)
        if who is None:
            who = await run_in_threadpool(tokens.verify, token)
        # 2. the key, and its holder's proof of possession
        key = _requested_key(body, who.subject)
        # 3. a short-lived certificate naming the token's identity, issuer and CI claims
        leaf = authority.issue_certificate(
            key, identity=who.identity, issuer=who.issuer, extensions=ci_extensions(who.claims)
        )
        chain = {"certificates": [pem(leaf), *map(pem, authority.chain())]}
        return JSONResponse({"signedCertificateEmbeddedSct": {"chain": chain}})

    @app.get("/api/v2/trustBundle")
    def trust_bundle() -> dict[str, Any]:
        return {"chains": [{"certificates": [pem(c) for c in authority.chain()]}]}

    @app.get("/api/v2/configuration")
    def configuration() -> dict[str, Any]:
        issuers = [
            {"issuerUrl": url, "audience": tokens.audience, "challengeClaim": "sub", "spiffeTrustDomain": ""}
            for url in tokens.issuers
        ]
        return {"issuers": issuers}

    # --- Rekor ---------------------------------------------------------------------------------
    def by_index(index: int) -> dict[str, Any]:
        if not 0 <= index < authority.log.size:
            raise NotFound(f"no entry with logIndex {index} (the log has {authority.log.size})")
        return entry_response(authority.log.entry(index), authority.tree_id)

    @app.post("/api/v1/log/entries", status_code=201)
    async def create_entry(request: Request) -> JSONResponse:
        proposed = await _json_body(request, MAX_ENTRY_BYTES)
        entry = await run_in_threadpool(authority.log_proposed, proposed)
        data = entry_response(entry, authority.tree_id)
        [uuid] = data
        return JSONResponse(data, 201, headers={"Location": f"/api/v1/log/entries/{uuid}"})

    @app.get("/api/v1/log/entries")
    def entry_by_index(log_index: Annotated[int, Query(alias="logIndex", ge=0)]) -> dict[str, Any]:
        return by_index(log_index)

    @app.get("/api/v1/log/entries/{uuid}")
    def entry_by_uuid(uuid: str) -> dict[str, Any]:
        text = uuid.lower()
        if len(text) == 80:
            if text[:16] != f"{int(authority.tree_id):016x}":
                raise NotFound(f"entry {uuid} is of another tree than {authority.tree_id}")
            text = text[16:]
        try:
            leaf = bytes.fromhex(text)
        except ValueError:
            leaf = b""
        if len(leaf) != 32:
            raise InvalidRequest(f"{uuid!r} is not an entry UUID (64 or 80 hex digits)")
        index = authority.log.find(leaf)
        if index is None:
            raise NotFound(f"no entry with UUID {uuid}")
        return by_index(index)

    @app.get("/api/v1/log")
    def log_info() -> dict[str, Any]:
        size, root, checkpoint = authority.log.tree_head()
        return {
            "treeSize": size,
            "rootHash": root.hex(),
            "signedTreeHead": checkpoint,
            "treeID": authority.tree_id,
            "inactiveShards": [],
        }

    @app.get("/api/v1/log/proof")
    def consistency_proof(
        last_size: Annotated[int, Query(alias="lastSize", ge=1)],
        first_size: Annotated[int, Query(alias="firstSize", ge=1)] = 1,
    ) -> dict[str, Any]:
        if first_size > last_size:
            raise InvalidRequest(f"firstSize {first_size} is over lastSize {last_size}")
        if last_size > authority.log.size:
            raise InvalidRequest(f"lastSize {last_size} is over the tree size {authority.log.size}")
        _size, root, path = authority.log.consistency(first_size, last_size)
        return {"rootHash": root.hex(), "hashes": [h.hex() for h in path]}

    @app.get("/api/v1/trusted_root")
    def trusted_root() -> dict[str, Any]:
        return authority.trusted_root()

    return app
