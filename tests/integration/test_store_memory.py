"""The store behaviour suite against MemoryStore (memory://), plus what only the
memory store does: an injectable clock and the sweep that bounds its size."""

from __future__ import annotations

import uuid

import pytest

from ext_authz.adapters.memory_store import MemoryStore
from ext_authz.adapters.store_factory import open_store
from ext_authz.ports import ByteStore, Namespace
from tests.integration.store_suite import RawEntry, StoreBehaviour, run

pytestmark = pytest.mark.integration


class MemoryHarness:
    def __init__(self) -> None:
        self.prefix = f"t-{uuid.uuid4().hex[:8]}:"
        self._root = MemoryStore(self.prefix)

    def open(self, prefix: str | None = None) -> ByteStore:
        return self._root.sibling(self.prefix if prefix is None else prefix)

    async def raw_entries(self) -> dict[str, RawEntry]:
        return {
            k: (v, ttl)
            for k, (v, ttl) in self._root.raw_entries().items()
            if k.startswith(self.prefix)
        }


@pytest.fixture
def harness() -> MemoryHarness:
    return MemoryHarness()


class TestMemoryStore(StoreBehaviour):
    pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_open_store_memory_url() -> None:
    assert isinstance(open_store("memory://", key_prefix="p:", timeout=1), MemoryStore)


def test_injected_clock_drives_expiry() -> None:
    async def body() -> None:
        clock = FakeClock()
        store = MemoryStore("p:", clock=clock)
        await store.set(Namespace.SESSION, "k", b"v", 10)
        await store.index_add(Namespace.SUB_INDEX, "i", "m", 10)
        clock.now += 9.999
        assert await store.get(Namespace.SESSION, "k") == b"v"
        clock.now += 0.001
        assert await store.get(Namespace.SESSION, "k") is None
        assert await store.index_pop_all(Namespace.SUB_INDEX, "i") == []

    run(body())


def test_ttl_is_rounded_up_to_whole_milliseconds() -> None:
    async def body() -> None:
        clock = FakeClock()
        store = MemoryStore("p:", clock=clock)
        await store.set(Namespace.SESSION, "k", b"v", 0.0001)
        assert await store.get(Namespace.SESSION, "k") == b"v"
        clock.now += 0.001
        assert await store.get(Namespace.SESSION, "k") is None

    run(body())


def test_sweep_drops_expired_keys_nobody_reads() -> None:
    async def body() -> None:
        clock = FakeClock()
        store = MemoryStore("p:", clock=clock, sweep_interval=5)
        for i in range(100):
            await store.set(Namespace.CREDENTIAL, f"k{i}", b"v", 1)
            await store.index_add(Namespace.SUB_INDEX, f"i{i}", "m", 1)
        clock.now += 6
        await store.set(Namespace.CREDENTIAL, "fresh", b"v", 60)  # a write triggers the sweep
        backend = store._backend
        assert list(backend.values) == ["p:cred:fresh"]
        assert backend.sets == {}

    run(body())


def test_invalid_ttl_is_refused() -> None:
    async def body() -> None:
        store = MemoryStore("p:")
        with pytest.raises(ValueError):
            await store.set(Namespace.SESSION, "k", b"v", 0)

    run(body())
