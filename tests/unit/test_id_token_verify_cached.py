"""``IdTokenVerifier.verify_cached``: the same checks as ``verify`` from the cached keys, never a fetch
(what ``authority serve`` runs on its event loop); None whenever the keys would have to be fetched."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from diskci.supplychain import id_token
from diskci.supplychain.id_token import IdTokenRefused, IdTokenVerifier
from oidc_helpers import REF, FakeIssuer

IDENTITY = f"https://ci.example/debian-12/.gitea/workflows/build.yaml@{REF}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_fetched_and_nothing_accepted_before_the_keys_are_cached() -> None:
    issuer = FakeIssuer()
    verifier = IdTokenVerifier([issuer.url], client=issuer.client(), clock=Clock())
    assert verifier.verify_cached(issuer.token()) is None
    assert issuer.fetches == 0
    verifier.verify(issuer.token())
    who = verifier.verify_cached(issuer.token())
    assert who is not None and who.identity == IDENTITY
    assert issuer.fetches == 1


def test_stale_keys_or_a_new_kid_are_left_to_verify() -> None:
    issuer, clock = FakeIssuer(), Clock()
    verifier = IdTokenVerifier([issuer.url], client=issuer.client(), clock=clock)
    verifier.verify(issuer.token())
    issuer.keys["k2"] = ec.generate_private_key(ec.SECP256R1())
    clock.now += id_token.REFRESH_INTERVAL + 1
    assert verifier.verify_cached(issuer.token(kid="k2")) is None  # a refresh is due: not on the loop
    clock.now += id_token.CACHE_TTL
    assert verifier.verify_cached(issuer.token()) is None  # stale keys are never trusted
    assert issuer.fetches == 1


def test_a_token_the_cached_keys_can_decide_is_still_checked_in_full() -> None:
    issuer = FakeIssuer()
    verifier = IdTokenVerifier([issuer.url], client=issuer.client(), clock=Clock())
    verifier.verify(issuer.token())
    with pytest.raises(IdTokenRefused, match="has expired"):
        verifier.verify_cached(issuer.token(exp=1000, iat=400, nbf=400))
    with pytest.raises(IdTokenRefused, match="signature does not verify"):
        verifier.verify_cached(issuer.token(key=ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(IdTokenRefused, match="is not trusted here"):
        verifier.verify_cached(issuer.token(iss="https://elsewhere.example"))


def test_it_never_waits_for_a_fetch_in_another_thread() -> None:
    issuer = FakeIssuer()
    verifier = IdTokenVerifier([issuer.url], client=issuer.client(), clock=Clock())
    verifier.verify(issuer.token())
    with verifier.issuers[issuer.url].lock:  # as while a worker thread fetches the keys
        assert verifier.verify_cached(issuer.token()) is None
