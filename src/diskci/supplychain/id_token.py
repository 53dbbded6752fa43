"""CI jobs' OIDC ID tokens on the signing side: verified by the authority, requested by a job.

Public API:

- ``IdTokenVerifier(issuers, audience=...)``, ``.verify(token) -> JobIdentity`` (and
  ``.verify_cached(token)``, the same checks without fetching, None when keys must be fetched): what
  ``diskci authority serve`` checks before it issues a certificate. Only the configured issuers are
  trusted, and only their keys fetched: ``<iss>/.well-known/openid-configuration`` gives the
  ``jwks_uri`` (its ``issuer`` must be ``iss``), whose keys are cached (``CACHE_TTL``) and fetched
  again for an unknown ``kid`` (at most every ``REFRESH_INTERVAL``); every document is bounded. Then,
  in order: the header's ``alg`` (ES256 or RS256; ``none`` and HMAC never), the signature with the
  key ``kid`` names, ``aud``, ``exp``/``nbf``/``iat`` (``LEEWAY``), and the claims the identity is
  made of.
- ``identity_of(claims) -> str``: the certificate's identity, ``<iss>/<workflow_ref>`` (e.g.
  ``http://ci.example/debian-12/.gitea/workflows/build.yaml@refs/tags/v1``): taken from the token,
  never from the caller.
- ``unverified_claims(token)``: a token's claims read without checking them (a client predicting the
  identity its certificate will name).
- ``request_id_token(url, runtime_token, audience=...)``: a CI job asking its platform for a token
  (``ACTIONS_ID_TOKEN_REQUEST_URL``/``ACTIONS_ID_TOKEN_REQUEST_TOKEN``, as on GitHub Actions).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt

from diskci.errors import SupplyChainError, Unauthorized, UsageError

__all__ = [
    "ALGORITHMS",
    "IdTokenRefused",
    "IdTokenRequestFailed",
    "IdTokenVerifier",
    "IssuerUnavailable",
    "JobIdentity",
    "check_issuer_url",
    "identity_of",
    "request_id_token",
    "unverified_claims",
]

ALGORITHMS = ("ES256", "RS256")
LEEWAY = 60  # seconds of clock skew allowed on exp, nbf and iat
MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 64 * 1024  # a discovery document or a JWK Set
MAX_KEYS = 32
CACHE_TTL = 300.0
REFRESH_INTERVAL = 10.0
FETCH_TIMEOUT = 10.0
MAX_CLAIM_CHARS = 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"


class IdTokenRefused(Unauthorized):
    """An ID token the authority does not accept: malformed, an issuer not trusted, a key not the
    issuer's, a bad signature, another audience, expired or not yet valid, or claims missing."""


class IssuerUnavailable(SupplyChainError):
    """A trusted issuer's discovery document or keys could not be fetched or read."""

    http_status = 503


class IdTokenRequestFailed(SupplyChainError):
    """A CI job could not get an ID token from its platform."""


@dataclass(frozen=True)
class JobIdentity:
    """What a verified ID token says: the certificate's identity and issuer, and all its claims."""

    identity: str
    issuer: str
    subject: str
    claims: dict[str, Any] = field(default_factory=dict)


def check_issuer_url(url: str) -> str:
    """``url`` without a trailing slash, if it is an http(s) URL without query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(f"OIDC issuer {url!r}: not an http(s) URL without query or fragment")
    return url.rstrip("/")


def _claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_CHARS:
        raise IdTokenRefused(f"the ID token's {name!r} claim is missing, empty or too long")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise IdTokenRefused(f"the ID token's {name!r} claim holds spaces or control characters")
    return value


def identity_of(claims: dict[str, Any]) -> str:
    """``<iss>/<workflow_ref>``, the workflow run at a ref, from an ID token's claims."""
    issuer = _claim(claims, "iss").rstrip("/")
    workflow_ref = _claim(claims, "workflow_ref")
    repository = _claim(claims, "repository")
    if not workflow_ref.startswith(repository + "/") or "@" not in workflow_ref:
        raise IdTokenRefused(
            f"the ID token's workflow_ref {workflow_ref!r} is not <repository>/<path>@<ref> of its "
            f"repository {repository!r}"
        )
    if ".." in workflow_ref.split("@", 1)[0].split("/"):
        raise IdTokenRefused(f"the ID token's workflow_ref {workflow_ref!r} has a '..' segment")
    return f"{issuer}/{workflow_ref}"


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of ``token`` read without verifying anything (``IdTokenRefused`` if not a JWT)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise IdTokenRefused(f"the ID token is over {MAX_TOKEN_CHARS} characters")
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise IdTokenRefused(f"not a JWT: {exc}") from None
    return claims


@dataclass
class _IssuerKeys:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class IdTokenVerifier:
    """Verifies ID tokens of the ``issuers`` it is given for ``audience`` (see the module docstring)."""

    def __init__(
        self,
        issuers: Sequence[str],
        *,
        audience: str = "sigstore",
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        leeway: int = LEEWAY,
    ) -> None:
        """``client``: what discovery and keys are fetched with (e.g. a TestClient of the issuer)."""
        if not issuers:
            raise UsageError("an ID token verifier needs at least one trusted OIDC issuer")
        if not audience:
            raise UsageError("an ID token verifier needs an audience")
        self.issuers = {check_issuer_url(i): _IssuerKeys() for i in issuers}
        self.audience = audience
        self.leeway = leeway
        self._clock = clock
        self._client = client or httpx.Client(timeout=FETCH_TIMEOUT, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    # --- fetching ----------------------------------------------------------------------------------
    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            with self._client.stream("GET", url, headers={"Accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise IssuerUnavailable(f"{what} {url}: HTTP {resp.status_code}")
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise IssuerUnavailable(f"{what} {url}: over {MAX_DOCUMENT_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise IssuerUnavailable(f"cannot fetch {what} {url}: {exc}") from None
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise IssuerUnavailable(f"{what} {url}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise IssuerUnavailable(f"{what} {url}: not a JSON object")
        return data

    def _fetch_keys(self, issuer: str) -> dict[str, jwt.PyJWK]:
        config = self._get_json(issuer + DISCOVERY_PATH, "the OIDC discovery document")
        if str(config.get("issuer", "")).rstrip("/") != issuer:
            raise IssuerUnavailable(
                f"the discovery document of {issuer} names issuer {config.get('issuer')!r}"
            )
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("http", "https"):
            raise IssuerUnavailable(f"the discovery document of {issuer} has no http(s) jwks_uri")
        document = self._get_json(jwks_uri, "the JWK Set")
        raw_keys = document.get("keys")
        if not isinstance(raw_keys, list) or len(raw_keys) > MAX_KEYS:
            raise IssuerUnavailable(f"the JWK Set {jwks_uri}: not a list of at most {MAX_KEYS} keys")
        keys: dict[str, jwt.PyJWK] = {}
        for raw in raw_keys:
            if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str):
                continue  # a key without a kid cannot be chosen by a token
            if raw.get("use", "sig") != "sig":
                continue
            try:
                keys[raw["kid"]] = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                continue  # a key type this verifier does not use
        return keys

    def _key(self, issuer: str, kid: str, *, fetch: bool = True) -> jwt.PyJWK | None:
        """``issuer``'s key ``kid``, its keys fetched again when stale or to look for a new ``kid``;
        without ``fetch``, None when that fetch would be needed (or another thread is fetching:
        it never waits)."""
        cache = self.issuers[issuer]
        if not cache.lock.acquire(blocking=fetch):
            return None
        try:
            now = self._clock()
            stale = cache.fetched_at is None or now - cache.fetched_at > CACHE_TTL
            may_refresh = cache.fetched_at is None or now - cache.fetched_at > REFRESH_INTERVAL
            if stale or (kid not in cache.keys and may_refresh):
                if not fetch:
                    return None
                cache.keys = self._fetch_keys(issuer)
                cache.fetched_at = now
            key = cache.keys.get(kid)
        finally:
            cache.lock.release()
        if key is None:
            raise IdTokenRefused(f"the ID token's key {kid!r} is not one of {issuer}'s keys")
        return key

    # --- verifying ---------------------------------------------------------------------------------
    def verify(self, token: str) -> JobIdentity:
        """The identity ``token`` carries, once every check passed; else ``IdTokenRefused``."""
        identity = self._verify(token, fetch=True)
        assert identity is not None  # with fetch, a key is found or the token refused
        return identity

    def verify_cached(self, token: str) -> JobIdentity | None:
        """``verify(token)`` when the issuer's cached keys are fresh enough to decide, without any
        network I/O (an async server calls it on its event loop); None when they must be fetched
        first (then nothing has been accepted: call ``verify``, off the event loop)."""
        return self._verify(token, fetch=False)

    def _verify(self, token: str, *, fetch: bool) -> JobIdentity | None:
        # 1. a JWT, of a bounded size, with an accepted algorithm and a key id
        claims = unverified_claims(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise IdTokenRefused(f"not a JWT: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise IdTokenRefused(f"ID token algorithm {alg!r} is not accepted (only {', '.join(ALGORITHMS)})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise IdTokenRefused("the ID token names no key (kid)")
        # 2. an issuer this authority trusts (nothing is fetched for any other)
        issuer = str(claims.get("iss", "")).rstrip("/")
        if issuer not in self.issuers:
            raise IdTokenRefused(
                f"ID token issuer {claims.get('iss')!r} is not trusted here "
                f"(trusted: {', '.join(sorted(self.issuers))})"
            )
        # 3. the issuer's key, the signature, the audience and the times
        key = self._key(issuer, kid, fetch=fetch)
        if key is None:
            return None
        if key.algorithm_name != alg:
            raise IdTokenRefused(f"the ID token says {alg} but key {kid!r} is an {key.algorithm_name} key")
        try:
            verified: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=claims.get("iss"),
                leeway=self.leeway,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "nbf"]},
            )
        except jwt.ExpiredSignatureError:
            raise IdTokenRefused("the ID token has expired") from None
        except jwt.ImmatureSignatureError:
            raise IdTokenRefused("the ID token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise IdTokenRefused(
                f"the ID token is for audience {claims.get('aud')!r}, not {self.audience!r}"
            ) from None
        except jwt.InvalidSignatureError:
            raise IdTokenRefused(f"the ID token's signature does not verify with {issuer}'s key") from None
        except jwt.MissingRequiredClaimError as exc:
            raise IdTokenRefused(f"the ID token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise IdTokenRefused(f"the ID token does not verify: {exc}") from None
        # 4. the identity the certificate will name, from the token alone
        return JobIdentity(
            identity=identity_of(verified),
            issuer=str(verified["iss"]),
            subject=_claim(verified, "sub"),
            claims=verified,
        )


def request_id_token(
    url: str,
    runtime_token: str,
    *,
    audience: str = "sigstore",
    client: httpx.Client | None = None,
    timeout: float = 30.0,
) -> str:
    """An ID token for ``audience`` from a CI job's platform (``GET url&audience=...``)."""
    target = url + ("&" if "?" in url else "?") + urlencode({"audience": audience})
    headers = {"Authorization": f"Bearer {runtime_token}", "Accept": "application/json"}
    try:
        if client is not None:
            resp = client.get(target, headers=headers)
        else:
            resp = httpx.get(target, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise IdTokenRequestFailed(f"cannot reach {url} for an ID token: {exc}") from None
    try:
        data = resp.json()
    except ValueError:
        data = {}
    if resp.status_code != 200:
        detail = data.get("detail") or data.get("message") if isinstance(data, dict) else None
        raise IdTokenRequestFailed(
            f"{url}: HTTP {resp.status_code} asking for an ID token: {detail or resp.text[:200]}"
        )
    value = data.get("value") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise IdTokenRequestFailed(f"{url}: the answer holds no ID token ('value')")
    return value
