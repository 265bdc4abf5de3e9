"""Guessing limits, shared by every replica through the store (SPEC §5 "Cost and abuse", §6).

Counters in `Namespace.THROTTLE`, each a fixed window of `receive.throttle.window`
from its first count, keyed by an HMAC under the server secret (the store never
sees a client address or a username in clear):

    rejected credentials per client               hmac(secret, "fail", app, client)
    rejected credentials per (client, username)   hmac(secret, "fail-user", app, client, user)
    new login states per client                   hmac(secret, "login", app, client)

- A client with `failures` rejected credentials in the window gets 429 (with
  Retry-After: the window's rest) for every further credential that is not already
  verified and cached, before any hashing or IdP call; with `failures` rejections
  of one username, for that username. A credential already verified and cached
  still passes (the service looks in the cache first), so nobody can lock a user
  out by guessing at their name.
- A client that started `LOGIN_STATES_PER_FAILURE x failures` sign-ins in the window
  gets a 429 page instead of another login state, so unauthenticated clients cannot
  fill the store. The factor is generous on purpose: browsers start sign-ins far more
  often than passwords fail (tabs, expired sessions, several users behind one NAT).
- Parallel guesses cannot overshoot: a verification of a credential that is not
  cached reserves its count first (`reserve`, one atomic count-up per key in the
  store, shared by replicas) and is refused when that passes `failures`; the count is
  given back (`give_back`) when the credential verifies (or was never judged: IdP
  down). So at most `failures` verifications of unknown credentials start per client
  and window, plus those already past their reservation when the limit was reached.
- One log line and one metric when a client crosses a limit (the count that reaches
  the limit is seen by exactly one replica: the store counts atomically). Crossing
  both limits at once is one line (the client's).

Faults: the throttle fails open. A store that does not answer is no reason to refuse
a credential (SPEC §8 keeps header auth working without the store), and the verifier
still bounds the cost (one IdP call or one hash per credential). A client whose
address is unknown ("") is not counted: it would put every such client in one bucket.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ext_authz.crypto import hmac_hex
from ext_authz.errors import StoreUnavailable
from ext_authz.logs import event
from ext_authz.ports import ByteStore, Namespace

if TYPE_CHECKING:
    from ext_authz.config import Application
    from ext_authz.metrics import Metrics

__all__ = ["LOGIN_STATES_PER_FAILURE", "Reservation", "Throttle"]

LOGIN_STATES_PER_FAILURE = 10


@dataclass(frozen=True)
class Reservation:
    """The counts a verification took before it started: (scope, key, count) each."""

    scopes: tuple[tuple[str, str, int], ...] = ()
    left: float = 0.0


class Throttle:
    def __init__(self, store: ByteStore, *, secret: bytes, metrics: Metrics) -> None:
        self._store = store
        self._secret = secret
        self._metrics = metrics

    def _key(self, *parts: str) -> str:
        return hmac_hex(self._secret, "throttle", *parts)

    async def blocked(self, app: Application, client: str, username: str | None) -> int | None:
        """Seconds to wait when `client` (or `client` with `username`) is past its
        limit of rejected credentials; None when it may try."""
        limit = app.receive.throttle
        if not limit.enabled or not client:
            return None
        keys = [self._key("fail", app.name, client)]
        if username is not None:
            keys.append(self._key("fail-user", app.name, client, username))
        try:
            counts = await asyncio.gather(
                *(self._store.count(Namespace.THROTTLE, key) for key in keys)
            )
        except StoreUnavailable:
            self._metrics.store_errors.labels("throttle_count").inc()
            return None
        waits = [left for count, left in counts if count >= limit.failures]
        if not waits:
            return None
        self._metrics.throttled.labels(app.name, "credential").inc()
        return _seconds(max(waits))

    async def reserve(
        self, app: Application, client: str, username: str | None
    ) -> Reservation | int:
        """Count one verification of `client` (and of `username` from it) before it
        starts: the Reservation to settle afterwards, or the seconds to wait when that
        count is past the limit (nothing is then kept)."""
        limit = app.receive.throttle
        if not limit.enabled or not client:
            return Reservation()
        scopes = self._scopes(app, client, username)
        try:
            counts = await asyncio.gather(
                *(self._store.count_up(Namespace.THROTTLE, key, limit.window) for _, key in scopes)
            )
        except StoreUnavailable:
            self._metrics.store_errors.labels("throttle_count").inc()
            return Reservation()
        reservation = Reservation(
            tuple((scope, key, n) for (scope, key), (n, _) in zip(scopes, counts, strict=True)),
            max(left for _, left in counts),
        )
        if all(n <= limit.failures for n, _ in counts):
            return reservation
        await self._undo(reservation)
        self._metrics.throttled.labels(app.name, "credential").inc()
        return _seconds(reservation.left)

    async def give_back(self, reservation: Reservation) -> None:
        """The reserved verification did not reject the credential: its count goes."""
        await self._undo(reservation)

    async def settle_rejected(
        self, app: Application, client: str, reservation: Reservation
    ) -> None:
        """The reserved verification rejected the credential: the count stays, and the
        one that reached the limit starts the throttling (log line and metric)."""
        limit = app.receive.throttle
        client_count = next((n for s, _, n in reservation.scopes if s == "client"), 0)
        for scope, _, count in reservation.scopes:
            if count == limit.failures:
                log = scope == "client" or client_count < limit.failures
                self._started(app, client, scope, "credential", reservation.left, log=log)

    async def _undo(self, reservation: Reservation) -> None:
        if not reservation.scopes:
            return
        try:
            await asyncio.gather(
                *(self._store.count_down(Namespace.THROTTLE, k) for _, k, _ in reservation.scopes)
            )
        except StoreUnavailable:
            self._metrics.store_errors.labels("throttle_count").inc()

    def _scopes(self, app: Application, client: str, username: str | None) -> list[tuple[str, str]]:
        scopes = [("client", self._key("fail", app.name, client))]
        if username is not None:
            scopes.append(("user", self._key("fail-user", app.name, client, username)))
        return scopes

    async def rejected(self, app: Application, client: str, username: str | None) -> None:
        """Count one rejected credential of `client` (and of `username` from it)."""
        limit = app.receive.throttle
        if not limit.enabled or not client:
            return
        scopes = [("client", self._key("fail", app.name, client))]
        if username is not None:
            scopes.append(("user", self._key("fail-user", app.name, client, username)))
        try:
            counts = await asyncio.gather(
                *(self._store.count_up(Namespace.THROTTLE, key, limit.window) for _, key in scopes)
            )
        except StoreUnavailable:
            self._metrics.store_errors.labels("throttle_count").inc()
            return
        client_count = counts[0][0]
        for (scope, _), (count, left) in zip(scopes, counts, strict=True):
            if count == limit.failures:
                # One log line per start of throttling. Usually the client's own count
                # crosses first or with its count for the username, and the client's
                # line is the one. But each count has its own window: once the client's
                # has restarted, a username's can cross alone, and that is a start too.
                log = scope == "client" or client_count < limit.failures
                self._started(app, client, scope, "credential", left, log=log)

    async def login_started(self, app: Application, client: str) -> int | None:
        """Count one new login state of `client`; seconds to wait when it is past its
        limit (then no login state may be stored), else None."""
        limit = app.receive.throttle
        if not limit.enabled or not client:
            return None
        most = LOGIN_STATES_PER_FAILURE * limit.failures
        try:
            count, left = await self._store.count_up(
                Namespace.THROTTLE, self._key("login", app.name, client), limit.window
            )
        except StoreUnavailable:
            self._metrics.store_errors.labels("throttle_count").inc()
            return None
        if count <= most:
            return None
        if count == most + 1:
            self._started(app, client, "client", "login", left)
        self._metrics.throttled.labels(app.name, "login").inc()
        return _seconds(left)

    def _started(
        self, app: Application, client: str, scope: str, kind: str, left: float, *, log: bool = True
    ) -> None:
        self._metrics.throttle_started.labels(app.name, kind, scope).inc()
        if not log:
            return
        event(
            logging.WARNING,
            "client throttled",
            app=app.name,
            client=client,
            kind=kind,
            scope=scope,
            seconds=_seconds(left),
        )


def _seconds(left: float) -> int:
    return max(1, math.ceil(left))
