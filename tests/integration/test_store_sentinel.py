"""The store behaviour suite through Redis Sentinel (redis+sentinel://), and a real
failover: the master is killed mid-test; sessions replicated before the kill are
still readable from the promoted replica, through the same store object."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ext_authz.adapters.redis_store import RedisStore
from ext_authz.core.model import Identity
from ext_authz.errors import StoreUnavailable
from ext_authz.sessions import SessionRecord, SessionRepository
from tests.integration.redis_topology import RedisHarness, SentinelSetup, redis_sentinel
from tests.integration.store_suite import StoreBehaviour, eventually, run

pytestmark = pytest.mark.integration

SECRET = b"z" * 32


@pytest.fixture(scope="module")
def sentinel_setup() -> Iterator[SentinelSetup]:
    with redis_sentinel() as setup:
        yield setup


@pytest.fixture
def harness(sentinel_setup: SentinelSetup) -> RedisHarness:
    return RedisHarness(sentinel_setup.url, lambda: [sentinel_setup.master])


class TestSentinelStore(StoreBehaviour):
    pass


def test_sessions_survive_a_failover() -> None:
    # A fast failover (1 s without an answer from the master), after the test kills it.
    with redis_sentinel("failover", down_after_ms=1000) as setup:

        async def body() -> None:
            # 5 s per command: the dead master refuses connections at once, so the
            # timeout only has to spare a live server on a busy machine.
            store = RedisStore.from_url(setup.url, key_prefix="fo:", timeout=5)
            repo = SessionRepository(store, secret=SECRET, local_ttl=0)
            alice = Identity(sub="alice", email="alice@example.test", token="tok")
            try:
                cookies = [await repo.create("app", alice, time.time() + 600) for _ in range(5)]
                with setup.master.client() as c:
                    # Replicated before the kill: WAIT for the replica's ack.
                    assert c.execute_command("WAIT", 1, 30_000) == 1
                old_port = setup.master.port
                setup.master.kill()

                async def promoted_and_readable() -> bool:
                    try:
                        return await repo.get("app", cookies[0]) is not None
                    except StoreUnavailable:
                        return False

                await eventually(promoted_and_readable, timeout=40, what="failover")
                assert setup.current_master_port() == setup.replica.port != old_port
                records: list[SessionRecord | None] = [await repo.get("app", c) for c in cookies]
                assert all(r is not None and r.identity == alice for r in records)
                # Writes go to the new master too.
                fresh = await repo.create("app", alice, time.time() + 600)
                assert await repo.get("app", fresh) is not None
                assert await repo.end_all_for("app", "alice") == 6
            finally:
                await store.close()

        run(body())
