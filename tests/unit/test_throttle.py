"""The guessing limits (SPEC §5 "Cost and abuse", §6), on the memory store with a
hand-driven clock, and through CheckService with counting verifiers.

The real Redis store runs the same counters in tests/integration/store_suite.py, and
the whole path through Envoy, two replicas and the IdP in tests/e2e/test_abuse.py.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ext_authz.adapters.memory_store import MemoryStore
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import AuthRequest, Identity, Rejected, Verified
from ext_authz.errors import StoreUnavailable
from ext_authz.metrics import Metrics
from ext_authz.service import AppRuntime, CheckService
from ext_authz.sessions import CredentialCache, LoginStateRepository, SessionRepository
from ext_authz.throttle import LOGIN_STATES_PER_FAILURE, Throttle
from tests.unit.conftest import make_app

SECRET = b"unit-test-secret-0123456789abcdef-0123"
APP = make_app(
    external_host="https://app.example.com",
    receive={"throttle": {"failures": 3, "window": "1m"}, "negative_cache_ttl": 0},
)
OFF = make_app(external_host="https://app.example.com", receive={"throttle": {"failures": 0}})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


REGISTRIES: dict[int, CollectorRegistry] = {}


def throttle(store: MemoryStore) -> tuple[Throttle, Metrics]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    REGISTRIES[id(metrics)] = registry
    return Throttle(store, secret=SECRET, metrics=metrics), metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = REGISTRIES[id(metrics)].get_sample_value(name, labels)
    return float(value or 0.0)


# --- the counters -----------------------------------------------------------------------


def test_a_client_is_blocked_after_its_failures_until_the_window_ends() -> None:
    clock = Clock()
    limit, metrics = throttle(MemoryStore("t:", clock=clock))

    async def body() -> None:
        for _ in range(3):
            assert await limit.blocked(APP, "10.0.0.1", "alice") is None
            await limit.rejected(APP, "10.0.0.1", "alice")
        # Any credential from that client now, whatever the username; other clients not.
        assert await limit.blocked(APP, "10.0.0.1", "bob") == 60
        assert await limit.blocked(APP, "10.0.0.1", None) == 60
        assert await limit.blocked(APP, "10.0.0.2", "alice") is None
        clock.now += 45
        assert await limit.blocked(APP, "10.0.0.1", "alice") == 15
        clock.now += 15
        assert await limit.blocked(APP, "10.0.0.1", "alice") is None

    run(body())
    assert sample(metrics, "ext_authz_throttled_total", app="app", kind="credential") == 3
    assert (
        sample(
            metrics,
            "ext_authz_throttle_started_total",
            app="app",
            kind="credential",
            scope="client",
        )
        == 1
    )


def test_the_per_username_count_blocks_that_username() -> None:
    limit, _ = throttle(MemoryStore("t:", clock=Clock()))

    async def body() -> None:
        for _ in range(3):
            await limit.rejected(APP, "10.0.0.1", "alice")
        # The client is over its own limit too, so everything from it waits; the
        # username's count is the other key.
        assert await limit.blocked(APP, "10.0.0.1", "alice") is not None
        key = limit._key("fail-user", APP.name, "10.0.0.1", "alice")
        count, _ = await limit._store.count("throttle", key)
        assert count == 3

    run(body())


def test_one_log_line_when_a_client_crosses(caplog: pytest.LogCaptureFixture) -> None:
    limit, _ = throttle(MemoryStore("t:", clock=Clock()))

    async def body() -> None:
        for _ in range(6):
            await limit.rejected(APP, "10.0.0.9", "alice")

    with caplog.at_level("INFO", logger="ext_authz"):
        run(body())
    lines = [r for r in caplog.records if r.getMessage() == "client throttled"]
    assert len(lines) == 1
    assert lines[0].__dict__["client"] == "10.0.0.9" and lines[0].__dict__["scope"] == "client"
    assert "alice" not in repr(lines[0].__dict__)


def test_a_username_limit_crossed_before_the_clients_own_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The two counts have windows of their own (each from its first count): once the
    client's window has restarted, the client's count for one username can reach the
    limit while its own count is below it. That client starts being throttled for that
    username then, and the one log line must say so."""
    clock = Clock()
    limit, metrics = throttle(MemoryStore("t:", clock=clock))

    async def body() -> None:
        await limit.rejected(APP, "10.0.0.7", "bob")  # the client's window: 1000..1060
        clock.now += 30
        await limit.rejected(APP, "10.0.0.7", "alice")  # alice's window: 1030..1090
        clock.now += 31  # the client's window is over, alice's is not
        for _ in range(2):
            await limit.rejected(APP, "10.0.0.7", "alice")
        assert await limit.blocked(APP, "10.0.0.7", "alice") == 29  # throttled for alice
        assert await limit.blocked(APP, "10.0.0.7", "bob") is None  # not for everyone
        # One more, for another username: the client's own count (2 in its new window)
        # crosses too, a second start.
        await limit.rejected(APP, "10.0.0.7", "carol")
        assert await limit.blocked(APP, "10.0.0.7", "bob") == 60

    with caplog.at_level("INFO", logger="ext_authz"):
        run(body())
    lines = [r.__dict__ for r in caplog.records if r.getMessage() == "client throttled"]
    assert [(line["client"], line["scope"]) for line in lines] == [
        ("10.0.0.7", "user"),
        ("10.0.0.7", "client"),
    ], lines
    assert not any("alice" in repr(line) for line in lines)
    for scope in ("user", "client"):
        labels = {"app": "app", "kind": "credential", "scope": scope}
        assert sample(metrics, "ext_authz_throttle_started_total", **labels) == 1


def test_off_and_unknown_clients_are_never_counted() -> None:
    store = MemoryStore("t:", clock=Clock())
    limit, _ = throttle(store)

    async def body() -> None:
        for _ in range(10):
            await limit.rejected(OFF, "10.0.0.1", "alice")
            await limit.rejected(APP, "", "alice")
        assert await limit.blocked(OFF, "10.0.0.1", "alice") is None
        assert await limit.blocked(APP, "", "alice") is None
        assert await limit.login_started(APP, "") is None

    run(body())
    assert store.raw_entries() == {}


def test_the_store_keeps_no_address_or_username_in_clear() -> None:
    store = MemoryStore("t:", clock=Clock())
    limit, _ = throttle(store)

    async def body() -> None:
        await limit.rejected(APP, "10.0.0.1", "alice")
        await limit.login_started(APP, "10.0.0.1")

    run(body())
    keys = " ".join(store.raw_entries())
    assert keys and "10.0.0.1" not in keys and "alice" not in keys


def test_login_states_per_client_are_limited() -> None:
    limit, metrics = throttle(MemoryStore("t:", clock=Clock()))
    most = LOGIN_STATES_PER_FAILURE * 3

    async def body() -> list[int | None]:
        return [await limit.login_started(APP, "10.0.0.1") for _ in range(most + 2)]

    answers = run(body())
    assert answers[:most] == [None] * most
    assert answers[most:] == [60, 60]
    assert sample(metrics, "ext_authz_throttled_total", app="app", kind="login") == 2


class DownStore(MemoryStore):
    async def count(self, namespace: str, key: str) -> tuple[int, float]:
        raise StoreUnavailable("down")

    async def count_up(self, namespace: str, key: str, ttl: float) -> tuple[int, float]:
        raise StoreUnavailable("down")


def test_a_store_that_does_not_answer_fails_open() -> None:
    limit, metrics = throttle(DownStore("t:"))

    async def body() -> None:
        await limit.rejected(APP, "10.0.0.1", "alice")
        assert await limit.blocked(APP, "10.0.0.1", "alice") is None
        assert await limit.login_started(APP, "10.0.0.1") is None

    run(body())
    errors = metrics.store_errors.labels("throttle_count")._value.get()  # type: ignore[attr-defined]
    assert errors == 3


# --- through the service ------------------------------------------------------------------

ALICE = Identity(sub="alice", preferred_username="alice")


class Verifier:
    def __init__(self, good: str) -> None:
        self.good = good
        self.calls = 0

    async def __call__(self, username: str, password: str) -> Any:
        self.calls += 1
        return Verified(ALICE) if password == self.good else Rejected("invalid credentials")


def service(verifier: Verifier) -> CheckService:
    store = MemoryStore("t:")
    metrics = Metrics(CollectorRegistry())
    runtime = AppRuntime(app=APP, verify_basic=verifier, verify_bearer=None, oidc=None)
    return CheckService(
        [runtime],
        sessions=SessionRepository(store, secret=SECRET, local_ttl=0),
        credentials=CredentialCache(store, secret=SECRET, local_ttl=0),
        logins=LoginStateRepository(store, secret=SECRET),
        metrics=metrics,
        throttle=Throttle(store, secret=SECRET, metrics=metrics),
    )


def basic_request(username: str, password: str, client: str = "10.0.0.1") -> AuthRequest:
    value = base64.b64encode(f"{username}:{password}".encode()).decode()
    return AuthRequest(
        has_http=True,
        method="GET",
        host="app.example.com",
        path="/",
        scheme="https",
        headers={"authorization": f"Basic {value}", "accept": "application/json"},
        client=client,
    )


def test_past_the_limit_credentials_get_429_without_being_verified() -> None:
    verifier = Verifier(good="right")
    checks = service(verifier)

    async def body() -> list[Allow | Deny]:
        # The valid credential is verified (and cached) before the guessing starts.
        first = await checks.check(basic_request("alice", "right"))
        answers = [await checks.check(basic_request("alice", f"wrong-{i}")) for i in range(5)]
        cached = await checks.check(basic_request("alice", "right"))
        fresh = await checks.check(basic_request("bob", "never-seen"))
        elsewhere = await checks.check(basic_request("bob", "wrong", client="10.0.0.2"))
        return [first, *answers, cached, fresh, elsewhere]

    first, *wrong, cached, fresh, elsewhere = run(body())
    assert isinstance(first, Allow)
    assert [getattr(a, "status", 200) for a in wrong] == [401, 401, 401, 429, 429]
    throttled = wrong[-1]
    assert isinstance(throttled, Deny) and throttled.reason == "throttled"
    assert dict(throttled.headers)["retry-after"] == "60"
    assert '"error": "too_many_requests"' in throttled.body
    # Verified and cached before: still passes, nobody can lock alice out.
    assert isinstance(cached, Allow)
    assert isinstance(fresh, Deny) and fresh.status == 429
    assert isinstance(elsewhere, Deny) and elsewhere.status == 401
    # 1 good + 3 wrong + 1 from the other client reached the verifier; the rest did not.
    assert verifier.calls == 5


def test_a_throttled_client_still_passes_skip_paths() -> None:
    app = make_app(
        external_host="https://app.example.com",
        skip_path_regex=["^/public/"],
        receive={"throttle": {"failures": 1}},
    )
    store = MemoryStore("t:")
    metrics = Metrics(CollectorRegistry())
    verifier = Verifier(good="right")
    checks = CheckService(
        [AppRuntime(app=app, verify_basic=verifier, verify_bearer=None, oidc=None)],
        sessions=SessionRepository(store, secret=SECRET, local_ttl=0),
        credentials=CredentialCache(store, secret=SECRET, local_ttl=0),
        logins=LoginStateRepository(store, secret=SECRET),
        metrics=metrics,
        throttle=Throttle(store, secret=SECRET, metrics=metrics),
    )

    async def body() -> tuple[Allow | Deny, Allow | Deny]:
        await checks.check(basic_request("alice", "wrong"))
        blocked = await checks.check(basic_request("alice", "wrong-2"))
        public = basic_request("alice", "wrong-3")
        skip = await checks.check(
            AuthRequest(
                has_http=True,
                method="GET",
                host=public.host,
                path="/public/x",
                scheme="https",
                headers=public.headers,
                client=public.client,
            )
        )
        return blocked, skip

    blocked, skip = run(body())
    assert isinstance(blocked, Deny) and blocked.status == 429
    assert isinstance(skip, Allow) and skip.method == "skip"


@pytest.mark.parametrize("intercept", [True, False])
def test_the_core_answers_429_whatever_the_intercept_switch(intercept: bool) -> None:
    from ext_authz.core import steps
    from ext_authz.core.credentials import BasicCredential
    from ext_authz.core.model import Throttled

    app = make_app(external_host="https://app.example.com", intercept_header_auth=intercept)
    request = basic_request("alice", "x")
    decision = steps.decide(
        steps.Facts(
            request=request,
            app=app,
            credential=BasicCredential("alice", "x"),
            verdict=Throttled(retry_after=7),
        )
    )
    assert isinstance(decision, Deny) and decision.status == 429
    assert ("retry-after", "7") in decision.headers


def test_parallel_guesses_reserve_their_count_before_they_are_verified() -> None:
    """50 wrong passwords at once, each held by the verifier until all have arrived:
    before reservations (issue 19) every one passed the limit's check, as each was
    read before any was counted; now at most `failures` (3) reach the verifier."""
    release = asyncio.Event()
    arrived = 0

    class Slow(Verifier):
        async def __call__(self, username: str, password: str) -> Any:
            nonlocal arrived
            arrived += 1
            await release.wait()
            return await super().__call__(username, password)

    verifier = Slow(good="right")
    checks = service(verifier)

    async def body() -> list[Allow | Deny]:
        pending = [
            asyncio.ensure_future(checks.check(basic_request("alice", f"wrong-{i}")))
            for i in range(50)
        ]
        # Every Check has either reached the verifier or been answered.
        while arrived + sum(p.done() for p in pending) < 50:
            await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*pending)

    answers = run(body())
    statuses = sorted(getattr(a, "status", 200) for a in answers)
    assert verifier.calls == 3
    assert statuses == [401] * 3 + [429] * 47


def test_a_verified_credential_gives_its_reservation_back() -> None:
    verifier = Verifier(good="right")
    checks = service(verifier)

    async def body() -> list[Allow | Deny]:
        answers = [await checks.check(basic_request("alice", f"wrong-{i}")) for i in range(2)]
        # Three new good credentials (other users) between them: none is counted.
        for user in ("bob", "carol", "dave"):
            verifier.good = "right-" + user
            answers.append(await checks.check(basic_request(user, "right-" + user)))
        answers.append(await checks.check(basic_request("alice", "wrong-3")))
        answers.append(await checks.check(basic_request("alice", "wrong-4")))
        return answers

    statuses = [getattr(a, "status", 200) for a in run(body())]
    assert statuses == [401, 401, 200, 200, 200, 401, 429]
