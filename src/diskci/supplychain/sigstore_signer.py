"""Sign through sigstore-python's own signer against a Sigstore instance's Fulcio and Rekor.

Public API: ``trust_config_for(url) -> ClientTrustConfig`` (the embedded authority served at
``url``: its trusted root, and a signing configuration naming ``url`` as the CA and the log),
``SigstoreSigner(trust_config, id_token)`` (a ``bundle.StatementSigner``). With public Sigstore's
configuration (``ClientTrustConfig.production()``) and an ambient OIDC token the same code signs
against the public instance: only the configuration differs.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import requests
from sigstore import dsse
from sigstore.models import ClientTrustConfig
from sigstore.oidc import IdentityError, IdentityToken
from sigstore.sign import SigningContext

from diskci.canonical import canonical_json
from diskci.errors import Unauthorized
from diskci.supplychain.authority import AuthorityError
from diskci.supplychain.id_token import identity_of, unverified_claims
from diskci.supplychain.policy import certificate_identities

__all__ = ["SigstoreSigner", "trust_config_for"]

CLIENT_TRUST_CONFIG = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"
SIGNING_CONFIG = "application/vnd.dev.sigstore.signingconfig.v0.2+json"


def trust_config_for(url: str, *, timeout: float = 30.0) -> ClientTrustConfig:
    """The client trust configuration for ``diskci authority serve`` at ``url``."""
    url = url.rstrip("/")
    try:
        resp = httpx.get(f"{url}/api/v1/trusted_root", timeout=timeout)
        resp.raise_for_status()
        root = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise AuthorityError(
            f"cannot read the trusted root of the signing authority at {url}: {exc}"
        ) from None
    start = root["certificateAuthorities"][0]["validFor"]["start"]
    service = {"url": url, "majorApiVersion": 1, "validFor": {"start": start}, "operator": "diskci"}
    config = {
        "mediaType": CLIENT_TRUST_CONFIG,
        "trustedRoot": root,
        "signingConfig": {
            "mediaType": SIGNING_CONFIG,
            "caUrls": [service],
            "oidcUrls": [],
            "rekorTlogUrls": [service],
            "tsaUrls": [],
            "rekorTlogConfig": {"selector": "ANY"},
            "tsaConfig": {"selector": "ANY"},
        },
    }
    return ClientTrustConfig.from_json(json.dumps(config))


def _service_message(exc: BaseException) -> tuple[int, str]:
    """(HTTP status or 0, what Fulcio or Rekor said): sigstore-python drops the message of a 4xx."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, requests.HTTPError) and cause.response is not None:
            resp = cause.response
            try:
                return resp.status_code, str(resp.json()["message"])
            except (ValueError, KeyError, TypeError):
                return resp.status_code, resp.text[:500]
        cause = cause.__cause__ or cause.__context__
    return 0, str(exc) or type(exc).__name__


class SigstoreSigner:
    """Signs in-toto statements as DSSE bundles with sigstore-python's ``Signer``: one ephemeral key
    and one certificate (from the CA, for ``id_token``) for every statement, one log entry each."""

    def __init__(self, trust_config: ClientTrustConfig | str, id_token: str) -> None:
        """``trust_config``: a configuration, or the URL of ``diskci authority serve`` (read with
        ``trust_config_for`` when the first statement is signed)."""
        try:
            self._token = IdentityToken(id_token)
        except IdentityError as exc:
            raise Unauthorized(f"the ID token is not usable for Sigstore: {exc}") from None
        claims = unverified_claims(id_token)
        self.issuer = str(claims.get("iss", ""))
        self.identity = identity_of(claims) if "workflow_ref" in claims else self._token.identity
        self._trust_config = trust_config
        self._signer: Any = None

    def close(self) -> None:
        self._signer = None

    def _open(self) -> Any:
        if self._signer is None:
            config = self._trust_config
            if isinstance(config, str):
                config = self._trust_config = trust_config_for(config)
            try:
                context = SigningContext.from_trust_config(config)
                self._signer = context.signer(self._token, cache=True).__enter__()
            except Exception as exc:  # sigstore-python raises its own, requests' and bare errors
                status, message = _service_message(exc)
                if status == 401:
                    raise Unauthorized(f"the CA refused the ID token: {message}") from None
                raise AuthorityError(f"the CA refused the certificate request: {message}") from None
        return self._signer

    def sign_in_toto(self, statement: dict[str, Any]) -> tuple[bytes, int]:
        """(bundle JSON, log index) for ``statement``."""
        signer = self._open()
        try:
            bundle = signer.sign_dsse(dsse.Statement(canonical_json(statement, ascii_only=True)))
        except Exception as exc:  # sigstore-python raises its own and requests' errors
            status, message = _service_message(exc)
            raise AuthorityError(
                f"the transparency log refused the entry (HTTP {status}): {message}"
            ) from None
        names = certificate_identities(bundle.signing_certificate)
        if self.identity not in names:
            raise AuthorityError(f"the CA certified {', '.join(names)}, not the token's {self.identity}")
        return bundle.to_json().encode(), int(bundle.log_entry._inner.log_index)
