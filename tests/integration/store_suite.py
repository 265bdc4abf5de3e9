"""The one behaviour suite every ByteStore must pass (oauth2-proxy's
session_store_tests idea): memory, Redis, Redis Cluster and Sentinel run the same
tests through a small harness.

Use: subclass `StoreBehaviour` in a test module (`class TestX(StoreBehaviour)`) and
provide a function-scoped `harness` fixture returning a `StoreHarness` with a prefix
unique to the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ext_authz.core.model import Identity
from ext_authz.ports import ByteStore, Namespace
from ext_authz.sessions import SessionRepository

T = TypeVar("T")

# (value, remaining TTL in seconds or None when the key has no TTL). Sets come back
# as a frozenset of members.
RawEntry = tuple[bytes | frozenset[str], float | None]

ALL_NAMESPACES = (
    Namespace.SESSION,
    Namespace.SUB_INDEX,
    Namespace.CREDENTIAL,
    Namespace.LOGIN,
    Namespace.CLAIM,
    Namespace.SID_INDEX,
)


class StoreHarness(Protocol):
    prefix: str

    def open(self, prefix: str | None = None) -> ByteStore:
        """A new store object (think: another replica) over the same backend."""

    async def raw_entries(self) -> dict[str, RawEntry]:
        """Every key under `prefix`, as the backend holds it."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """No pytest-asyncio in this project: each test runs its own event loop."""
    return asyncio.run(coro)


# How long a condition may take before the test fails: it only bounds a failure (a
# key that never expires, a message that never arrives); a passing test returns as
# soon as the condition holds.
EVENTUALLY = 30.0

# Rounds of concurrent first calls on fresh stores (test_concurrent_counts_are_all_counted):
# a race that showed in one round in eight shows in 20 rounds 93 times in 100.
ROUNDS_OF_FIRST_CALLS = 20


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = EVENTUALLY,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def within_ttl(
    probe: Callable[[str, float], Awaitable[T]], *, first_ttl: float = 0.25
) -> tuple[str, float, T]:
    """Run `probe(key, ttl)` (write `key` with `ttl`, then read what the test wants to
    see while the key lives) until one run finished within its TTL; return that run's
    key, TTL and result.

    A result only proves something if the backend's clock could not have reached the
    TTL yet: the run started before the write and ended after the read, so a run
    shorter than its TTL is such a proof. On a slow machine a run may outlast its TTL;
    then the next run gets a fresh key and twice the TTL. The test never depends on
    the machine's speed, and a fast run still uses short TTLs."""
    ttl = first_ttl
    for attempt in range(10):
        key = f"ttl-{attempt}"
        started = time.monotonic()
        result = await probe(key, ttl)
        if time.monotonic() - started < ttl:
            return key, ttl, result
        ttl *= 2
    raise AssertionError(f"no run of the probe finished within its TTL (last: {ttl / 2}s)")


class StoreBehaviour:
    """Subclasses get every test below; they only supply the `harness` fixture."""

    # --- values ---------------------------------------------------------------------

    def test_get_set_roundtrip_binary_values(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            try:
                assert await store.get(Namespace.SESSION, "missing") is None
                value = bytes(range(256)) + b"\x00end"
                await store.set(Namespace.SESSION, "k", value, 30)
                assert await store.get(Namespace.SESSION, "k") == value
                await store.set(Namespace.SESSION, "k", b"second", 30)
                assert await store.get(Namespace.SESSION, "k") == b"second"
            finally:
                await store.close()

        run(body())

    def test_value_expires_after_ttl(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            try:
                await store.set(Namespace.SESSION, "long", b"v", 30)

                async def write_and_read(key: str, ttl: float) -> bytes | None:
                    await store.set(Namespace.SESSION, key, b"v", ttl)
                    return await store.get(Namespace.SESSION, key)

                short, _, seen = await within_ttl(write_and_read)
                assert seen == b"v", "readable before its TTL ran out"

                async def gone() -> bool:
                    return await store.get(Namespace.SESSION, short) is None

                await eventually(gone, what="short key to expire")
                assert await store.get(Namespace.SESSION, "long") == b"v"
                assert await store.take(Namespace.SESSION, short) is None
            finally:
                await store.close()

        run(body())

    def test_values_visible_to_another_store_object(self, harness: StoreHarness) -> None:
        async def body() -> None:
            a, b = harness.open(), harness.open()
            try:
                await a.set(Namespace.CREDENTIAL, "shared", b"x", 30)
                assert await b.get(Namespace.CREDENTIAL, "shared") == b"x"
                await b.delete(Namespace.CREDENTIAL, "shared")
                assert await a.get(Namespace.CREDENTIAL, "shared") is None
            finally:
                await a.close()
                await b.close()

        run(body())

    def test_take_is_single_use(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            try:
                assert await store.take(Namespace.LOGIN, "none") is None
                await store.set(Namespace.LOGIN, "state", b"record", 30)
                assert await store.take(Namespace.LOGIN, "state") == b"record"
                assert await store.take(Namespace.LOGIN, "state") is None
                assert await store.get(Namespace.LOGIN, "state") is None
            finally:
                await store.close()

        run(body())

    def test_concurrent_takes_exactly_one_wins(self, harness: StoreHarness) -> None:
        # Fresh stores each round: their first commands race too (as on a replica that
        # just started), which once made redis-py's Cluster client run some twice.
        async def body() -> None:
            for round_ in range(5):
                key = f"race-{round_}"
                setter = harness.open()
                try:
                    await setter.set(Namespace.LOGIN, key, b"prize", 30)
                finally:
                    await setter.close()
                stores = [harness.open() for _ in range(4)]
                try:
                    results = await asyncio.gather(
                        *(stores[i % len(stores)].take(Namespace.LOGIN, key) for i in range(24))
                    )
                finally:
                    for s in stores:
                        await s.close()
                winners = [r for r in results if r is not None]
                assert winners == [b"prize"], results

        run(body())

    def test_claim_is_exclusive_until_released_or_expired(self, harness: StoreHarness) -> None:
        async def body() -> None:
            for round_ in range(5):
                key = f"claim-{round_}"
                fresh = [harness.open() for _ in range(4)]  # first commands race too
                try:
                    results = await asyncio.gather(
                        *(fresh[i % len(fresh)].claim(Namespace.CLAIM, key, 30) for i in range(24))
                    )
                finally:
                    for s in fresh:
                        await s.close()
                assert results.count(True) == 1, results
            stores = [harness.open() for _ in range(4)]
            try:
                # Released (deleted): claimable again.
                await stores[1].delete(Namespace.CLAIM, "claim-0")
                assert await stores[2].claim(Namespace.CLAIM, "claim-0", 30) is True

                # Held while it lives, claimable again once expired.
                async def claim_twice(key: str, ttl: float) -> tuple[bool, bool]:
                    first = await stores[0].claim(Namespace.CLAIM, key, ttl)
                    return first, await stores[1].claim(Namespace.CLAIM, key, ttl)

                short, _, (first, second) = await within_ttl(claim_twice)
                assert (first, second) == (True, False)

                async def free_again() -> bool:
                    return await stores[3].claim(Namespace.CLAIM, short, 30)

                await eventually(free_again, what="an expired claim to be free")
            finally:
                for s in stores:
                    await s.close()

        run(body())

    def test_delete(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            try:
                await store.delete(Namespace.SESSION, "never-there")
                await store.set(Namespace.SESSION, "k", b"v", 30)
                await store.delete(Namespace.SESSION, "k")
                assert await store.get(Namespace.SESSION, "k") is None
            finally:
                await store.close()

        run(body())

    def test_namespaces_and_prefixes_are_isolated(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            other = harness.open(prefix=harness.prefix + "other:")
            try:
                for i, ns in enumerate(ALL_NAMESPACES):
                    await store.set(ns, "same", f"value-{i}".encode(), 30)
                for i, ns in enumerate(ALL_NAMESPACES):
                    assert await store.get(ns, "same") == f"value-{i}".encode()
                assert await other.get(Namespace.SESSION, "same") is None
                await other.set(Namespace.SESSION, "same", b"other", 30)
                assert await store.get(Namespace.SESSION, "same") == b"value-0"
                await store.delete(Namespace.SESSION, "same")
                assert await store.get(Namespace.CREDENTIAL, "same") == b"value-2"
                assert await other.get(Namespace.SESSION, "same") == b"other"
            finally:
                await store.close()
                await other.close()

        run(body())

    # --- indexes --------------------------------------------------------------------

    def test_index_add_and_pop_all(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            try:
                assert await store.index_pop_all(Namespace.SUB_INDEX, "empty") == []
                for member in ("s1", "s2", "s3", "s2"):
                    await store.index_add(Namespace.SUB_INDEX, "alice", member, 30)
                await store.index_add(Namespace.SUB_INDEX, "bob", "s9", 30)
                assert sorted(await store.index_pop_all(Namespace.SUB_INDEX, "alice")) == [
                    "s1",
                    "s2",
                    "s3",
                ]
                assert await store.index_pop_all(Namespace.SUB_INDEX, "alice") == []
                assert await store.index_pop_all(Namespace.SUB_INDEX, "bob") == ["s9"]
            finally:
                await store.close()

        run(body())

    def test_index_expires_and_ttl_only_grows(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            index = f"{harness.prefix}{Namespace.SUB_INDEX}:"
            try:
                # A later, longer ttl extends the set's life (the second add came
                # while the set lived: both members are there, with the longer ttl) ...
                async def add_twice(key: str, ttl: float) -> RawEntry | None:
                    await store.index_add(Namespace.SUB_INDEX, key, "m1", ttl)
                    await store.index_add(Namespace.SUB_INDEX, key, "m2", 30)
                    return (await harness.raw_entries()).get(index + key)

                grow, short_ttl, raw = await within_ttl(add_twice)
                assert raw is not None and raw[0] == frozenset({"m1", "m2"}), raw
                assert raw[1] is not None and raw[1] > short_ttl, f"ttl not extended: {raw}"
                # ... and a later, shorter one does not shrink it (read the ttl the
                # backend holds instead of waiting for the short one to pass).
                await store.index_add(Namespace.SUB_INDEX, "keep", "m1", 30)
                await store.index_add(Namespace.SUB_INDEX, "keep", "m2", 0.2)
                kept = (await harness.raw_entries())[index + "keep"]
                assert kept[1] is not None and kept[1] > 1, f"ttl shrank: {kept}"
                # A set whose ttl passes is gone.
                await store.index_add(Namespace.SUB_INDEX, "short", "m", 0.2)

                async def short_gone() -> bool:
                    return index + "short" not in await harness.raw_entries()

                await eventually(short_gone, what="short index to expire")
                assert await store.index_pop_all(Namespace.SUB_INDEX, "short") == []
                assert sorted(await store.index_pop_all(Namespace.SUB_INDEX, grow)) == [
                    "m1",
                    "m2",
                ]
                assert sorted(await store.index_pop_all(Namespace.SUB_INDEX, "keep")) == [
                    "m1",
                    "m2",
                ]
            finally:
                await store.close()

        run(body())

    # --- sessions by IdP session (sid) ---------------------------------------------

    def test_end_all_for_sid_ends_the_sessions_of_every_app_on_every_replica(
        self, harness: StoreHarness
    ) -> None:
        """authentik's SESSION_END: every session made from one IdP session ends, in
        every application, and leaves the local caches of both replicas."""

        async def body() -> None:
            secret = b"s" * 32
            store_a, store_b = harness.open(), harness.open()
            # A local TTL far longer than the test: only the invalidation can end a copy.
            a = SessionRepository(store_a, secret=secret, local_ttl=300)
            b = SessionRepository(store_b, secret=secret, local_ttl=300)
            alice = Identity(sub="alice", email="alice@example.test", sid="ak-session-1")
            alice_elsewhere = Identity(sub="alice", sid="ak-session-2")  # another sign-in
            bob = Identity(sub="bob")  # no sid: in no sid index
            expires = time.time() + 600
            try:
                await a.start_invalidation_listener()
                await b.start_invalidation_listener()
                in_app1 = await a.create("app1", alice, expires)
                in_app2 = await b.create("app2", alice, expires)
                other_sid = await a.create("app1", alice_elsewhere, expires)
                bobs = await b.create("app1", bob, expires)
                for repo in (a, b):  # every session now in both replicas' local caches
                    assert await repo.get("app1", in_app1) is not None
                    assert await repo.get("app2", in_app2) is not None
                raw = await harness.raw_entries()
                sid_sets = {k: v for k, v in raw.items() if k.startswith(f"{harness.prefix}sid:")}
                assert sorted(len(members) for members, _ in sid_sets.values()) == [1, 2]
                assert all(ttl is not None and 0 < ttl <= 600 for _, ttl in sid_sets.values())
                assert not any("ak-session" in k for k in raw), "sids are keyed by hmac"

                assert await b.end_all_for_sid("ak-session-1") == 2
                assert await b.get("app1", in_app1) is None
                assert await b.get("app2", in_app2) is None

                async def gone_on_a() -> bool:
                    return (
                        await a.get("app1", in_app1) is None
                        and await a.get("app2", in_app2) is None
                    )

                await eventually(gone_on_a, what="replica a to drop the ended sessions")
                for repo in (a, b):
                    assert await repo.get("app1", other_sid) is not None
                    assert await repo.get("app1", bobs) is not None
                assert await a.end_all_for_sid("ak-session-1") == 0
                assert await a.end_all_for_sid("") == 0
                # The sub index still holds what the sid index ended: harmless.
                assert await a.end_all_for("app1", "alice") == 1
            finally:
                await store_a.close()
                await store_b.close()

        run(body())

    # --- invalidation pub/sub -------------------------------------------------------

    def test_invalidation_reaches_every_subscriber(self, harness: StoreHarness) -> None:
        async def body() -> None:
            publisher, listener = harness.open(), harness.open()
            got_sync: list[list[str]] = []
            got_async: list[list[str]] = []
            got_self: list[list[str]] = []

            async def async_cb(keys: list[str]) -> None:
                got_async.append(keys)

            try:
                await listener.subscribe_invalidations(got_sync.append)
                await listener.subscribe_invalidations(async_cb)
                await publisher.subscribe_invalidations(got_self.append)
                await publisher.publish_invalidation(["k1", "k2"])
                await eventually(lambda: bool(got_sync and got_async and got_self), what="messages")
                assert got_sync == [["k1", "k2"]]
                assert got_async == [["k1", "k2"]]
                assert got_self == [["k1", "k2"]]
                await publisher.publish_invalidation([])  # nothing to say: no message
                await publisher.publish_invalidation(["k3"])
                await eventually(lambda: len(got_sync) == 2, what="second message")
                assert got_sync[1] == ["k3"]
            finally:
                await publisher.close()
                await listener.close()

        run(body())

    def test_invalidation_channel_is_per_prefix(self, harness: StoreHarness) -> None:
        async def body() -> None:
            mine = harness.open()
            foreign = harness.open(prefix=harness.prefix + "foreign:")
            got: list[list[str]] = []
            witnessed: list[list[str]] = []
            try:
                await mine.subscribe_invalidations(got.append)
                await foreign.subscribe_invalidations(witnessed.append)
                await foreign.publish_invalidation(["theirs"])
                # The foreign message was delivered (to its own subscriber) before
                # "mine" is even published: had it reached `mine`, it would be in
                # `got` ahead of "mine". No sleep needed to give it a chance.
                await eventually(lambda: witnessed == [["theirs"]], what="foreign message")
                await mine.publish_invalidation(["mine"])
                await eventually(lambda: bool(got), what="own message")
                assert got == [["mine"]]
            finally:
                await mine.close()
                await foreign.close()

        run(body())

    def test_a_failing_callback_does_not_stop_others(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            got: list[list[str]] = []

            def broken(keys: list[str]) -> None:
                raise RuntimeError("boom")

            try:
                await store.subscribe_invalidations(broken)
                await store.subscribe_invalidations(got.append)
                await store.publish_invalidation(["a"])
                await store.publish_invalidation(["b"])
                await eventually(lambda: len(got) == 2, what="both messages")
            finally:
                await store.close()

        run(body())

    # --- layout ---------------------------------------------------------------------

    def test_every_key_has_the_prefix_and_a_ttl(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            try:
                for ns in ALL_NAMESPACES:
                    await store.set(ns, "k", b"v", 30)
                await store.index_add(Namespace.SUB_INDEX, "idx", "member", 30)
                raw = await harness.raw_entries()
                expected = {f"{harness.prefix}{ns}:k" for ns in ALL_NAMESPACES}
                expected.add(f"{harness.prefix}{Namespace.SUB_INDEX}:idx")
                assert set(raw) == expected
                for key, (_, ttl) in raw.items():
                    assert ttl is not None and 0 < ttl <= 30, (key, ttl)
                assert raw[f"{harness.prefix}{Namespace.SUB_INDEX}:idx"][0] == frozenset({"member"})
            finally:
                await store.close()

        run(body())

    def test_ping(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            try:
                await store.ping()
            finally:
                await store.close()

        run(body())

    def test_close_is_idempotent(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            await store.subscribe_invalidations(lambda keys: None)
            await store.close()
            await store.close()

        run(body())

    # --- counters (the throttle, SPEC §5) ---------------------------------------------

    def test_counter_counts_across_store_objects(self, harness: StoreHarness) -> None:
        async def body() -> None:
            a, b = harness.open(), harness.open()
            try:
                assert await a.count(Namespace.THROTTLE, "c") == (0, 0.0)
                assert (await a.count_up(Namespace.THROTTLE, "c", 30))[0] == 1
                assert (await b.count_up(Namespace.THROTTLE, "c", 30))[0] == 2
                count, left = await b.count(Namespace.THROTTLE, "c")
                assert count == 2 and 0 < left <= 30
                raw = await harness.raw_entries()
                (_, ttl) = raw[f"{harness.prefix}{Namespace.THROTTLE}:c"]
                assert ttl is not None and 0 < ttl <= 30
            finally:
                await a.close()
                await b.close()

        run(body())

    def test_counter_window_is_fixed_from_the_first_count(self, harness: StoreHarness) -> None:
        async def body() -> None:
            store = harness.open()
            try:
                _, first_left = await store.count_up(Namespace.THROTTLE, "w", 30)
                # A later count with a longer ttl does not extend the window.
                count, left = await store.count_up(Namespace.THROTTLE, "w", 3000)
                assert count == 2
                assert 0 < left <= first_left <= 30
            finally:
                await store.close()

        run(body())

    def test_concurrent_counts_are_all_counted(self, harness: StoreHarness) -> None:
        # Each count exactly once, also when it is a new store's first command: fresh
        # stores (a replica that just started) take concurrent first calls. Against a
        # Cluster, redis-py once ran some of them twice (its topology discovery raced
        # the first commands, and it retried them), in about one round in eight.
        async def round_(key: str) -> list[int]:
            stores = [harness.open() for _ in range(4)]
            try:
                results = await asyncio.gather(
                    *(s.count_up(Namespace.THROTTLE, key, 30) for s in stores for _ in range(5))
                )
                return sorted(n for n, _ in results)
            finally:
                for s in stores:
                    await s.close()

        async def body() -> None:
            counts = [await round_(f"race-{i}") for i in range(ROUNDS_OF_FIRST_CALLS)]
            wrong = [c for c in counts if c != list(range(1, 21))]
            assert not wrong, f"{len(wrong)} of {len(counts)} rounds miscounted: {wrong[:3]}"

        run(body())
