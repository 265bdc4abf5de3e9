"""The store behaviour suite against a 3-master Redis Cluster (redis+cluster://),
plus: keys really spread over the masters, and the store recovers when a master
restarts (no restart of the store object)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ext_authz.adapters.redis_store import RedisStore
from ext_authz.core.model import Identity
from ext_authz.crypto import session_key_id
from ext_authz.errors import StoreUnavailable
from ext_authz.ports import Namespace
from ext_authz.sessions import SessionRepository
from tests.integration.redis_topology import Cluster, RedisHarness, redis_cluster
from tests.integration.store_suite import StoreBehaviour, eventually, run

pytestmark = pytest.mark.integration

SECRET = b"c" * 32


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with redis_cluster(3) as c:
        yield c


@pytest.fixture
def harness(cluster: Cluster) -> RedisHarness:
    return RedisHarness(cluster.url, lambda: cluster.nodes)


class TestClusterStore(StoreBehaviour):
    pass


def test_keys_spread_over_every_master(cluster: Cluster) -> None:
    async def body() -> None:
        store = RedisStore.from_url(cluster.url, key_prefix="spread:", timeout=5)
        try:
            for i in range(60):
                await store.set(Namespace.SESSION, f"k{i}", b"v", 30)
                await store.index_add(Namespace.SUB_INDEX, f"i{i}", "m", 30)
            for i in range(60):
                assert await store.get(Namespace.SESSION, f"k{i}") == b"v"
                assert await store.index_pop_all(Namespace.SUB_INDEX, f"i{i}") == ["m"]
        finally:
            await store.close()
        per_node = []
        for node in cluster.nodes:
            with node.client() as c:
                per_node.append(sum(1 for _ in c.scan_iter(match="spread:*")))
        assert sum(per_node) == 60 and all(n > 0 for n in per_node), per_node

    run(body())


def test_sessions_work_and_survive_a_master_restart(cluster: Cluster) -> None:
    """A master without persistence comes back empty but keeps its slots (nodes.conf):
    the same store object carries on; sessions on other masters are untouched."""

    async def body() -> None:
        # 5 s per command: the stopped master refuses connections at once, so the
        # timeout only has to spare the live masters on a busy machine.
        store = RedisStore.from_url(cluster.url, key_prefix="restart:", timeout=5)
        repo = SessionRepository(store, secret=SECRET, local_ttl=0)
        alice = Identity(sub="alice", email="alice@example.test")
        try:
            cookies = [await repo.create("app", alice, time.time() + 600) for _ in range(12)]
            victim = cluster.nodes[0]
            with victim.client() as c:
                on_victim_keys = {k.decode() for k in c.scan_iter(match="restart:*")}
            on_victim = [
                f"restart:{Namespace.SESSION}:{session_key_id(cookie)}" in on_victim_keys
                for cookie in cookies
            ]
            assert any(on_victim) and not all(on_victim), on_victim
            victim.stop()
            outcomes = []
            for cookie in cookies:
                try:
                    outcomes.append(await repo.get("app", cookie) is not None)
                except StoreUnavailable:
                    outcomes.append(None)
            # Sessions on the stopped master are unavailable, the others still read.
            assert outcomes == [None if v else True for v in on_victim], outcomes
            victim.start()

            async def all_answer() -> bool:
                try:
                    for cookie in cookies:
                        await repo.get("app", cookie)
                    return True
                except StoreUnavailable:
                    return False

            await eventually(all_answer, what="cluster to answer again")
            after = [await repo.get("app", c) is not None for c in cookies]
            # Sessions on the restarted (empty) master are gone; the others remain.
            assert after == [not v for v in on_victim]
            fresh = await repo.create("app", alice, time.time() + 600)
            assert await repo.get("app", fresh) is not None
        finally:
            await store.close()

    run(body())
