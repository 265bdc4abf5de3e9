"""The Redis ByteStore: standalone, Sentinel and Cluster, through redis-py's asyncio API.

URLs (`RedisStore.from_url`):

    redis://[user:pass@]host:port/db        rediss:// for TLS
    redis+sentinel://[user:pass@]h:p,h:p/MASTER_NAME/db
    redis+cluster://[user:pass@]h:p,h:p

Keys are `{prefix}{namespace}:{key}`. Every operation touches a single key, so Cluster
needs no hash tags. Multi-step operations on one key (index add with a growing TTL,
pop-all) are tiny Lua scripts: atomic, one round trip, and routed by their key in
Cluster mode.

Faults: every command runs with socket and connect timeouts of `timeout`, one retry
on a *connection* error (so a pooled connection left dead by a Redis restart is
replaced transparently) and none on a timeout, all inside an overall deadline of
2 x `timeout`. Any library error (connection, timeout, cluster down, read-only
replica, ...) becomes `StoreUnavailable`; no redis-py exception escapes. Nothing here
needs restarting after Redis comes back: connections are re-made on demand, and the
invalidation listener re-subscribes with backoff.

Cluster: redis-py's Cluster client also retries once on a timeout, after re-learning
the topology, so a command whose reply was lost in a fault may run twice (a count
counted twice). The store has it learn the topology before a command, never inside
one, so that this cannot happen when nothing failed.

Invalidations travel on the channel `{prefix}invalidate` as a JSON list of keys.
Messages sent while a listener is disconnected are lost; the local cache's TTL bounds
the staleness that can cause (SPEC §8).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from ext_authz.errors import StoreUnavailable
from ext_authz.ports import ByteStore
from ext_authz.store_url import parse_store_url

__all__ = ["RedisStore"]

_log = logging.getLogger(__name__)

T = TypeVar("T")
InvalidationCallback = Callable[[list[str]], Awaitable[None] | None]

# What a Redis fault can look like from redis-py (asyncio.TimeoutError is the
# builtin TimeoutError, an OSError, in 3.11).
_FAULTS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

# SADD, then make the set live at least ARGV[2] ms more. PTTL is -1 for a set SADD
# just created (no TTL), which the comparison also covers; PEXPIRE GT would not.
_INDEX_ADD = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

_INDEX_POP_ALL = """
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
"""

# INCR, and give a new counter its window (a fixed window from the first count).
# Returns {count, ms left}.
_COUNT_UP = """
local existed = redis.call('EXISTS', KEYS[1])
local n = redis.call('INCR', KEYS[1])
if existed == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {n, left}
"""

_COUNT_DOWN = """
local n = redis.call('GET', KEYS[1])
if not n then
  return {0, 0}
end
if tonumber(n) > 0 then
  n = redis.call('DECR', KEYS[1])
end
return {tonumber(n), redis.call('PTTL', KEYS[1])}
"""

_COUNT = """
local n = redis.call('GET', KEYS[1])
if not n then
  return {0, 0}
end
return {tonumber(n), redis.call('PTTL', KEYS[1])}
"""

_BACKOFF_START = 0.05
_BACKOFF_MAX = 2.0
_LISTENER_POLL = 1.0  # seconds a get_message call waits
_LISTENER_PING_EVERY = 5  # idle polls between pings (detects dead connections)


class RedisStore:
    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        key_prefix: str,
        timeout: float,
        extra_closables: list[Redis] | None = None,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._timeout = timeout
        self._deadline = 2 * timeout
        self._channel = f"{key_prefix}invalidate"
        self._extra_closables = extra_closables or []
        self._callbacks: list[InvalidationCallback] = []
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closing = False

    # --- construction -----------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str, timeout: float) -> RedisStore:
        """Build a store from a URL (see the module docstring). Connects lazily."""
        scheme = url.split("://", 1)[0].lower()
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # Retry once, at once, and only when the connection broke (a pooled
            # connection Redis closed on restart); a timeout is not retried, so a
            # hanging Redis costs one `timeout`.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        if scheme in ("redis", "rediss"):
            client: Redis | RedisCluster = Redis.from_url(url, **common)
            return cls(client, key_prefix=key_prefix, timeout=timeout)
        # Several hosts: urlsplit cannot read them; the config's own parser can (and
        # validated this URL at start-up).
        parsed = parse_store_url(url)
        if parsed.kind == "sentinel":
            sentinel_kwargs = {k: v for k, v in common.items() if k.startswith("socket_")}
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(parsed.hosts), sentinel_kwargs=sentinel_kwargs, **common
            )
            master = sentinel.master_for(
                parsed.master_name,
                db=parsed.db,
                username=parsed.username,
                password=parsed.password,
                **common,
            )
            return cls(
                master,
                key_prefix=key_prefix,
                timeout=timeout,
                extra_closables=list(sentinel.sentinels),
            )
        if parsed.kind == "cluster":
            cluster = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in parsed.hosts],
                username=parsed.username,
                password=parsed.password,
                **common,
            )
            return cls(cluster, key_prefix=key_prefix, timeout=timeout)
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}")

    # --- plumbing ---------------------------------------------------------------

    def _full(self, namespace: str, key: str) -> str:
        return f"{self._prefix}{namespace}:{key}"

    async def _run(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._deadline):
                if isinstance(self._client, RedisCluster):
                    # Learn the topology before the command, not inside it: redis-py
                    # resolves a command's routing on the startup nodes before it
                    # initializes, so concurrent first commands of a new client raced
                    # that initialization, lost their connections and were retried,
                    # after some had run (a count counted twice). Once initialized,
                    # this returns at once; after a fault, it re-learns under
                    # redis-py's own lock.
                    await self._client.initialize()
                return await op()
        except _FAULTS as exc:
            # The message names the operation and the error class only: never a key
            # or value (they may be secrets' hashes, but logs need neither).
            raise StoreUnavailable(f"redis {what}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _ms(ttl: float) -> int:
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        return max(1, math.ceil(ttl * 1000))

    # --- values -----------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> bytes | None:
        full = self._full(namespace, key)
        value = await self._run("get", lambda: self._client.get(full))
        return _as_bytes(value)

    async def set(self, namespace: str, key: str, value: bytes, ttl: float) -> None:
        full, ms = self._full(namespace, key), self._ms(ttl)
        await self._run("set", lambda: self._client.set(full, value, px=ms))

    async def claim(self, namespace: str, key: str, ttl: float) -> bool:
        full, ms = self._full(namespace, key), self._ms(ttl)
        done = await self._run("claim", lambda: self._client.set(full, b"1", px=ms, nx=True))
        return bool(done)

    async def take(self, namespace: str, key: str) -> bytes | None:
        full = self._full(namespace, key)
        value = await self._run("take", lambda: self._client.getdel(full))
        return _as_bytes(value)

    async def delete(self, namespace: str, key: str) -> None:
        full = self._full(namespace, key)
        await self._run("delete", lambda: self._client.delete(full))

    # --- counters ---------------------------------------------------------------

    async def count_up(self, namespace: str, key: str, ttl: float) -> tuple[int, float]:
        full, ms = self._full(namespace, key), self._ms(ttl)
        reply = await self._run(
            "count_up", lambda: _awaitable(self._client.eval(_COUNT_UP, 1, full, str(ms)))
        )
        return _counter(reply)

    async def count_down(self, namespace: str, key: str) -> tuple[int, float]:
        full = self._full(namespace, key)
        reply = await self._run(
            "count_down", lambda: _awaitable(self._client.eval(_COUNT_DOWN, 1, full))
        )
        return _counter(reply)

    async def count(self, namespace: str, key: str) -> tuple[int, float]:
        full = self._full(namespace, key)
        reply = await self._run("count", lambda: _awaitable(self._client.eval(_COUNT, 1, full)))
        return _counter(reply)

    # --- indexes ----------------------------------------------------------------

    async def index_add(self, namespace: str, key: str, member: str, ttl: float) -> None:
        full, ms = self._full(namespace, key), self._ms(ttl)
        await self._run(
            "index_add",
            lambda: _awaitable(self._client.eval(_INDEX_ADD, 1, full, member, str(ms))),
        )

    async def index_pop_all(self, namespace: str, key: str) -> list[str]:
        full = self._full(namespace, key)
        members = await self._run(
            "index_pop_all", lambda: _awaitable(self._client.eval(_INDEX_POP_ALL, 1, full))
        )
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members or [])

    # --- invalidation pub/sub ---------------------------------------------------

    async def publish_invalidation(self, keys: list[str]) -> None:
        if not keys:
            return
        message = json.dumps(list(keys))
        await self._run("publish", lambda: self._client.publish(self._channel, message))

    async def subscribe_invalidations(self, callback: InvalidationCallback) -> None:
        """Register `callback` and return once the listener is subscribed.

        Raises StoreUnavailable when it cannot subscribe within the deadline; the
        callback stays registered and the listener keeps retrying in the background,
        so a caller may carry on (and need not call again)."""
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        if self._listener is None or self._listener.done():
            self._closing = False
            self._listener = asyncio.create_task(self._listen(), name="redis-invalidations")
        try:
            async with asyncio.timeout(self._deadline + self._timeout):
                await self._subscribed.wait()
        except TimeoutError as exc:
            raise StoreUnavailable("redis subscribe: not subscribed yet; retrying") from exc

    async def _listen(self) -> None:
        backoff = _BACKOFF_START
        while not self._closing:
            pubsub: Any = None
            try:
                if isinstance(self._client, RedisCluster):
                    # ClusterPubSub picks its node from the slot map, which must be
                    # loaded first (a fresh client has none: KeyError otherwise).
                    async with asyncio.timeout(self._deadline):
                        await self._client.initialize()
                pubsub = self._client.pubsub()
                await self._subscribe(pubsub)
                if backoff > _BACKOFF_START:
                    _log.info("invalidation listener re-subscribed")
                self._subscribed.set()
                backoff = _BACKOFF_START
                idle = 0
                while True:
                    msg = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_LISTENER_POLL
                    )
                    if msg is None:
                        idle += 1
                        if idle >= _LISTENER_PING_EVERY:
                            idle = 0
                            async with asyncio.timeout(self._deadline):
                                await pubsub.ping()
                        continue
                    if msg.get("type") == "message":
                        await self._dispatch(msg.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The listener must outlive any fault: log, back off, re-subscribe.
                self._subscribed.clear()
                if not self._closing:
                    _log.warning(
                        "invalidation listener lost Redis (%s); retrying in %.2fs",
                        type(exc).__name__,
                        backoff,
                    )
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(pubsub.aclose(), self._timeout)
            if self._closing:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _subscribe(self, pubsub: Any) -> None:
        """Subscribe and wait for Redis to confirm it (so a publish right after
        `subscribe_invalidations` returns is not missed)."""
        async with asyncio.timeout(self._deadline + self._timeout):
            await pubsub.subscribe(self._channel)
            while True:
                msg = await pubsub.get_message(timeout=self._timeout)
                if msg is not None and msg.get("type") == "subscribe":
                    return
                if msg is not None and msg.get("type") == "message":
                    await self._dispatch(msg.get("data"))

    async def _dispatch(self, data: Any) -> None:
        try:
            keys = json.loads(data)
        except (TypeError, ValueError):
            _log.warning("ignored a malformed invalidation message")
            return
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            _log.warning("ignored a malformed invalidation message")
            return
        for callback in list(self._callbacks):
            try:
                result = callback(keys)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log.exception("invalidation callback failed")

    # --- health / lifecycle -----------------------------------------------------

    async def ping(self) -> None:
        await self._run("ping", lambda: _awaitable(self._client.ping()))

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        self._subscribed.clear()
        with contextlib.suppress(Exception):
            await self._client.aclose()
        for extra in self._extra_closables:
            with contextlib.suppress(Exception):
                await extra.aclose()


def _counter(reply: Any) -> tuple[int, float]:
    """A {count, ms left} script reply as (count, seconds left)."""
    try:
        count, left = int(reply[0]), int(reply[1])
    except (TypeError, ValueError, IndexError) as exc:
        raise StoreUnavailable(f"redis counter: unexpected reply {type(reply).__name__}") from exc
    return count, max(0, left) / 1000


def _as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode()


async def _awaitable(value: Any) -> Any:
    """redis-py types some commands as `Awaitable[X] | X`; on the asyncio client they
    are always awaitable."""
    return await value if inspect.isawaitable(value) else value


def _check(store: RedisStore) -> ByteStore:  # mypy: RedisStore satisfies the port
    return store
