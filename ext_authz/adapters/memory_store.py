"""`memory://`: the embedded ByteStore (one process; everything lost on restart).

It behaves like the Redis store in every way the behaviour suite checks: TTLs on a
monotonic clock (injectable for tests), single-use `take`, per-key sets with a TTL
that only grows, invalidation pub/sub. Expired entries are dropped lazily on read and
by a sweep that runs at most every `sweep_interval` seconds on writes, so memory
does not grow with keys nobody reads again.

`sibling()` gives a second store object over the same data, the way a second
replica sees the same Redis: tests use it to check that invalidations reach others.
Keys are kept as the Redis store writes them (`{prefix}{namespace}:{key}`), so
`raw_entries()` lets tests check prefixes and TTLs the same way.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ext_authz.ports import ByteStore

__all__ = ["MemoryStore"]

_log = logging.getLogger(__name__)

InvalidationCallback = Callable[[list[str]], Awaitable[None] | None]


@dataclass
class _Backend:
    """The data every sibling shares: full key -> (value, monotonic deadline)."""

    values: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    sets: dict[str, tuple[set[str], float]] = field(default_factory=dict)
    # Per key prefix, like Redis's per-prefix channel.
    subscribers: dict[str, list[InvalidationCallback]] = field(default_factory=dict)
    last_sweep: float = 0.0


class MemoryStore:
    def __init__(
        self,
        key_prefix: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval: float = 10.0,
        _backend: _Backend | None = None,
    ) -> None:
        self._prefix = key_prefix
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._backend = _backend if _backend is not None else _Backend(last_sweep=clock())
        self._callbacks: list[InvalidationCallback] = []

    def sibling(self, key_prefix: str | None = None) -> MemoryStore:
        """Another store object over the same data (a second "replica")."""
        return MemoryStore(
            self._prefix if key_prefix is None else key_prefix,
            clock=self._clock,
            sweep_interval=self._sweep_interval,
            _backend=self._backend,
        )

    def _full(self, namespace: str, key: str) -> str:
        return f"{self._prefix}{namespace}:{key}"

    def _deadline(self, ttl: float, now: float | None = None) -> float:
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        # Whole milliseconds, rounded up, as the protocol (and Redis PX) says.
        return (self._clock() if now is None else now) + math.ceil(ttl * 1000) / 1000

    def _maybe_sweep(self) -> None:
        now = self._clock()
        backend = self._backend
        if now - backend.last_sweep < self._sweep_interval:
            return
        backend.last_sweep = now
        for k in [k for k, (_, d) in backend.values.items() if now >= d]:
            del backend.values[k]
        for k in [k for k, (_, d) in backend.sets.items() if now >= d]:
            del backend.sets[k]

    # --- values -----------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> bytes | None:
        full = self._full(namespace, key)
        entry = self._backend.values.get(full)
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._backend.values[full]
            return None
        return entry[0]

    async def set(self, namespace: str, key: str, value: bytes, ttl: float) -> None:
        deadline = self._deadline(ttl)
        self._backend.values[self._full(namespace, key)] = (bytes(value), deadline)
        self._maybe_sweep()

    async def claim(self, namespace: str, key: str, ttl: float) -> bool:
        # No await between the check and the set: atomic under asyncio.
        if await self.get(namespace, key) is not None:
            return False
        self._backend.values[self._full(namespace, key)] = (b"1", self._deadline(ttl))
        return True

    async def take(self, namespace: str, key: str) -> bytes | None:
        # No await between the read and the delete: atomic under asyncio.
        entry = self._backend.values.pop(self._full(namespace, key), None)
        if entry is None or self._clock() >= entry[1]:
            return None
        return entry[0]

    async def delete(self, namespace: str, key: str) -> None:
        self._backend.values.pop(self._full(namespace, key), None)

    # --- counters ---------------------------------------------------------------

    async def count_up(self, namespace: str, key: str, ttl: float) -> tuple[int, float]:
        # No await between the read and the write: atomic under asyncio.
        full = self._full(namespace, key)
        now = self._clock()
        entry = self._backend.values.get(full)
        if entry is None or now >= entry[1]:
            count, deadline = 1, self._deadline(ttl, now)
            self._maybe_sweep()
        else:
            count, deadline = int(entry[0]) + 1, entry[1]
        self._backend.values[full] = (str(count).encode(), deadline)
        return count, deadline - now

    async def count_down(self, namespace: str, key: str) -> tuple[int, float]:
        full = self._full(namespace, key)
        now = self._clock()
        entry = self._backend.values.get(full)
        if entry is None or now >= entry[1]:
            return 0, 0.0
        count = max(0, int(entry[0]) - 1)
        self._backend.values[full] = (str(count).encode(), entry[1])
        return count, entry[1] - now

    async def count(self, namespace: str, key: str) -> tuple[int, float]:
        full = self._full(namespace, key)
        entry = self._backend.values.get(full)
        now = self._clock()
        if entry is None or now >= entry[1]:
            return 0, 0.0
        return int(entry[0]), entry[1] - now

    # --- indexes ----------------------------------------------------------------

    async def index_add(self, namespace: str, key: str, member: str, ttl: float) -> None:
        full = self._full(namespace, key)
        deadline = self._deadline(ttl)
        now = self._clock()
        entry = self._backend.sets.get(full)
        if entry is None or now >= entry[1]:
            self._backend.sets[full] = ({member}, deadline)
        else:
            members, old_deadline = entry
            members.add(member)
            self._backend.sets[full] = (members, max(old_deadline, deadline))
        self._maybe_sweep()

    async def index_pop_all(self, namespace: str, key: str) -> list[str]:
        entry = self._backend.sets.pop(self._full(namespace, key), None)
        if entry is None or self._clock() >= entry[1]:
            return []
        return sorted(entry[0])

    # --- invalidation pub/sub ---------------------------------------------------

    async def publish_invalidation(self, keys: list[str]) -> None:
        if not keys:
            return
        for callback in list(self._backend.subscribers.get(self._prefix, [])):
            try:
                result = callback(list(keys))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # One broken subscriber must not stop the others (nor the publisher).
                _log.exception("invalidation callback failed")

    async def subscribe_invalidations(self, callback: InvalidationCallback) -> None:
        if callback not in self._callbacks:
            self._callbacks.append(callback)
            self._backend.subscribers.setdefault(self._prefix, []).append(callback)

    # --- health -----------------------------------------------------------------

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        subscribers = self._backend.subscribers.get(self._prefix, [])
        for callback in self._callbacks:
            if callback in subscribers:
                subscribers.remove(callback)
        self._callbacks.clear()

    # --- for tests --------------------------------------------------------------

    def raw_entries(self) -> dict[str, tuple[bytes | frozenset[str], float]]:
        """Every live key (full name) with its value and remaining TTL in seconds."""
        now = self._clock()
        out: dict[str, tuple[bytes | frozenset[str], float]] = {}
        for k, (value, deadline) in self._backend.values.items():
            if now < deadline:
                out[k] = (value, deadline - now)
        for k, (members, deadline) in self._backend.sets.items():
            if now < deadline:
                out[k] = (frozenset(members), deadline - now)
        return out


def _check(store: MemoryStore) -> ByteStore:  # mypy: MemoryStore satisfies the port
    return store
