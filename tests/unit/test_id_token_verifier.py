"""``supplychain.id_token``: the signing authority accepts an ID token only from a trusted issuer, signed
by one of its keys (fetched by discovery, refreshed for an unknown kid), for its audience, in its time;
the identity is the token's workflow, and ``alg: none``, HMAC and foreign keys are refused."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from diskci.errors import UsageError
from diskci.supplychain import id_token
from diskci.supplychain.id_token import IdTokenRefused, IdTokenVerifier, IssuerUnavailable
from oidc_helpers import REF, FakeIssuer

IDENTITY = f"https://ci.example/debian-12/.gitea/workflows/build.yaml@{REF}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer()


def _verifier(issuer: FakeIssuer, clock: Clock | None = None, **kw: Any) -> IdTokenVerifier:
    return IdTokenVerifier([issuer.url], client=issuer.client(), clock=clock or Clock(), **kw)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_valid_token_gives_the_workflow_identity_and_issuer(issuer: FakeIssuer) -> None:
    who = _verifier(issuer).verify(issuer.token())
    assert (who.identity, who.issuer, who.subject) == (IDENTITY, issuer.url, f"repo:debian-12:ref:{REF}")
    assert who.claims["sha"] == issuer.claims()["sha"]


def test_keys_are_cached_and_fetched_again_for_an_unknown_kid(issuer: FakeIssuer) -> None:
    clock = Clock()
    verifier = _verifier(issuer, clock)
    verifier.verify(issuer.token())
    verifier.verify(issuer.token())
    assert issuer.fetches == 1
    issuer.keys["k2"] = ec.generate_private_key(ec.SECP256R1())  # the issuer rotated
    clock.now += id_token.REFRESH_INTERVAL + 1
    assert verifier.verify(issuer.token(kid="k2")).identity == IDENTITY
    assert issuer.fetches == 2
    # an unknown kid right after a refresh is refused without fetching again (bounded refreshes)
    with pytest.raises(IdTokenRefused, match=re.escape("key 'k9' is not one of https://ci.example's keys")):
        verifier.verify(issuer.token(kid="k9", key=issuer.keys["k1"]))
    assert issuer.fetches == 2
    clock.now += id_token.CACHE_TTL + 1
    verifier.verify(issuer.token())
    assert issuer.fetches == 3


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": 1000, "iat": 400, "nbf": 400}, "has expired"),
        ({"nbf": 4_000_000_000, "iat": 4_000_000_000, "exp": 4_000_000_600}, "not valid yet"),
        ({"aud": "https://elsewhere"}, "audience 'https://elsewhere', not 'sigstore'"),
        ({"sub": None}, "lacks the 'sub' claim"),
        ({"exp": None}, "lacks the 'exp' claim"),
        ({"workflow_ref": None}, "'workflow_ref' claim is missing"),
        ({"workflow_ref": "other/repo/.gitea/workflows/build.yaml@x"}, "not <repository>/<path>@<ref>"),
        ({"workflow_ref": "debian-12/../x/build.yaml@x"}, "'..' segment"),
        ({"workflow_ref": "debian-12/a b@x"}, "spaces or control characters"),
    ],
)
def test_bad_claims_are_refused_with_the_reason(
    issuer: FakeIssuer, claims: dict[str, Any], message: str
) -> None:
    with pytest.raises(IdTokenRefused, match=message):
        _verifier(issuer).verify(issuer.token(**claims))


def test_times_have_a_small_leeway(issuer: FakeIssuer) -> None:
    import time

    now = int(time.time())
    _verifier(issuer).verify(issuer.token(iat=now + 30, nbf=now + 30, exp=now + 600))  # within 60 s
    with pytest.raises(IdTokenRefused, match="has expired"):
        _verifier(issuer).verify(issuer.token(iat=now - 700, nbf=now - 700, exp=now - 90))


def test_a_token_signed_by_another_key_is_refused(issuer: FakeIssuer) -> None:
    forged = issuer.token(key=ec.generate_private_key(ec.SECP256R1()))  # claims kid k1
    expected = re.escape("signature does not verify with https://ci.example's key")
    with pytest.raises(IdTokenRefused, match=expected):
        _verifier(issuer).verify(forged)


def test_an_untrusted_issuer_is_refused_without_fetching_anything(issuer: FakeIssuer) -> None:
    with pytest.raises(IdTokenRefused, match=re.escape("issuer 'https://evil.example' is not trusted")):
        _verifier(issuer).verify(issuer.token(iss="https://evil.example"))
    assert issuer.fetches == 0


def test_alg_none_and_hmac_are_refused(issuer: FakeIssuer) -> None:
    unsigned = _b64({"alg": "none", "kid": "k1"}) + "." + _b64(issuer.claims()) + "."
    with pytest.raises(IdTokenRefused, match="algorithm 'none' is not accepted"):
        _verifier(issuer).verify(unsigned)
    # key confusion: an HMAC "signed" with the public key's JWK text
    import hashlib
    import hmac

    secret = json.dumps(issuer.jwks()["keys"][0]).encode()
    signing_input = _b64({"alg": "HS256", "kid": "k1"}) + "." + _b64(issuer.claims())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    confused = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with pytest.raises(IdTokenRefused, match="algorithm 'HS256' is not accepted"):
        _verifier(issuer).verify(confused)
    with pytest.raises(IdTokenRefused, match="names no key"):
        _verifier(issuer).verify(jwt.encode(issuer.claims(), issuer.keys["k1"], algorithm="ES256"))


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "x" * (id_token.MAX_TOKEN_CHARS + 1)])
def test_malformed_tokens_are_refused(issuer: FakeIssuer, token: str) -> None:
    with pytest.raises(IdTokenRefused):
        _verifier(issuer).verify(token)
    assert issuer.fetches == 0


def test_an_issuer_whose_discovery_names_another_issuer_is_unavailable(issuer: FakeIssuer) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"issuer": "https://other.example", "jwks_uri": f"{issuer.url}/jwks"})

    verifier = IdTokenVerifier([issuer.url], client=httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(IssuerUnavailable, match=re.escape("names issuer 'https://other.example'")):
        verifier.verify(issuer.token())


def test_an_oversized_or_unreachable_jwks_is_unavailable(issuer: FakeIssuer) -> None:
    def big(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("openid-configuration"):
            return httpx.Response(200, json={"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"})
        return httpx.Response(200, content=b"{" + b" " * (id_token.MAX_DOCUMENT_BYTES + 1) + b"}")

    verifier = IdTokenVerifier([issuer.url], client=httpx.Client(transport=httpx.MockTransport(big)))
    with pytest.raises(IssuerUnavailable, match="over 65536 bytes"):
        verifier.verify(issuer.token())

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    verifier = IdTokenVerifier([issuer.url], client=httpx.Client(transport=httpx.MockTransport(down)))
    with pytest.raises(IssuerUnavailable, match="cannot fetch the OIDC discovery document"):
        verifier.verify(issuer.token())


def test_a_verifier_needs_issuers_that_are_urls() -> None:
    with pytest.raises(UsageError, match="at least one trusted OIDC issuer"):
        IdTokenVerifier([])
    with pytest.raises(UsageError, match="not an http"):
        IdTokenVerifier(["ftp://x"])
    assert IdTokenVerifier(["https://ci.example/"]).issuers.keys() == {"https://ci.example"}


def test_request_id_token_asks_with_the_runtime_token_and_audience() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers["Authorization"] != "Bearer rt":
            return httpx.Response(
                401, json={"error": "RuntimeTokenRefused", "detail": "no longer in progress"}
            )
        return httpx.Response(200, json={"value": "the.jwt.value", "count": 1})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    url = "http://ci.example/api/actions/id-token?api-version=2.0"
    assert id_token.request_id_token(url, "rt", client=client) == "the.jwt.value"
    assert seen[0].url.params["audience"] == "sigstore" and seen[0].url.params["api-version"] == "2.0"
    with pytest.raises(id_token.IdTokenRequestFailed, match="HTTP 401 asking for an ID token: no longer"):
        id_token.request_id_token(url, "wrong", client=client)
