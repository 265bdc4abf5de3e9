"""The issuer's signing keys (JWKS), fetched lazily and cached (SPEC §5, Bearer `jwt`).

Keys are fetched on first use, not at start-up, so a service whose IdP is down still
starts. An unknown `kid` (the IdP rotated its keys) triggers one refetch, at most once
per `min_refetch_interval`, so a stream of forged `kid`s cannot make us hammer the
IdP. Concurrent callers share one fetch. After a failed fetch, callers get
`IdPUnavailable` without a new request until `retry_after_failure` has passed.

Only asymmetric keys are served: an `oct` (symmetric) key in a JWKS would let an
HMAC token verify with public material, so such keys are ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jwt

from ext_authz.errors import IdPUnavailable

__all__ = ["JWKSCache"]

_ASYMMETRIC_KTY = frozenset({"RSA", "EC", "OKP"})


class JWKSCache:
    """Resolve `(kid, alg)` to a `jwt.PyJWK` bound to that algorithm."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        min_refetch_interval: float = 60.0,
        retry_after_failure: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._min_refetch_interval = min_refetch_interval
        self._retry_after_failure = retry_after_failure
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: list[Mapping[str, Any]] | None = None
        self._fetched_at: float | None = None  # last successful fetch
        self._failed_at: float | None = None  # last failed fetch, cleared by a success
        self._failure = ""
        self._generation = 0  # counts finished fetch attempts

    @property
    def loaded(self) -> bool:
        return self._keys is not None

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The key for a token's header, or None when the JWKS has no such key.

        Raises IdPUnavailable when the JWKS must be fetched and cannot be.
        """
        if self._keys is None:
            await self._refresh(self._generation, force=True)
        key = self._find(kid, alg)
        if key is None and kid is not None and self._may_refetch():
            await self._refresh(self._generation, force=False)
            key = self._find(kid, alg)
        return key

    def _may_refetch(self) -> bool:
        return (
            self._fetched_at is None
            or self._clock() - self._fetched_at >= self._min_refetch_interval
        )

    async def _refresh(self, seen_generation: int, *, force: bool) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                # Another caller fetched while we waited: share its result, or its failure.
                if self._failed_at is not None or self._keys is None:
                    raise IdPUnavailable(self._failure or "JWKS unavailable")
                return
            now = self._clock()
            if self._failed_at is not None and now - self._failed_at < self._retry_after_failure:
                raise IdPUnavailable(self._failure)
            if not force and not self._may_refetch():
                return
            try:
                document = await self._fetch()
                keys = _parse(document)
            except IdPUnavailable as exc:
                self._fail(now, f"JWKS: {exc}")
                raise
            except Exception as exc:  # a fetcher bug or odd document must not look like "no key"
                self._fail(now, f"JWKS: {type(exc).__name__}")
                raise IdPUnavailable(self._failure) from exc
            self._keys = keys
            self._fetched_at = now
            self._failed_at = None
            self._failure = ""
            self._generation += 1

    def _fail(self, now: float, message: str) -> None:
        # The generation moves when an attempt ends (not when it starts): callers that
        # read the old value queued behind this fetch and share its outcome. A cancelled
        # fetch moves nothing, so the next waiter simply fetches itself.
        self._failed_at = now
        self._failure = message
        self._generation += 1

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        for jwk in self._keys or ():
            if kid is not None and jwk.get("kid") != kid:
                continue
            if jwk.get("alg") not in (None, alg):
                continue
            try:
                return jwt.PyJWK(dict(jwk), algorithm=alg)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                # Wrong key type for this alg (an EC key for RS256), or a broken entry.
                continue
        return None


def _parse(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    keys = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(keys, list):
        raise IdPUnavailable("JWKS document has no keys list")
    return [
        key
        for key in keys
        if isinstance(key, Mapping)
        and key.get("kty") in _ASYMMETRIC_KTY
        and key.get("use") in (None, "sig")
    ]
