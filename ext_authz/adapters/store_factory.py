"""`open_store`: the one place a store URL becomes a ByteStore.

    memory://                          MemoryStore (one process)
    redis://, rediss://, unix://       RedisStore, standalone
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

__all__ = ["SUPPORTED_SCHEMES", "open_store"]

SUPPORTED_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)


def open_store(url: str, *, key_prefix: str, timeout: float) -> ByteStore:
    """A ByteStore for `url`; ConfigError (`store.url: ...`) when it cannot be used."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SUPPORTED_SCHEMES:
        raise ConfigError(
            [
                f"store.url: unsupported scheme {scheme or '(none)'!r}; use one of "
                + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
            ]
        )
    if scheme == "memory":
        return MemoryStore(key_prefix)
    try:
        return RedisStore.from_url(url, key_prefix=key_prefix, timeout=timeout)
    except ValueError as exc:
        # Never echo the URL: it may carry a password.
        raise ConfigError([f"store.url: {exc}"]) from exc
