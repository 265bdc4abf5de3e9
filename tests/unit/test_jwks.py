"""JWKSCache: lazy fetch, refetch on unknown kid (rate-limited), shared fetches, faults."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ext_authz.adapters.jwks import JWKSCache
from ext_authz.errors import IdPUnavailable

pytestmark = pytest.mark.anyio


def _rsa_jwk(kid: str, **extra: Any) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, **extra}


def _ec_jwk(kid: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid}


RSA1 = _rsa_jwk("k1")
RSA2 = _rsa_jwk("k2")
EC1 = _ec_jwk("e1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    def __init__(self, *documents: dict[str, Any] | Exception) -> None:
        self.documents = list(documents)
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0)  # let concurrent callers pile up on the lock
        doc = self.documents[min(self.calls, len(self.documents)) - 1]
        if isinstance(doc, Exception):
            raise doc
        return doc


async def test_lazy_and_cached() -> None:
    fetch = Fetcher({"keys": [RSA1]})
    cache = JWKSCache(fetch, clock=Clock())
    assert fetch.calls == 0 and not cache.loaded
    key = await cache.key_for("k1", "RS256")
    assert isinstance(key, jwt.PyJWK) and key.algorithm_name == "RS256"
    assert await cache.key_for("k1", "RS512") is not None  # no alg in the JWK: bound to the token's
    assert fetch.calls == 1 and cache.loaded


async def test_key_matching() -> None:
    odd = {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}
    enc = _rsa_jwk("enc", use="enc")
    pinned = _rsa_jwk("pinned", alg="RS384")
    cache = JWKSCache(Fetcher({"keys": [RSA1, EC1, odd, enc, pinned, "junk"]}), clock=Clock())
    assert await cache.key_for("e1", "ES256") is not None
    assert await cache.key_for("e1", "RS256") is None  # EC key cannot serve RS256
    assert await cache.key_for("k1", "ES256") is None
    assert await cache.key_for("sym", "HS256") is None  # symmetric keys are never served
    assert await cache.key_for("enc", "RS256") is None  # encryption keys are not signing keys
    assert await cache.key_for("pinned", "RS256") is None  # the JWK's own alg binds it
    assert await cache.key_for("pinned", "RS384") is not None
    assert await cache.key_for(None, "ES256") is not None  # no kid: the first fitting key


async def test_unknown_kid_refetches_at_most_once_per_interval() -> None:
    clock = Clock()
    fetch = Fetcher({"keys": [RSA1]}, {"keys": [RSA1]}, {"keys": [RSA1, RSA2]})
    cache = JWKSCache(fetch, min_refetch_interval=60, clock=clock)
    assert await cache.key_for("k1", "RS256") is not None
    assert fetch.calls == 1
    clock.now += 61
    assert await cache.key_for("k2", "RS256") is None  # refetched, still unknown
    assert fetch.calls == 2
    assert await cache.key_for("k2", "RS256") is None  # within the interval: no refetch
    clock.now += 30
    assert await cache.key_for("k3", "RS256") is None
    assert fetch.calls == 2
    clock.now += 31
    assert await cache.key_for("k2", "RS256") is not None  # the IdP rotated in k2
    assert fetch.calls == 3


async def test_first_use_after_start_may_refetch_immediately_for_rotation() -> None:
    clock = Clock()
    fetch = Fetcher({"keys": [RSA1]}, {"keys": [RSA1, RSA2]})
    cache = JWKSCache(fetch, min_refetch_interval=60, clock=clock)
    await cache.key_for("k1", "RS256")
    # Fresh keys just fetched: an unknown kid right after does not refetch.
    assert await cache.key_for("k2", "RS256") is None
    assert fetch.calls == 1


async def test_concurrent_callers_share_one_fetch() -> None:
    fetch = Fetcher({"keys": [RSA1]})
    cache = JWKSCache(fetch, clock=Clock())
    keys = await asyncio.gather(*(cache.key_for("k1", "RS256") for _ in range(20)))
    assert all(k is not None for k in keys)
    assert fetch.calls == 1


async def test_concurrent_unknown_kid_shares_one_refetch() -> None:
    clock = Clock()
    fetch = Fetcher({"keys": [RSA1]}, {"keys": [RSA1, RSA2]})
    cache = JWKSCache(fetch, clock=clock)
    await cache.key_for("k1", "RS256")
    clock.now += 120
    keys = await asyncio.gather(*(cache.key_for("k2", "RS256") for _ in range(10)))
    assert all(k is not None for k in keys)
    assert fetch.calls == 2


async def test_fetch_failure_propagates_and_backs_off() -> None:
    clock = Clock()
    fetch = Fetcher(IdPUnavailable("jwks: timeout"), {"keys": [RSA1]})
    cache = JWKSCache(fetch, retry_after_failure=5, clock=clock)
    with pytest.raises(IdPUnavailable):
        await cache.key_for("k1", "RS256")
    with pytest.raises(IdPUnavailable):  # within the back-off: no new request
        await cache.key_for("k1", "RS256")
    assert fetch.calls == 1
    clock.now += 6
    assert await cache.key_for("k1", "RS256") is not None
    assert fetch.calls == 2


async def test_concurrent_callers_share_a_failure() -> None:
    fetch = Fetcher(IdPUnavailable("down"))
    cache = JWKSCache(fetch, clock=Clock())
    results = await asyncio.gather(
        *(cache.key_for("k1", "RS256") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, IdPUnavailable) for r in results)
    assert fetch.calls == 1


@pytest.mark.parametrize("document", [{}, {"keys": "nope"}, {"keys": None}])
async def test_bad_document_is_unavailable(document: dict[str, Any]) -> None:
    cache = JWKSCache(Fetcher(document), clock=Clock())
    with pytest.raises(IdPUnavailable):
        await cache.key_for("k1", "RS256")


async def test_fetcher_bug_becomes_unavailable() -> None:
    cache = JWKSCache(Fetcher(KeyError("x")), clock=Clock())
    with pytest.raises(IdPUnavailable):
        await cache.key_for("k1", "RS256")


async def test_refetch_failure_with_keys_loaded_propagates() -> None:
    clock = Clock()
    fetch = Fetcher({"keys": [RSA1]}, IdPUnavailable("down"))
    cache = JWKSCache(fetch, clock=clock)
    await cache.key_for("k1", "RS256")
    clock.now += 120
    with pytest.raises(IdPUnavailable):
        await cache.key_for("k2", "RS256")
    assert await cache.key_for("k1", "RS256") is not None  # known keys keep working
