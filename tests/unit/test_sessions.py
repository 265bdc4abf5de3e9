"""ext_authz.sessions over MemoryStore with fake clocks: sessions, the credential cache
and login states; expiry on both clocks; tampering; sign-out everywhere; and the
local cache answering while the store is down (SPEC §8)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from ext_authz.adapters.memory_store import MemoryStore
from ext_authz.core.model import Identity, Rejected, Verified
from ext_authz.crypto import credential_cache_key, session_key_id
from ext_authz.errors import StoreUnavailable
from ext_authz.ports import Namespace
from ext_authz.sessions import (
    CachedCredential,
    CredentialCache,
    LoginStateRepository,
    SessionRepository,
)

T = TypeVar("T")
SECRET = b"k" * 32
APP = "whoami"
ALICE = Identity(
    sub="alice",
    preferred_username="alice",
    email="alice@example.test",
    groups=("admins",),
    attributes={"password": "attr-secret"},
    token="raw-token",
)
BOB = Identity(sub="bob", email="bob@example.test")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    """One fake time for the wall clock, the monotonic clock and the store's TTLs."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FlakyStore:
    """A ByteStore wrapper that raises StoreUnavailable for everything while `down`."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.down = False
        self.calls = 0

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.down:
                raise StoreUnavailable("down (test)")
            return await method(*args, **kwargs)

        return call


def make(
    local_ttl: float = 10.0,
) -> tuple[Clock, MemoryStore, FlakyStore, SessionRepository]:
    clock = Clock()
    memory = MemoryStore("t:", clock=clock)
    store = FlakyStore(memory)
    repo = SessionRepository(
        store,  # type: ignore[arg-type]
        secret=SECRET,
        local_ttl=local_ttl,
        clock_wall=clock,
        clock_mono=clock,
    )
    return clock, memory, store, repo


# --- sessions ----------------------------------------------------------------------


def test_create_then_get() -> None:
    async def body() -> None:
        clock, memory, _, repo = make()
        cookie = await repo.create(APP, ALICE, clock.now + 600)
        assert len(cookie) == 43
        for _ in range(2):  # once from the local cache, once from the store
            record = await repo.get(APP, cookie)
            assert record is not None
            assert record.identity == ALICE and record.app == APP
            assert record.key == session_key_id(cookie) and cookie not in record.key
            assert record.created_at == clock.now and record.expires_at == clock.now + 600
            repo.forget_local()
        raw = memory.raw_entries()
        assert raw[f"t:{Namespace.SESSION}:{session_key_id(cookie)}"][1] == pytest.approx(600)
        assert any(k.startswith(f"t:{Namespace.SUB_INDEX}:") for k in raw)

    run(body())


def test_unknown_empty_or_absurd_cookies_resolve_to_nothing() -> None:
    async def body() -> None:
        _, _, store, repo = make()
        assert await repo.get(APP, "no-such-session") is None
        calls = store.calls
        assert await repo.get(APP, "") is None
        assert await repo.get(APP, "x" * 10_000) is None
        assert store.calls == calls  # not even a store round trip

    run(body())


def test_a_session_belongs_to_its_application() -> None:
    async def body() -> None:
        clock, _, _, repo = make()
        cookie = await repo.create(APP, ALICE, clock.now + 600)
        assert await repo.get("other-app", cookie) is None  # from the local cache
        repo.forget_local()
        assert await repo.get("other-app", cookie) is None  # from the store
        assert await repo.get(APP, cookie) is not None

    run(body())


def test_sessions_expire_by_store_ttl_and_by_wall_clock() -> None:
    async def body() -> None:
        clock, _, _, repo = make()
        cookie = await repo.create(APP, ALICE, clock.now + 60)
        assert await repo.get(APP, cookie) is not None
        clock.now += 60
        assert await repo.get(APP, cookie) is None  # local cache entry bounded by expiry
        repo.forget_local()
        assert await repo.get(APP, cookie) is None  # store TTL

    run(body())


def test_expiry_is_checked_on_read_even_if_the_store_still_has_it() -> None:
    async def body() -> None:
        wall = Clock()
        mono = Clock()
        store = MemoryStore("t:", clock=mono)  # the store's clock does not move
        repo = SessionRepository(
            store, secret=SECRET, local_ttl=0, clock_wall=wall, clock_mono=mono
        )
        cookie = await repo.create(APP, ALICE, wall.now + 60)
        wall.now += 61
        assert await repo.get(APP, cookie) is None

    run(body())


def test_create_refuses_an_expired_session() -> None:
    async def body() -> None:
        clock, _, _, repo = make()
        with pytest.raises(ValueError):
            await repo.create(APP, ALICE, clock.now)

    run(body())


def test_tampered_or_moved_records_resolve_to_nothing() -> None:
    async def body() -> None:
        clock, memory, _, repo = make(local_ttl=0)
        c1 = await repo.create(APP, ALICE, clock.now + 600)
        c2 = await repo.create(APP, BOB, clock.now + 600)
        k1, k2 = session_key_id(c1), session_key_id(c2)
        blob1 = await memory.get(Namespace.SESSION, k1)
        assert blob1 is not None
        # Alice's record copied under Bob's key: sealed for another cookie.
        await memory.set(Namespace.SESSION, k2, blob1, 600)
        assert await repo.get(APP, c2) is None
        # One flipped bit.
        flipped = bytearray(blob1)
        flipped[-5] ^= 0x80
        await memory.set(Namespace.SESSION, k1, bytes(flipped), 600)
        assert await repo.get(APP, c1) is None

    run(body())


def test_end_all_for_ends_every_session_of_the_sub_in_the_app_only() -> None:
    async def body() -> None:
        clock, _, _, repo = make()
        a1 = await repo.create(APP, ALICE, clock.now + 600)
        a2 = await repo.create(APP, ALICE, clock.now + 300)
        a_other_app = await repo.create("other", ALICE, clock.now + 600)
        b1 = await repo.create(APP, BOB, clock.now + 600)
        assert await repo.end_all_for(APP, "alice") == 2
        assert await repo.get(APP, a1) is None
        assert await repo.get(APP, a2) is None
        assert await repo.get("other", a_other_app) is not None
        assert await repo.get(APP, b1) is not None
        assert await repo.end_all_for(APP, "alice") == 0

    run(body())


def test_end_all_for_sid_ends_the_idp_sessions_sessions_in_every_app() -> None:
    async def body() -> None:
        clock, memory, _, repo = make()
        alice = Identity(sub="alice", sid="ak-1")
        here = await repo.create(APP, alice, clock.now + 600)
        there = await repo.create("other", alice, clock.now + 300)
        later = await repo.create(APP, Identity(sub="alice", sid="ak-2"), clock.now + 600)
        no_sid = await repo.create(APP, BOB, clock.now + 600)
        sid_prefix = f"t:{Namespace.SID_INDEX}:"
        sid_keys = {k: v for k, v in memory.raw_entries().items() if k.startswith(sid_prefix)}
        # One set per sid, none for a session without one; each lives as its longest session.
        assert sorted(len(members) for members, _ in sid_keys.values()) == [1, 2]
        assert sorted(ttl for _, ttl in sid_keys.values()) == [pytest.approx(600)] * 2
        assert await repo.end_all_for_sid("ak-1") == 2
        assert await repo.get(APP, here) is None and await repo.get("other", there) is None
        assert await repo.get(APP, later) is not None and await repo.get(APP, no_sid) is not None
        assert await repo.end_all_for_sid("ak-1") == 0
        assert await repo.end_all_for_sid("") == 0
        assert await repo.end_all_for_sid("ak-2") == 1

    run(body())


def test_a_session_whose_sid_index_is_gone_still_ends_by_sub() -> None:
    async def body() -> None:
        clock, _, _, repo = make()
        cookie = await repo.create(APP, Identity(sub="alice", sid="ak-1"), clock.now + 600)
        assert await repo.end_all_for(APP, "alice") == 1
        assert await repo.get(APP, cookie) is None
        assert await repo.end_all_for_sid("ak-1") == 0  # the stale index entry is harmless

    run(body())


def test_sid_is_kept_and_stored_sessions_without_one_still_load() -> None:
    async def body() -> None:
        clock, _, _, repo = make()
        identity = Identity(sub="alice", email="a@example.test", sid="ak-1")
        assert Identity.from_dict(identity.to_dict()) == identity
        legacy = {k: v for k, v in identity.to_dict().items() if k != "sid"}
        assert Identity.from_dict(legacy) == Identity(sub="alice", email="a@example.test")
        assert "ak-1" not in repr(identity)
        cookie = await repo.create(APP, identity, clock.now + 600)
        repo.forget_local()
        record = await repo.get(APP, cookie)
        assert record is not None and record.identity.sid == "ak-1"

    run(body())


def test_sid_end_on_one_replica_drops_the_sessions_from_the_others_local_cache() -> None:
    async def body() -> None:
        clock = Clock()
        shared = MemoryStore("t:", clock=clock)
        store_b = FlakyStore(shared.sibling())
        a = SessionRepository(
            shared.sibling(), secret=SECRET, local_ttl=300, clock_wall=clock, clock_mono=clock
        )
        b = SessionRepository(
            store_b,  # type: ignore[arg-type]
            secret=SECRET,
            local_ttl=300,
            clock_wall=clock,
            clock_mono=clock,
        )
        await a.start_invalidation_listener()
        await b.start_invalidation_listener()
        cookie = await a.create(APP, Identity(sub="alice", sid="ak-1"), clock.now + 600)
        assert await b.get(APP, cookie) is not None  # cached on b
        assert await a.end_all_for_sid("ak-1") == 1
        store_b.down = True
        # Not answered from b's local cache any more: b has to ask the (down) store.
        with pytest.raises(StoreUnavailable):
            await b.get(APP, cookie)

    run(body())


def test_end_one_session() -> None:
    async def body() -> None:
        clock, _, _, repo = make()
        c1 = await repo.create(APP, ALICE, clock.now + 600)
        c2 = await repo.create(APP, ALICE, clock.now + 600)
        await repo.end(c1)
        assert await repo.get(APP, c1) is None
        assert await repo.get(APP, c2) is not None

    run(body())


def test_local_cache_answers_while_the_store_is_down_within_local_ttl() -> None:
    async def body() -> None:
        clock, _, store, repo = make(local_ttl=5)
        seen = await repo.create(APP, ALICE, clock.now + 600)
        writer = SessionRepository(
            store,  # type: ignore[arg-type]
            secret=SECRET,
            local_ttl=0,
            clock_wall=clock,
            clock_mono=clock,
        )
        unseen = await writer.create(APP, BOB, clock.now + 600)
        store.down = True
        record = await repo.get(APP, seen)
        assert record is not None and record.identity == ALICE
        with pytest.raises(StoreUnavailable):
            await repo.get(APP, unseen)
        clock.now += 5  # local_ttl over: the store must answer now, and cannot
        with pytest.raises(StoreUnavailable):
            await repo.get(APP, seen)
        store.down = False
        assert await repo.get(APP, seen) is not None

    run(body())


def test_local_ttl_zero_always_asks_the_store() -> None:
    async def body() -> None:
        clock, _, store, repo = make(local_ttl=0)
        cookie = await repo.create(APP, ALICE, clock.now + 600)
        assert await repo.get(APP, cookie) is not None
        store.down = True
        with pytest.raises(StoreUnavailable):
            await repo.get(APP, cookie)

    run(body())


def test_sign_out_on_one_replica_drops_the_session_from_the_others_local_cache() -> None:
    async def body() -> None:
        clock = Clock()
        shared = MemoryStore("t:", clock=clock)
        store_b = FlakyStore(shared.sibling())
        a = SessionRepository(
            shared.sibling(), secret=SECRET, local_ttl=300, clock_wall=clock, clock_mono=clock
        )
        b = SessionRepository(
            store_b,  # type: ignore[arg-type]
            secret=SECRET,
            local_ttl=300,
            clock_wall=clock,
            clock_mono=clock,
        )
        await a.start_invalidation_listener()
        await b.start_invalidation_listener()
        cookie = await a.create(APP, ALICE, clock.now + 600)
        assert await b.get(APP, cookie) is not None  # cached on b
        assert await a.end_all_for(APP, "alice") == 1
        store_b.down = True
        # Not answered from b's local cache any more: b has to ask the (down) store.
        with pytest.raises(StoreUnavailable):
            await b.get(APP, cookie)

    run(body())


# --- credential cache ----------------------------------------------------------------

HEADER = "Bearer raw-token"


def make_credentials(
    local_ttl: float = 10.0,
) -> tuple[Clock, MemoryStore, FlakyStore, CredentialCache]:
    clock = Clock()
    memory = MemoryStore("t:", clock=clock)
    store = FlakyStore(memory)
    cache = CredentialCache(
        store,  # type: ignore[arg-type]
        secret=SECRET,
        local_ttl=local_ttl,
        clock_wall=clock,
        clock_mono=clock,
    )
    return clock, memory, store, cache


def test_verified_and_rejected_credentials_are_cached() -> None:
    async def body() -> None:
        _, memory, _, cache = make_credentials(local_ttl=0)
        assert await cache.get(APP, HEADER) is None
        await cache.put_verified(APP, HEADER, ALICE, 60)
        hit = await cache.get(APP, HEADER)
        assert isinstance(hit, CachedCredential) and hit.outcome == Verified(ALICE, cached=True)
        assert hit.identity == ALICE
        await cache.put_rejected(APP, "Bearer bad", "signature mismatch", 5)
        miss = await cache.get(APP, "Bearer bad")
        assert miss is not None and miss.outcome == Rejected("signature mismatch")
        assert miss.identity is None
        assert await cache.get("other-app", HEADER) is None
        assert await cache.get(APP, HEADER + "x") is None
        key = credential_cache_key(SECRET, APP, HEADER)
        raw = memory.raw_entries()[f"t:{Namespace.CREDENTIAL}:{key}"]
        assert raw[1] == pytest.approx(60)
        assert b"raw-token" not in raw[0] and b"attr-secret" not in raw[0]

    run(body())


def test_credentials_expire() -> None:
    async def body() -> None:
        clock, _, _, cache = make_credentials()
        await cache.put_verified(APP, HEADER, ALICE, 60)
        await cache.put_rejected(APP, "Bearer bad", "no", 5)
        clock.now += 5
        assert await cache.get(APP, "Bearer bad") is None
        assert await cache.get(APP, HEADER) is not None
        clock.now += 55
        assert await cache.get(APP, HEADER) is None

    run(body())


def test_no_ttl_no_cache() -> None:
    async def body() -> None:
        _, memory, _, cache = make_credentials()
        await cache.put_verified(APP, HEADER, ALICE, 0)
        await cache.put_rejected(APP, HEADER, "no", -1)
        assert await cache.get(APP, HEADER) is None
        assert memory.raw_entries() == {}

    run(body())


def test_an_identity_past_its_token_expiry_is_not_served() -> None:
    async def body() -> None:
        clock, _, _, cache = make_credentials(local_ttl=0)
        short = Identity(sub="alice", token="t", expires_at=clock.now + 10)
        await cache.put_verified(APP, HEADER, short, 60)  # a careless caller
        assert await cache.get(APP, HEADER) is not None
        clock.now += 10
        assert await cache.get(APP, HEADER) is None

    run(body())


def test_credential_cache_under_store_faults() -> None:
    async def body() -> None:
        _, _, store, cache = make_credentials(local_ttl=10)
        store.down = True
        with pytest.raises(StoreUnavailable):
            await cache.get(APP, HEADER)
        with pytest.raises(StoreUnavailable):
            await cache.put_verified(APP, HEADER, ALICE, 60)
        # The put reached the local cache before the store failed.
        hit = await cache.get(APP, HEADER)
        assert hit is not None and hit.identity == ALICE

    run(body())


# --- login states ----------------------------------------------------------------------


def make_logins() -> tuple[Clock, MemoryStore, LoginStateRepository]:
    clock = Clock()
    memory = MemoryStore("t:", clock=clock)
    return clock, memory, LoginStateRepository(memory, secret=SECRET, clock_wall=clock)


BINDING = "login-cookie-value-of-this-browser-0123456789"


def test_login_state_is_single_use() -> None:
    async def body() -> None:
        _, memory, logins = make_logins()
        record = {"verifier": "v", "nonce": "n", "return_to": "https://app/"}
        await logins.put("app", "state-1", BINDING, record)
        (raw_value, ttl) = next(iter(memory.raw_entries().values()))
        assert ttl == pytest.approx(600)
        assert isinstance(raw_value, bytes) and b"state-1" not in raw_value
        assert BINDING.encode() not in raw_value
        assert await logins.take("app", "state-2", BINDING) is None
        assert await logins.take("app", "state-1", BINDING) == record
        assert await logins.take("app", "state-1", BINDING) is None
        assert await logins.take("app", "", BINDING) is None

    run(body())


@pytest.mark.parametrize(
    ("app", "binding"),
    [
        pytest.param("app", "", id="no-login-cookie"),
        pytest.param("app", "another-browsers-login-cookie-0123456789", id="other-cookie"),
        pytest.param("app", BINDING[:-1], id="cookie-prefix"),
        pytest.param("other-app", BINDING, id="other-application"),
        pytest.param("app", "x" * 513, id="oversized-cookie"),
    ],
)
def test_login_state_with_the_wrong_binding_is_not_used_up(app: str, binding: str) -> None:
    """SPEC §6 "Callback": the login cookie is checked before the state is consumed."""

    async def body() -> None:
        _, memory, logins = make_logins()
        await logins.put("app", "state-1", BINDING, {"verifier": "v"})
        entries = memory.raw_entries()
        assert await logins.take(app, "state-1", binding) is None
        assert memory.raw_entries().keys() == entries.keys(), "the record is still there"
        assert await logins.take("app", "state-1", BINDING) == {"verifier": "v"}

    run(body())


def test_two_states_of_one_browser_are_independent() -> None:
    async def body() -> None:
        _, _, logins = make_logins()
        await logins.put("app", "tab-1", BINDING, {"n": 1})
        await logins.put("app", "tab-2", BINDING, {"n": 2})
        assert await logins.take("app", "tab-2", BINDING) == {"n": 2}
        assert await logins.take("app", "tab-1", BINDING) == {"n": 1}

    run(body())


def test_login_state_expires() -> None:
    async def body() -> None:
        clock, _, logins = make_logins()
        await logins.put("app", "s", BINDING, {"a": 1}, ttl=600)
        clock.now += 600
        assert await logins.take("app", "s", BINDING) is None

    run(body())


def test_login_state_tampered_resolves_to_nothing() -> None:
    async def body() -> None:
        _, memory, logins = make_logins()
        await logins.put("app", "s", BINDING, {"a": 1})
        (key,) = memory.raw_entries()
        ns_key = key.split(":", 2)[2]
        blob = await memory.get(Namespace.LOGIN, ns_key)
        assert blob is not None
        await memory.set(Namespace.LOGIN, ns_key, blob[:-1] + bytes([blob[-1] ^ 1]), 60)
        assert await logins.take("app", "s", BINDING) is None

    run(body())


def test_real_clocks_by_default() -> None:
    async def body() -> None:
        repo = SessionRepository(MemoryStore("t:"), secret=SECRET, local_ttl=1)
        cookie = await repo.create(APP, ALICE, time.time() + 60)
        assert await repo.get(APP, cookie) is not None

    run(body())
