"""Verifying a new credential once: per process and per fleet (SPEC §5 "Cache", "Cost
and abuse", "IdP unreachable").

`SharedVerification.run` is what the service calls after a credential-cache miss:

- **Single flight, per process**: Checks that carry the same credential at the same
  time share one verification, run as a task of its own, so a caller whose RPC is
  cancelled (Envoy's timeout, a client gone) does not cancel it for the others. When
  the last waiting Check has gone, it is cancelled: nobody would read its answer, and
  a hash still queued in the pool then never starts.
- **One replica at a time, per fleet**: before asking the verifier, a replica claims
  the credential in the store (`CredentialCache.claim`, SET NX). The others poll the
  cache for its answer, and ask themselves only if it leaves none (it died, the IdP
  was down, the token was about to expire). The winner of a claim looks in the cache
  once more, since a peer may have answered between its miss and its claim.
- **One deadline**: all of it, the wait for a peer included, shares one deadline
  (`oidc.timeout`, or DIRECTORY_BUDGET): past it the outcome is `Unavailable`, a 503
  of ours well before Envoy's timeout would answer with its own bare 503.
- The outcome is written to the shared cache (a verified identity for `cache_ttl`,
  bounded by the token's `exp`; a rejection for `negative_cache_ttl`).

Time and sleeping are injected (`monotonic`, `wall`, `sleep`) so tests drive them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ext_authz.core.credentials import BasicCredential, BearerCredential
from ext_authz.core.model import Identity, Rejected, Unavailable, Verified, VerifyOutcome
from ext_authz.errors import StoreUnavailable
from ext_authz.hash_pool import requester

if TYPE_CHECKING:
    from ext_authz.adapters.oidc import OIDCClient
    from ext_authz.config import Application
    from ext_authz.metrics import Metrics
    from ext_authz.sessions import CachedCredential, CredentialCache

__all__ = [
    "DIRECTORY_BUDGET",
    "PEER_POLL",
    "AppRuntime",
    "BasicVerifier",
    "BearerVerifier",
    "SharedVerification",
]

PEER_POLL = 0.02  # seconds between looks at the cache while another replica verifies
# How long one verification may take, waiting for a peer replica included, on an
# application without oidc (there `oidc.timeout` is the budget): hashing waits in a
# queue, and the answer must be ours before Envoy's ext_authz timeout (SPEC §5).
DIRECTORY_BUDGET = 3.0

BasicVerifier = Callable[[str, str], Awaitable[VerifyOutcome]]
BearerVerifier = Callable[[str], Awaitable[VerifyOutcome]]
Credential = BasicCredential | BearerCredential


@dataclass(frozen=True, slots=True)
class AppRuntime:
    """One application with the verifiers the composition root built for it."""

    app: Application
    verify_basic: BasicVerifier | None
    verify_bearer: BearerVerifier | None
    oidc: OIDCClient | None


class SharedVerification:
    def __init__(
        self,
        credentials: CredentialCache,
        metrics: Metrics,
        *,
        current: Callable[[Identity], bool],
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._credentials = credentials
        self._metrics = metrics
        self._current = current
        self._wall = wall
        self._monotonic = monotonic
        self._sleep = sleep
        self._inflight: dict[tuple[str, str], asyncio.Future[VerifyOutcome]] = {}
        self._waiting: dict[asyncio.Future[VerifyOutcome], int] = {}

    def cached_outcome(self, cached: CachedCredential) -> Verified | Rejected:
        """A cached outcome, unless its directory credential has left the directory
        since (the cache outlives restarts in Redis, and replicas may differ)."""
        identity = cached.identity
        if identity is not None and not self._current(identity):
            return Rejected("credential no longer in the directory")
        return cached.outcome

    async def run(
        self, rt: AppRuntime, credential: Credential, header_value: str, client: str
    ) -> tuple[VerifyOutcome, bool]:
        """The outcome for a credential the cache did not know, and whether this
        Check started its verification (the others shared it: log it once)."""
        key = (rt.app.name, header_value)
        task = self._inflight.get(key)
        first = task is None
        if task is None:
            context = contextvars.copy_context()
            context.run(requester.set, client)  # whose turn it is in the hash pool
            task = asyncio.get_running_loop().create_task(
                self._verify_shared(rt, credential, header_value), context=context
            )
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        self._waiting[task] = self._waiting.get(task, 0) + 1
        try:
            outcome = await asyncio.shield(task)
        finally:
            self._stop_waiting(key, task)
        return outcome, first

    def _stop_waiting(self, key: tuple[str, str], task: asyncio.Future[VerifyOutcome]) -> None:
        left = self._waiting.get(task, 1) - 1
        if left > 0:
            self._waiting[task] = left
            return
        self._waiting.pop(task, None)
        if not task.done():
            task.cancel()
            if self._inflight.get(key) is task:
                del self._inflight[key]  # a caller arriving now starts afresh

    def _done(self, key: tuple[str, str], task: asyncio.Future[VerifyOutcome]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters re-raise it themselves

    async def _verify_shared(
        self, rt: AppRuntime, credential: Credential, header_value: str
    ) -> VerifyOutcome:
        app = rt.app
        window = claim_window(app)
        deadline = self._monotonic() + budget(app)
        claimed = await self._claim(app.name, header_value, window)
        while not claimed and self._monotonic() < deadline:
            await self._sleep(PEER_POLL)
            try:
                cached = await self._credentials.get(app.name, header_value)
            except StoreUnavailable:
                break
            if cached is not None:
                return self._from_peer(cached)
            # The other replica finished without caching (IdP down, an expiring token):
            # the claim is free again, and this replica asks.
            claimed = await self._claim(app.name, header_value, window)
        if not claimed and self._monotonic() >= deadline:
            return Unavailable("another replica is verifying it")  # and it has not answered
        try:
            if claimed:
                # A peer may have verified it between our cache miss and our claim.
                try:
                    cached = await self._credentials.get(app.name, header_value)
                except StoreUnavailable:
                    cached = None
                if cached is not None:
                    return self._from_peer(cached)
            try:
                async with asyncio.timeout(max(0.0, deadline - self._monotonic())):
                    outcome = await self._call_verifier(rt, credential)
            except TimeoutError:
                outcome = Unavailable("verification timed out")
            await self._cache_outcome(app, header_value, outcome)
        finally:
            if claimed:
                with contextlib.suppress(StoreUnavailable):
                    await self._credentials.release(app.name, header_value)
        return outcome

    def _from_peer(self, cached: CachedCredential) -> Verified | Rejected:
        self._metrics.count_cache("credential", "peer")
        return self.cached_outcome(cached)

    async def _claim(self, app: str, header_value: str, window: float) -> bool:
        try:
            return await self._credentials.claim(app, header_value, window)
        except StoreUnavailable:
            self._metrics.store_errors.labels("credential_claim").inc()
            return True  # without the store, every replica verifies for itself

    async def _call_verifier(self, rt: AppRuntime, credential: Credential) -> VerifyOutcome:
        if isinstance(credential, BasicCredential):
            if rt.verify_basic is None:
                return Rejected("basic not enabled")
            return await rt.verify_basic(credential.username, credential.password)
        if rt.verify_bearer is None:
            return Rejected("bearer not enabled")
        return await rt.verify_bearer(credential.token)

    async def _cache_outcome(
        self, app: Application, header_value: str, outcome: VerifyOutcome
    ) -> None:
        try:
            if isinstance(outcome, Verified):
                ttl = app.receive.cache_ttl
                if outcome.ttl is not None:
                    ttl = min(ttl, outcome.ttl)
                if outcome.identity.expires_at is not None:
                    ttl = min(ttl, outcome.identity.expires_at - self._wall())
                if ttl > 0:
                    await self._credentials.put_verified(
                        app.name, header_value, outcome.identity, ttl
                    )
            elif isinstance(outcome, Rejected) and app.receive.negative_cache_ttl > 0:
                await self._credentials.put_rejected(
                    app.name, header_value, outcome.reason, app.receive.negative_cache_ttl
                )
        except StoreUnavailable:
            self._metrics.store_errors.labels("credential_put").inc()


def budget(app: Application) -> float:
    """The deadline of one verification of a credential for `app` (SPEC §5)."""
    return app.oidc.timeout if app.oidc is not None else DIRECTORY_BUDGET


def claim_window(app: Application) -> float:
    """How long one replica may hold a credential's verification for itself: long
    enough for a verification (discovery, JWKS and token calls, or argon2), short
    enough that the others do not wait long if it dies."""
    if app.oidc is None:
        return 2.0
    return min(10.0, 2 * app.oidc.timeout + 1)
