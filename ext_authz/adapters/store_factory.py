"""`open_store`: the one place a store URL becomes a ByteStore.

    memory://                          MemoryStore (one process)
    redis://, rediss://                RedisStore, standalone
    redis+sentinel://h:p,h:p/NAME/db   RedisStore through Sentinel (failover)
    redis+cluster://h:p,h:p            RedisStore on Redis Cluster

Construction does no I/O (clients connect on first use), so a store that is down at
start-up is a StoreUnavailable on first use, not a crash here.
"""

from __future__ import annotations

from ext_authz.adapters.memory_store import MemoryStore
from ext_authz.adapters.redis_store import RedisStore
from ext_authz.errors import ConfigError
from ext_authz.ports import ByteStore
from ext_authz.store_url import parse_store_url

__all__ = ["open_store"]


def open_store(url: str, *, key_prefix: str, timeout: float) -> ByteStore:
    """A ByteStore for `url`; ConfigError (`store.url: ...`) when it cannot be used."""
    try:
        kind = parse_store_url(url).kind
        if kind == "memory":
            return MemoryStore(key_prefix)
        return RedisStore.from_url(url, key_prefix=key_prefix, timeout=timeout)
    except ValueError as exc:
        # The parser's messages never echo the URL: it may carry a password.
        raise ConfigError([f"store.url: {exc}"]) from None
