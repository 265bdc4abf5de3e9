"""The in-process TTL cache in front of the store (SPEC §8 `local_cache_ttl`).

It lets a replica answer a session (or a cached credential) it has seen recently
without a store round trip, and keeps honouring it for `ttl` seconds while the store
is down. Staleness is bounded by `ttl`; sign-out shortens it further through
invalidation messages (`ext_authz.sessions`).

Bounded: at most `max_entries`; when full, the least recently used entry goes.
`ttl <= 0` disables the cache (every `get` misses, `put` is a no-op).
Single-threaded asyncio use only (no locks).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LocalCache"]

K = TypeVar("K")
V = TypeVar("V")


class LocalCache(Generic[K, V]):
    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, deadline = entry
        if self._clock() >= deadline:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        """Remember `value` for min(`ttl`, the cache's ttl) seconds."""
        if not self.enabled:
            return
        lifetime = self.ttl if ttl is None else min(self.ttl, ttl)
        if lifetime <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (value, self._clock() + lifetime)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._evict()

    def delete(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        # The least recently used entry goes; it is the likeliest to be expired
        # anyway, and this keeps `put` O(1) (no scan of a full cache).
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
