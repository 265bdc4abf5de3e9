"""The interfaces the service talks to; adapters implement them.

`ByteStore` is a dumb key/value store of opaque bytes with TTLs, in namespaces.
It knows nothing of sessions or encryption: `ext_authz.sessions` seals values
before they reach it (oauth2-proxy's split of the byte store from the ticket), so
a copy of the store alone reveals nothing and lets nobody in.

Every method raises `ext_authz.errors.StoreUnavailable` when the backend cannot
answer; never a library exception.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["ByteStore", "Namespace"]


class Namespace:
    """The store's key namespaces (SPEC §8): each kind of record has its own."""

    SESSION = "session"  # key: sha256(cookie value) hex
    SUB_INDEX = "sub"  # key: hmac(app, sub) hex; members: session keys
    SID_INDEX = "sid"  # key: hmac("sid", sid) hex, across applications; members: session keys
    CREDENTIAL = "cred"  # key: hmac(secret, app + header value) hex
    LOGIN = "login"  # key: hmac(secret, app, state, login cookie) hex
    CLAIM = "claim"  # key: a credential cache key; "one replica verifies this now"
    THROTTLE = "throttle"  # key: hmac(secret, kind, app, client[, username]); a counter
    TABLE = "table"  # key: hmac(secret, "table", authentik host); the last good providers, sealed


class ByteStore(Protocol):
    async def get(self, namespace: str, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    async def set(self, namespace: str, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds (> 0; rounded up to whole milliseconds)."""

    async def take(self, namespace: str, key: str) -> bytes | None:
        """Get and delete in one atomic step (single use: a second take gets None)."""

    async def claim(self, namespace: str, key: str, ttl: float) -> bool:
        """Set a marker at `key` for `ttl` seconds unless one is there, atomically.
        True for the one caller that set it (across every replica)."""

    async def count_up(self, namespace: str, key: str, ttl: float) -> tuple[int, float]:
        """Add one to the counter at `key`, atomically; a new counter lives `ttl`
        seconds (a fixed window from its first count). Returns (count, seconds left)."""

    async def count(self, namespace: str, key: str) -> tuple[int, float]:
        """The counter at `key` and its seconds left; (0, 0.0) when there is none."""

    async def delete(self, namespace: str, key: str) -> None:
        """Delete one key; absent keys are fine."""

    async def index_add(self, namespace: str, key: str, member: str, ttl: float) -> None:
        """Add `member` to the set at `key` and make the set live at least `ttl` more seconds."""

    async def index_pop_all(self, namespace: str, key: str) -> list[str]:
        """Return every member of the set at `key` and delete the set."""

    async def publish_invalidation(self, keys: list[str]) -> None:
        """Tell every replica to drop these (session) keys from its in-process cache."""

    async def subscribe_invalidations(
        self, callback: Callable[[list[str]], Awaitable[None] | None]
    ) -> None:
        """Call `callback` with the keys of every invalidation published by any replica
        (this one included). Returns once subscribed; keeps listening in the background
        and re-subscribes after the backend comes back."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers."""

    async def close(self) -> None:
        """Release connections and background tasks."""
