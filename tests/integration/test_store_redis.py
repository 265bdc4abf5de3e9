"""The store behaviour suite against a private redis-server, plus Redis faults
(down, hanging, restarted: the same store object recovers), what a raw copy of the
store reveals (nothing), and sessions shared by two replicas through Redis."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from ext_authz.adapters.redis_store import RedisStore
from ext_authz.adapters.store_factory import open_store
from ext_authz.core.model import Identity
from ext_authz.errors import ConfigError, StoreUnavailable
from ext_authz.ports import ByteStore, Namespace
from ext_authz.sessions import CredentialCache, LoginStateRepository, SessionRepository
from ext_authz.store_url import parse_store_url
from tests.integration.redis_topology import RedisHarness, RedisProcess, raw_entries, redis_server
from tests.integration.store_suite import StoreBehaviour, eventually, run

pytestmark = pytest.mark.integration

SECRET = b"s" * 32
# The stores' per-command timeout. The fault tests need it to fire when Redis hangs;
# every other command goes to a live local Redis, which must never hit it, however
# busy the machine: a second is far beyond a local round trip, and the fault tests
# run their operations concurrently, so it costs about one second per test.
TIMEOUT = 1.0
# A hang the store failed to cut off makes the test fail after this long; it bounds
# a failure only (the store itself gives up after 2 * TIMEOUT).
HANG_BOUND = 20.0


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisProcess]:
    with redis_server() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A server of the test's own, to stop, pause and restart."""
    with redis_server() as server:
        yield server


@pytest.fixture
def harness(shared_redis: RedisProcess) -> RedisHarness:
    return RedisHarness(shared_redis.url, lambda: [shared_redis])


class TestRedisStore(StoreBehaviour):
    pass


# --- construction -----------------------------------------------------------------


def test_open_store_picks_the_adapter_and_refuses_unknown_schemes() -> None:
    assert isinstance(open_store("redis://127.0.0.1:1/0", key_prefix="p:", timeout=1), RedisStore)
    assert isinstance(
        open_store("redis+cluster://127.0.0.1:1", key_prefix="p:", timeout=1), RedisStore
    )
    assert isinstance(
        open_store("redis+sentinel://127.0.0.1:1/mymaster/0", key_prefix="p:", timeout=1),
        RedisStore,
    )
    with pytest.raises(ConfigError, match=r"store\.url"):
        open_store("memcached://x", key_prefix="p:", timeout=1)
    with pytest.raises(ConfigError, match=r"store\.url") as info:
        open_store("redis+sentinel://u:hunter2@127.0.0.1:1", key_prefix="p:", timeout=1)
    assert "hunter2" not in str(info.value)


def test_multi_host_urls_are_split() -> None:
    # RedisStore connects to Sentinel and Cluster with these parts.
    sentinel = parse_store_url(
        "redis+sentinel://me:p%40ss@10.0.0.1:26380,[::1]:26381,host3/mymaster/2"
    )
    assert sentinel.hosts == (("10.0.0.1", 26380), ("::1", 26381), ("host3", 26379))
    assert (sentinel.username, sentinel.password) == ("me", "p@ss")
    assert (sentinel.master_name, sentinel.db) == ("mymaster", 2)
    cluster = parse_store_url("redis+cluster://:pw@a:7000,b:7001")
    assert cluster.hosts == (("a", 7000), ("b", 7001))
    assert (cluster.username, cluster.password) == (None, "pw")


# --- faults -----------------------------------------------------------------------


async def _assert_every_op_unavailable(store: ByteStore) -> None:
    """Every operation fails with StoreUnavailable (never hangs, never another error).

    They run at once: each one alone must fail, and together they cost one timeout."""
    ops: dict[str, Callable[[], Awaitable[object]]] = {
        "get": lambda: store.get(Namespace.SESSION, "k"),
        "set": lambda: store.set(Namespace.SESSION, "k", b"v", 10),
        "take": lambda: store.take(Namespace.LOGIN, "k"),
        "delete": lambda: store.delete(Namespace.SESSION, "k"),
        "index_add": lambda: store.index_add(Namespace.SUB_INDEX, "k", "m", 10),
        "index_pop_all": lambda: store.index_pop_all(Namespace.SUB_INDEX, "k"),
        "publish": lambda: store.publish_invalidation(["k"]),
        "ping": store.ping,
    }
    started = time.monotonic()
    elapsed: dict[str, float] = {}

    async def timed(name: str) -> object:
        try:
            return await ops[name]()
        finally:
            elapsed[name] = round(time.monotonic() - started, 2)

    try:
        async with asyncio.timeout(HANG_BOUND):
            results = await asyncio.gather(*(timed(n) for n in ops), return_exceptions=True)
    except TimeoutError:
        raise AssertionError(f"an operation hung for {HANG_BOUND}s; done: {elapsed}") from None
    print(f"seconds until each operation failed: {elapsed}")
    wrong = {n: r for n, r in zip(ops, results, strict=True) if not isinstance(r, StoreUnavailable)}
    assert not wrong, f"expected StoreUnavailable from every operation: {wrong}"


def test_stopped_redis_is_unavailable_and_the_same_store_recovers(
    own_redis: RedisProcess,
) -> None:
    async def body() -> None:
        store = RedisStore.from_url(own_redis.url, key_prefix="t:", timeout=TIMEOUT)
        other = RedisStore.from_url(own_redis.url, key_prefix="t:", timeout=TIMEOUT)
        got: list[list[str]] = []
        try:
            await store.set(Namespace.SESSION, "k", b"v", 30)
            await store.subscribe_invalidations(got.append)

            own_redis.stop()
            await _assert_every_op_unavailable(store)

            own_redis.start()
            # The same object, no reconnect call: pooled connections died with the old
            # server and are replaced on first use.
            await store.set(Namespace.SESSION, "k2", b"v2", 30)
            assert await store.get(Namespace.SESSION, "k2") == b"v2"
            await store.ping()

            # The listener re-subscribes by itself (with backoff).
            async def delivered() -> bool:
                await other.publish_invalidation(["after-restart"])
                await asyncio.sleep(0.1)
                return ["after-restart"] in got

            await eventually(delivered, what="listener to re-subscribe")
        finally:
            await store.close()
            await other.close()

    run(body())


def test_hanging_redis_times_out_then_recovers(own_redis: RedisProcess) -> None:
    async def body() -> None:
        store = RedisStore.from_url(own_redis.url, key_prefix="t:", timeout=TIMEOUT)
        try:
            await store.set(Namespace.SESSION, "k", b"v", 30)
            own_redis.pause()
            try:
                await _assert_every_op_unavailable(store)
            finally:
                own_redis.resume()
            assert await store.get(Namespace.SESSION, "k") == b"v"
        finally:
            await store.close()

    run(body())


def test_unreachable_at_start_then_subscribe_recovers(own_redis: RedisProcess) -> None:
    async def body() -> None:
        own_redis.stop()
        store = RedisStore.from_url(own_redis.url, key_prefix="t:", timeout=TIMEOUT)
        got: list[list[str]] = []
        try:
            with pytest.raises(StoreUnavailable):
                await store.subscribe_invalidations(got.append)
            own_redis.start()

            async def delivered() -> bool:
                await store.publish_invalidation(["late"])
                await asyncio.sleep(0.1)
                return ["late"] in got

            await eventually(delivered, what="listener to subscribe late")
        finally:
            await store.close()

    run(body())


# --- what the store holds --------------------------------------------------------


def alice() -> Identity:
    """An identity whose token lives an hour from now: made in the test that uses it,
    never at import (a module collected long before it runs would hold a stale one)."""
    return Identity(
        sub="alice-sub-8c1f",
        preferred_username="alice-username",
        email="alice@example.test",
        name="Alice Liddell-Secretname",
        groups=("wonderland-admins",),
        entitlements=("tea-party-entitlement",),
        attributes={"password": "attr-password-value", "nested": {"deep": "deep-attr-value"}},
        token="eyJhbGciOi.token-payload-XYZ.sig",
        id_token="eyJhbGciOi.id-token-payload-QRS.sig",
        provider="client-id-123",
        expires_at=time.time() + 3600,
    )


def test_a_raw_copy_of_the_store_reveals_nothing(shared_redis: RedisProcess) -> None:
    identity = alice()

    async def body() -> None:
        prefix = "dump-test:"
        store = RedisStore.from_url(shared_redis.url, key_prefix=prefix, timeout=1)
        sessions = SessionRepository(store, secret=SECRET, local_ttl=5)
        credentials = CredentialCache(store, secret=SECRET, local_ttl=5)
        logins = LoginStateRepository(store, secret=SECRET)
        basic = "Basic " + base64.b64encode(b"alice:app-password-789").decode()
        bearer = "Bearer " + identity.token
        state = "state-value-abcdef123456"
        binding = "login-cookie-value-0123456789abcdefghij"
        try:
            cookie = await sessions.create("whoami", identity, time.time() + 600)
            await credentials.put_verified("whoami", basic, identity, 60)
            await credentials.put_verified("whoami", bearer, identity, 60)
            await credentials.put_rejected("whoami", "Bearer wrong-token-555", "bad sig", 60)
            await logins.put(
                "whoami", state, binding, {"verifier": "pkce-verifier-777", "nonce": "nonce-888"}
            )
            raw = raw_entries([shared_redis], prefix)
            assert len(raw) == 6  # session, sub index, 3 credentials, 1 login state
            dump = b"\n".join(
                k.encode()
                + b"="
                + (v if isinstance(v, bytes) else b",".join(m.encode() for m in sorted(v)))
                for k, (v, _) in raw.items()
            )
            secrets = [
                cookie,
                identity.token,
                identity.id_token,
                "token-payload-XYZ",
                basic,
                basic.split(" ", 1)[1],
                "app-password-789",
                "wrong-token-555",
                identity.sub,
                identity.preferred_username,
                identity.email,
                identity.name,
                "wonderland-admins",
                "tea-party-entitlement",
                "attr-password-value",
                "deep-attr-value",
                state,
                binding,
                "pkce-verifier-777",
                "nonce-888",
                SECRET.decode(),
            ]
            for secret in secrets:
                assert secret.encode() not in dump, f"{secret[:6]}... found in the store"
            # ... and yet everything reads back through the repositories.
            sessions.forget_local()
            record = await sessions.get("whoami", cookie)
            assert record is not None and record.identity == identity
            assert await logins.take("whoami", state, binding) == {
                "verifier": "pkce-verifier-777",
                "nonce": "nonce-888",
            }
        finally:
            await store.close()

    run(body())


# --- two replicas sharing sessions through Redis ---------------------------------


def test_sign_out_reaches_the_other_replica_through_pub_sub(shared_redis: RedisProcess) -> None:
    identity = alice()

    async def body() -> None:
        prefix = "replicas-test:"
        store_a = RedisStore.from_url(shared_redis.url, key_prefix=prefix, timeout=1)
        store_b = RedisStore.from_url(shared_redis.url, key_prefix=prefix, timeout=1)
        # A local TTL far longer than the test: only the invalidation can end it.
        a = SessionRepository(store_a, secret=SECRET, local_ttl=300)
        b = SessionRepository(store_b, secret=SECRET, local_ttl=300)
        try:
            await a.start_invalidation_listener()
            await b.start_invalidation_listener()
            cookie1 = await a.create("whoami", identity, time.time() + 600)
            cookie2 = await b.create("whoami", identity, time.time() + 600)
            assert (await b.get("whoami", cookie1)) is not None  # now in b's local cache
            assert (await a.get("whoami", cookie2)) is not None
            assert await a.end_all_for("whoami", identity.sub) == 2

            async def gone_on_b() -> bool:
                return await b.get("whoami", cookie1) is None

            await eventually(gone_on_b, what="b to drop the session")
            assert await a.get("whoami", cookie2) is None
        finally:
            await store_a.close()
            await store_b.close()

    run(body())


def test_a_session_seen_recently_survives_a_redis_outage(own_redis: RedisProcess) -> None:
    identity = alice()

    async def body() -> None:
        store = RedisStore.from_url(own_redis.url, key_prefix="t:", timeout=TIMEOUT)
        repo = SessionRepository(store, secret=SECRET, local_ttl=30)
        writer = SessionRepository(store, secret=SECRET, local_ttl=0)
        try:
            seen = await repo.create("whoami", identity, time.time() + 600)
            unseen = await writer.create("whoami", identity, time.time() + 600)
            own_redis.stop()
            record = await repo.get("whoami", seen)
            assert record is not None and record.identity.sub == identity.sub
            with pytest.raises(StoreUnavailable):
                await repo.get("whoami", unseen)
            own_redis.start()  # empty: no persistence
            assert await repo.get("whoami", unseen) is None
        finally:
            await store.close()

    run(body())
