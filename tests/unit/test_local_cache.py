"""ext_authz.local_cache.LocalCache: TTL on an injected monotonic clock, bounded size."""

from __future__ import annotations

from ext_authz.local_cache import LocalCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache: LocalCache[str, int] = LocalCache(2.0, clock=clock)
    cache.put("a", 1)
    assert cache.get("a") == 1
    clock.now += 1.999
    assert cache.get("a") == 1
    clock.now += 0.001
    assert cache.get("a") is None
    assert len(cache) == 0


def test_per_entry_ttl_is_bounded_by_the_cache_ttl() -> None:
    clock = Clock()
    cache: LocalCache[str, int] = LocalCache(2.0, clock=clock)
    cache.put("short", 1, ttl=0.5)
    cache.put("long", 2, ttl=60)
    clock.now += 0.6
    assert cache.get("short") is None
    assert cache.get("long") == 2
    clock.now += 1.5
    assert cache.get("long") is None
    cache.put("dead", 3, ttl=0)
    assert cache.get("dead") is None


def test_zero_ttl_disables_the_cache() -> None:
    cache: LocalCache[str, int] = LocalCache(0)
    assert not cache.enabled
    cache.put("a", 1)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_delete_and_clear() -> None:
    cache: LocalCache[str, int] = LocalCache(10)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.delete("a")
    cache.delete("missing")
    assert cache.get("a") is None and cache.get("b") == 2
    cache.clear()
    assert cache.get("b") is None


def test_size_is_bounded_least_recently_used_goes_first() -> None:
    cache: LocalCache[str, int] = LocalCache(10, max_entries=3)
    for i, key in enumerate("abc"):
        cache.put(key, i)
    assert cache.get("a") == 0  # "a" is now the most recently used
    cache.put("d", 3)
    assert len(cache) == 3
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == [0, 2, 3]


def test_put_overwrites_and_renews() -> None:
    clock = Clock()
    cache: LocalCache[str, int] = LocalCache(2.0, clock=clock)
    cache.put("a", 1)
    clock.now += 1.5
    cache.put("a", 2)
    clock.now += 1.5
    assert cache.get("a") == 2
