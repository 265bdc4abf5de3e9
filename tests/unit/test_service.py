"""CheckService with fakes at its edges: the I/O ordering and the fault mapping.

The real store (MemoryStore) and repositories are used; the IdP is a fake whose
answers each test chooses. The same paths run against the real IdP, Redis and Envoy
in tests/e2e; here every branch is reached cheaply and deterministically.
"""

from __future__ import annotations

import asyncio
import base64
import string
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from argon2 import PasswordHasher
from prometheus_client import CollectorRegistry

from ext_authz.adapters.directory import DirectoryVerifier
from ext_authz.adapters.memory_store import MemoryStore
from ext_authz.adapters.oidc import Discovery, TokenError, TokenSet
from ext_authz.config import Application, Directory
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.login import MAX_RETURN_URL
from ext_authz.core.model import AuthRequest, Identity, Rejected, Unavailable, Verified
from ext_authz.errors import IdPUnavailable, StoreUnavailable
from ext_authz.hash_pool import HashPool
from ext_authz.metrics import Metrics
from ext_authz.service import AppRuntime, CheckService
from ext_authz.sessions import CredentialCache, LoginStateRepository, SessionRepository
from ext_authz.throttle import Throttle
from tests.unit.conftest import app_config, apps, make_app

SECRET = b"unit-test-secret-0123456789abcdef-0123"
APP = make_app(external_host="https://app.example.com")
DISCOVERY = Discovery(
    issuer="https://idp.example.com",
    authorization_endpoint="https://idp.example.com/authorize",
    token_endpoint="https://idp.example.com/token",
    jwks_uri="https://idp.example.com/jwks",
    end_session_endpoint="https://idp.example.com/logout",
)
ALICE = Identity(
    sub="alice", preferred_username="alice", email="a@example.com", id_token="id.token.alice"
)


@dataclass
class FakeOIDC:
    down: bool = False
    exchange_error: str = ""
    exchange_hangs: bool = False
    claims: dict[str, Any] = field(
        default_factory=lambda: {"sub": "alice", "preferred_username": "alice"}
    )
    userinfo_claims: dict[str, Any] = field(default_factory=dict)
    nonces: list[str | None] = field(default_factory=list)
    redirect_uris: list[str] = field(default_factory=list)

    async def discovery(self) -> Discovery:
        if self.down:
            raise IdPUnavailable("down")
        return DISCOVERY

    async def exchange_code(self, code: str, verifier: str, redirect_uri: str) -> TokenSet:
        self.redirect_uris.append(redirect_uri)
        if self.down:
            raise IdPUnavailable("down")
        if self.exchange_error:
            raise TokenError(self.exchange_error)
        if self.exchange_hangs:
            await asyncio.Event().wait()
        return TokenSet(access_token="at", id_token="id.token.x", expires_in=300, raw={})

    async def verify_id_token(self, id_token: str, *, nonce: str | None) -> dict[str, Any]:
        self.nonces.append(nonce)
        return dict(self.claims)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        return dict(self.userinfo_claims)


class FailingStore(MemoryStore):
    """A store that is down while `down` is set."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def get(self, namespace: str, key: str) -> bytes | None:
        self._check()
        return await super().get(namespace, key)

    async def set(self, namespace: str, key: str, value: bytes, ttl: float) -> None:
        self._check()
        await super().set(namespace, key, value, ttl)

    async def take(self, namespace: str, key: str) -> bytes | None:
        self._check()
        return await super().take(namespace, key)

    async def index_add(self, namespace: str, key: str, member: str, ttl: float) -> None:
        self._check()
        await super().index_add(namespace, key, member, ttl)


Verifier = Callable[..., Awaitable[Any]]


class CountingVerifier:
    """A verifier that answers `outcomes` in order (the last one from then on) and counts
    its calls. With `gated`, each call waits until the test sets `release`, so a test
    decides when a verification ends instead of racing a delay against the clock;
    `waiting` and `cancelled` say what the calls are doing meanwhile."""

    def __init__(self, *outcomes: Any, delay: float = 0.0, gated: bool = False) -> None:
        self._outcomes = list(outcomes)
        self._delay = delay
        self._gated = gated
        self.release = asyncio.Event()
        self.calls = 0
        self.waiting = 0
        self.cancelled = 0

    async def __call__(self, username: str, password: str) -> Any:
        self.calls += 1
        self.waiting += 1
        try:
            if self._gated:
                await self.release.wait()
            if self._delay:
                await asyncio.sleep(self._delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.waiting -= 1
        return self._outcomes.pop(0) if len(self._outcomes) > 1 else self._outcomes[0]


class FakeClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def wall(self) -> float:
        return self.now

    def mono(self) -> float:
        return self.now - 1_799_000_000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the other tasks run until `condition()` holds. Each turn of the loop runs
    every ready task one step, so no time needs to pass; the deadline only bounds a
    failure."""
    try:
        async with asyncio.timeout(30):
            while not condition():
                await asyncio.sleep(0)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def credential_misses(registry: CollectorRegistry) -> float:
    """Checks that looked for their credential in the cache and missed it (counted
    just before a check starts or joins the credential's verification)."""
    value = registry.get_sample_value(
        "ext_authz_cache_requests_total", {"cache": "credential", "result": "miss"}
    )
    return value or 0.0


def service(
    *,
    store: MemoryStore | None = None,
    oidc: FakeOIDC | None = None,
    basic: Verifier | None = None,
    bearer: Verifier | None = None,
    local_ttl: float = 0.0,
    app: Application = APP,
    clock: FakeClock | Callable[[], float] | None = None,
    registry: CollectorRegistry | None = None,
    credential_current: Callable[[Identity], bool] | None = None,
) -> tuple[CheckService, MemoryStore]:
    """A CheckService over a MemoryStore; `clock` drives every clock it reads (a plain
    function: the wall clock only)."""
    if isinstance(clock, FakeClock):
        wall, mono = clock.wall, clock.mono
    else:
        wall, mono = clock or time.time, time.monotonic
    store = store or MemoryStore("t:", clock=mono)
    runtime = AppRuntime(app=app, verify_basic=basic, verify_bearer=bearer, oidc=oidc)  # type: ignore[arg-type]
    repo_clocks: dict[str, Any] = {"clock_wall": wall, "clock_mono": mono}
    return (
        CheckService(
            [runtime],
            sessions=SessionRepository(store, secret=SECRET, local_ttl=local_ttl, **repo_clocks),
            credentials=CredentialCache(store, secret=SECRET, local_ttl=local_ttl, **repo_clocks),
            logins=LoginStateRepository(store, secret=SECRET, clock_wall=wall),
            metrics=(metrics := Metrics(registry or CollectorRegistry())),
            throttle=Throttle(store, secret=SECRET, metrics=metrics),
            clock=wall,
            credential_current=credential_current,
        ),
        store,
    )


def request(path: str = "/", query: str = "", **headers: str) -> AuthRequest:
    return AuthRequest(
        has_http=True,
        method="GET",
        host="app.example.com",
        path=path,
        query=query,
        scheme="https",
        headers={"accept": "text/html", **headers},
        request_id="rid-1",
    )


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def header(deny: Deny, name: str) -> list[str]:
    return [v for k, v in deny.headers if k == name]


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the sign-in round trip ----------------------------------------------------------


async def _start(svc: CheckService, path: str = "/wanted") -> tuple[Deny, str, str]:
    start = await svc.check(request(path))
    assert isinstance(start, Deny) and start.status == 302
    location = header(start, "location")[0]
    state = parse_qs(urlsplit(location).query)["state"][0]
    login_cookie = next(c for c in header(start, "set-cookie") if "_login=" in c)
    return start, state, login_cookie.split(";", 1)[0]


def test_sign_in_round_trip_and_replay() -> None:
    oidc = FakeOIDC()
    svc, _ = service(oidc=oidc)

    async def scenario() -> None:
        _, state, cookie = await _start(svc)
        done = await svc.check(
            request("/outpost.goauthentik.io/callback", f"code=c&state={state}", cookie=cookie)
        )
        assert isinstance(done, Deny) and done.status == 302
        assert header(done, "location") == ["https://app.example.com/wanted"]
        session = next(c for c in header(done, "set-cookie") if c.startswith(APP.cookie_name + "="))
        assert oidc.nonces and oidc.nonces[0]
        value = session.split(";", 1)[0]
        allowed = await svc.check(request("/next", cookie=value))
        assert isinstance(allowed, Allow) and allowed.method == "session"
        replay = await svc.check(
            request("/outpost.goauthentik.io/callback", f"code=c&state={state}", cookie=cookie)
        )
        assert isinstance(replay, Deny) and replay.status == 400

    run(scenario())


def test_sign_in_uses_authentiks_strict_redirect_uri_and_keeps_the_sid() -> None:
    # authentik matches the redirect URI strictly, query included, at the authorize
    # request and at the code exchange; the IdP sends the browser back to it with the
    # query kept and code/state appended.
    oidc = FakeOIDC(claims={"sub": "alice", "preferred_username": "alice", "sid": "ak-sid-1"})
    svc, _ = service(oidc=oidc)
    strict = (
        "https://app.example.com/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"
    )
    assert APP.redirect_uri == strict

    async def scenario() -> None:
        start, state, cookie = await _start(svc)
        sent = parse_qs(urlsplit(header(start, "location")[0]).query)
        assert sent["redirect_uri"] == [strict]
        done = await svc.check(
            request(
                "/outpost.goauthentik.io/callback",
                f"X-authentik-auth-callback=true&code=c&state={state}",
                cookie=cookie,
            )
        )
        assert isinstance(done, Deny) and done.status == 302, done
        assert header(done, "location") == ["https://app.example.com/wanted"]
        assert oidc.redirect_uris == [strict]
        session = next(c for c in header(done, "set-cookie") if c.startswith(APP.cookie_name + "="))
        allowed = await svc.check(request("/next", cookie=session.split(";", 1)[0]))
        assert isinstance(allowed, Allow) and allowed.identity is not None
        assert allowed.identity.sid == "ak-sid-1"

    run(scenario())


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("error=access_denied&state=x", 403),
        ("state=x", 400),
        ("code=c", 400),
        ("code=c&state=never-issued", 400),
    ],
)
def test_callback_refusals(query: str, status: int) -> None:
    svc, _ = service(oidc=FakeOIDC())
    answer = run(svc.check(request("/outpost.goauthentik.io/callback", query)))
    assert isinstance(answer, Deny) and answer.status == status
    assert not header(answer, "location"), "an error page, never a redirect loop"


@pytest.mark.parametrize(
    "stranger",
    [
        pytest.param("", id="no-login-cookie"),
        pytest.param(
            APP.cookie_name + "_login=someone-elses-binding-value-0123456789abcdef", id="own-cookie"
        ),
    ],
)
def test_callback_from_another_browser_is_refused_and_spoils_nothing(stranger: str) -> None:
    """SPEC §6 "Callback": the login cookie is checked before the state is used up, so
    whoever sees the victim's callback URL cannot spoil the victim's sign-in."""
    svc, _ = service(oidc=FakeOIDC())
    callback = "/outpost.goauthentik.io/callback"

    async def scenario() -> None:
        _, state, cookie = await _start(svc)
        headers = {"cookie": stranger} if stranger else {}
        refused = await svc.check(request(callback, f"code=c&state={state}", **headers))
        assert isinstance(refused, Deny) and refused.status == 400
        victim = await svc.check(request(callback, f"code=c&state={state}", cookie=cookie))
        assert isinstance(victim, Deny) and victim.status == 302
        assert header(victim, "location") == ["https://app.example.com/wanted"]
        replay = await svc.check(request(callback, f"code=c&state={state}", cookie=cookie))
        assert isinstance(replay, Deny) and replay.status == 400

    run(scenario())


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(("/huge", "q=" + "a" * 50_000), id="original-url"),
        pytest.param(
            (
                "/outpost.goauthentik.io/start",
                "rd=https%3A%2F%2Fapp.example.com%2Fwanted%3Fq%3D" + "b" * 50_000,
            ),
            id="rd",
        ),
    ],
)
def test_a_huge_return_url_is_never_stored_and_lands_on_external_host(
    start: tuple[str, str],
) -> None:
    """SPEC §6 "Start": a return URL over 2 KiB becomes external_host; the login state
    (state, verifier, nonce, return URL) stays a few hundred bytes."""
    svc, store = service(oidc=FakeOIDC())

    async def scenario() -> Deny:
        begun = await svc.check(request(*start))
        assert isinstance(begun, Deny) and begun.status == 302
        (blob, _ttl), *others = store.raw_entries().values()
        assert not others and isinstance(blob, bytes)
        assert len(blob) < 1024, f"a {len(blob)}-byte login state"
        state = parse_qs(urlsplit(header(begun, "location")[0]).query)["state"][0]
        login = next(c for c in header(begun, "set-cookie") if "_login=" in c).split(";", 1)[0]
        done = await svc.check(
            request("/outpost.goauthentik.io/callback", f"code=c&state={state}", cookie=login)
        )
        assert isinstance(done, Deny)
        return done

    done = run(scenario())
    assert done.status == 302
    assert header(done, "location") == ["https://app.example.com/"]


@pytest.mark.parametrize("fill", ["a", "\u00e9", "\u4e2d", "\U0001f600"])
def test_the_largest_kept_return_url_still_makes_a_small_record(fill: str) -> None:
    """Whatever its characters, a return URL at the 2 KiB limit (percent-encoded) is
    kept and its login state stays under 3 KB."""
    prefix = "https://app.example.com/wanted?q="
    budget = MAX_RETURN_URL - len(prefix)
    width = len(quote(fill))
    url = prefix + fill * (budget // width) + "a" * (budget % width)
    assert len(quote(url, safe=string.printable)) == MAX_RETURN_URL
    svc, store = service(oidc=FakeOIDC())

    async def scenario() -> Deny:
        begun = await svc.check(request("/outpost.goauthentik.io/start", "rd=" + quote(url)))
        assert isinstance(begun, Deny) and begun.status == 302
        ((blob, _ttl),) = store.raw_entries().values()
        assert isinstance(blob, bytes) and len(blob) < 3 * 1024, f"{len(blob)} bytes"
        state = parse_qs(urlsplit(header(begun, "location")[0]).query)["state"][0]
        login = next(c for c in header(begun, "set-cookie") if "_login=" in c).split(";", 1)[0]
        done = await svc.check(
            request("/outpost.goauthentik.io/callback", f"code=c&state={state}", cookie=login)
        )
        assert isinstance(done, Deny)
        return done

    assert header(run(scenario()), "location") == [url]


@pytest.mark.parametrize(
    ("down", "error", "status"), [(True, "", 503), (False, "invalid_grant", 400)]
)
def test_callback_token_faults(down: bool, error: str, status: int) -> None:
    oidc = FakeOIDC()
    svc, _ = service(oidc=oidc)

    async def scenario() -> Deny:
        _, state, cookie = await _start(svc)
        oidc.down, oidc.exchange_error = down, error
        answer = await svc.check(
            request("/outpost.goauthentik.io/callback", f"code=c&state={state}", cookie=cookie)
        )
        assert isinstance(answer, Deny)
        return answer

    answer = run(scenario())
    assert answer.status == status
    if status == 503:
        assert header(answer, "retry-after")


def test_userinfo_fills_missing_attributes_only_for_the_same_subject() -> None:
    for userinfo_sub, expected in (("alice", {"team": "blue"}), ("mallory", {})):
        oidc = FakeOIDC(
            userinfo_claims={"sub": userinfo_sub, "ak_proxy": {"user_attributes": {"team": "blue"}}}
        )
        svc, _ = service(oidc=oidc)

        async def scenario(svc: CheckService = svc) -> Allow:
            _, state, cookie = await _start(svc)
            done = await svc.check(
                request("/outpost.goauthentik.io/callback", f"code=c&state={state}", cookie=cookie)
            )
            assert isinstance(done, Deny)
            value = next(
                c for c in header(done, "set-cookie") if c.startswith(APP.cookie_name + "=")
            ).split(";", 1)[0]
            allowed = await svc.check(request("/", cookie=value))
            assert isinstance(allowed, Allow)
            return allowed

        allowed = run(scenario())
        assert allowed.identity is not None
        assert dict(allowed.identity.attributes) == expected


def test_start_with_the_idp_or_store_down_is_503() -> None:
    svc, _ = service(oidc=FakeOIDC(down=True))
    answer = run(svc.check(request("/page")))
    assert isinstance(answer, Deny) and answer.status == 503
    store = FailingStore("t:")
    store.down = True
    svc, _ = service(store=store, oidc=FakeOIDC())
    answer = run(svc.check(request("/page")))
    assert isinstance(answer, Deny) and answer.status == 503


def test_sign_out_without_and_with_a_session() -> None:
    svc, store = service(oidc=FakeOIDC())

    async def scenario() -> None:
        home = await svc.check(request("/outpost.goauthentik.io/sign_out"))
        assert isinstance(home, Deny) and header(home, "location") == ["https://app.example.com/"]
        repo = SessionRepository(store, secret=SECRET, local_ttl=0)
        one = await repo.create(APP.name, ALICE, 4_000_000_000)
        two = await repo.create(APP.name, ALICE, 4_000_000_000)
        out = await svc.check(
            request("/", "X-authentik-logout=true", cookie=f"{APP.cookie_name}={one}")
        )
        assert isinstance(out, Deny) and out.status == 302
        location = header(out, "location")[0]
        assert location.startswith(DISCOVERY.end_session_endpoint or "")
        params = parse_qs(urlsplit(location).query)
        assert params["id_token_hint"] == ["id.token.alice"]
        assert params["post_logout_redirect_uri"] == ["https://app.example.com"]
        for value in (one, two):
            assert await repo.get(APP.name, value) is None

    run(scenario())


# --- header authentication -----------------------------------------------------------


def test_verifier_that_raises_fails_closed() -> None:
    async def broken(username: str, password: str) -> Any:
        raise RuntimeError("bug")

    svc, _ = service(basic=broken)
    answer = run(svc.check(request(authorization=basic_header("a", "b"))))
    assert isinstance(answer, Deny) and answer.status == 503


def test_concurrent_identical_credentials_verify_once() -> None:
    verifier = CountingVerifier(Verified(ALICE), gated=True)
    registry = CollectorRegistry()
    svc, _ = service(basic=verifier, registry=registry)

    async def scenario() -> list[Any]:
        header_value = basic_header("alice", "pw")
        checks = [
            asyncio.ensure_future(svc.check(request(authorization=header_value))) for _ in range(8)
        ]
        # All eight missed the cache, so all eight joined one verification that is
        # still waiting for its answer.
        await until(lambda: credential_misses(registry) == 8, "8 checks to miss the cache")
        await until(lambda: verifier.waiting == 1, "the verification to start")
        verifier.release.set()
        return await asyncio.gather(*checks)

    answers = run(scenario())
    assert all(isinstance(a, Allow) for a in answers)
    assert verifier.calls == 1


def test_cached_rejection_and_unavailable_is_never_cached() -> None:
    verifier = CountingVerifier(Unavailable("timeout"), Rejected("invalid_grant"), Verified(ALICE))

    svc, _ = service(basic=verifier)
    header_value = basic_header("alice", "pw")

    async def scenario() -> list[Any]:
        return [await svc.check(request(authorization=header_value)) for _ in range(3)]

    first, second, third = run(scenario())
    assert isinstance(first, Deny) and first.status == 503
    assert isinstance(second, Deny) and second.status == 401
    assert isinstance(third, Deny) and third.status == 401  # the rejection is cached
    assert verifier.calls == 2


def test_credential_cache_never_outlives_the_token() -> None:
    clock = FakeClock()
    token_left = 30.0  # the token expires long before cache_ttl (60 s) would end
    assert APP.receive.cache_ttl > token_left
    soon = Identity(sub="alice", expires_at=clock.wall() + token_left)
    verifier = CountingVerifier(Verified(soon, ttl=60))

    svc, _ = service(basic=verifier, clock=clock)
    header_value = basic_header("alice", "pw")

    async def scenario() -> None:
        await svc.check(request(authorization=header_value))
        await svc.check(request(authorization=header_value))
        assert verifier.calls == 1
        clock.advance(token_left - 1)
        await svc.check(request(authorization=header_value))
        assert verifier.calls == 1, "cached while the token lives"
        clock.advance(2)
        await svc.check(request(authorization=header_value))

    run(scenario())
    assert verifier.calls == 2, "verified again once the token expired"


def test_repeated_basic_without_the_cookie_creates_one_session() -> None:
    async def verifier(username: str, password: str) -> Any:
        return Verified(ALICE)

    svc, _ = service(basic=verifier)
    header_value = basic_header("alice", "pw")

    async def scenario() -> list[Any]:
        return [await svc.check(request(authorization=header_value)) for _ in range(5)]

    answers = run(scenario())
    assert all(isinstance(a, Allow) for a in answers)
    with_cookie = [a for a in answers if any(k == "set-cookie" for k, _ in a.response_headers)]
    assert len(with_cookie) == 1


def test_two_replicas_asked_at_once_verify_once() -> None:
    slow = CountingVerifier(Verified(ALICE), delay=0.2)

    store = MemoryStore("t:")
    one, _ = service(store=store, basic=slow)
    two, _ = service(store=store.sibling(), basic=slow)
    header_value = basic_header("alice", "pw")

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            *(svc.check(request(authorization=header_value)) for svc in (one, two) * 4)
        )

    answers = run(scenario())
    assert all(isinstance(a, Allow) for a in answers)
    assert slow.calls == 1


def test_a_replica_left_without_an_answer_verifies_itself() -> None:
    verifier = CountingVerifier(Unavailable("timeout"), Verified(ALICE), delay=0.1)

    store = MemoryStore("t:")
    one, _ = service(store=store, basic=verifier)
    two, _ = service(store=store.sibling(), basic=verifier)
    header_value = basic_header("alice", "pw")

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            one.check(request(authorization=header_value)),
            two.check(request(authorization=header_value)),
        )

    first, second = run(scenario())
    # One replica asked and got no answer (IdP down: nothing cached); the other, which
    # was waiting, found the claim free again and asked itself.
    statuses = sorted(a.status if isinstance(a, Deny) else 200 for a in (first, second))
    assert statuses == [200, 503]
    assert verifier.calls == 2


def test_a_cancelled_check_does_not_cancel_others_on_the_same_credential() -> None:
    verifier = CountingVerifier(Verified(ALICE), gated=True)
    registry = CollectorRegistry()
    svc, _ = service(basic=verifier, registry=registry)
    header_value = basic_header("alice", "pw")

    async def scenario() -> tuple[asyncio.Task[Any], Any]:
        first = asyncio.ensure_future(svc.check(request(authorization=header_value)))
        await until(lambda: verifier.waiting == 1, "the first check's verification to start")
        second = asyncio.ensure_future(svc.check(request(authorization=header_value)))
        await until(lambda: credential_misses(registry) == 2, "the second check to join it")
        first.cancel()  # e.g. Envoy gave up on this RPC
        await asyncio.wait([first])
        # The verification the second check waits for goes on.
        assert verifier.waiting == 1 and verifier.cancelled == 0
        assert not second.done()
        verifier.release.set()
        return first, await second

    first, answer = run(scenario())
    assert first.cancelled(), "the first check really was cancelled"
    assert isinstance(answer, Allow) and answer.method == "basic"
    assert verifier.calls == 1 and verifier.cancelled == 0


def test_stale_cookie_is_expired_when_no_session_can_replace_it() -> None:
    async def verifier(username: str, password: str) -> Any:
        return Verified(ALICE)

    store = FailingStore("t:")
    svc, _ = service(store=store, basic=verifier)
    stale = f"{APP.cookie_name}=no-such-session-0123456789abcdefghijklmnopq"

    async def scenario() -> Any:
        # The cookie resolves to nothing (stale); then the store fails at create.
        original_set = store.set

        async def failing_set(*args: Any) -> None:
            raise StoreUnavailable("down")

        store.set = failing_set  # type: ignore[method-assign]
        try:
            return await svc.check(request(authorization=basic_header("alice", "pw"), cookie=stale))
        finally:
            store.set = original_set  # type: ignore[method-assign]

    answer = run(scenario())
    assert isinstance(answer, Allow)
    cookies = [v for k, v in answer.response_headers if k == "set-cookie"]
    assert len(cookies) == 1 and "Max-Age=0" in cookies[0]


def test_undeclared_additional_headers_are_logged_by_name_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    carol = Identity(
        sub="carol",
        preferred_username="carol",
        attributes={"additionalHeaders": {"X-Floor": "secret-floor", "X-authentik-uid": "0"}},
    )
    svc, _ = service(basic=CountingVerifier(Verified(carol)))
    with caplog.at_level("WARNING", logger="ext_authz"):
        allowed = run(svc.check(request(authorization=basic_header("carol", "pw"))))
    assert isinstance(allowed, Allow)
    (line,) = [r for r in caplog.records if r.getMessage().startswith("additional header")]
    assert line.headers == ["X-Floor", "X-authentik-uid"]  # type: ignore[attr-defined]
    assert line.app == APP.name and line.request_id == "rid-1"  # type: ignore[attr-defined]
    assert "secret-floor" not in caplog.text


# --- the cost of a guess: no work for a verification nobody waits for (SPEC §5) -------


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (bounded; no timing involved)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def _directory_verifier(pool: HashPool) -> DirectoryVerifier:
    fast = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    directory = Directory.model_validate(
        {"users": [{"username": "alice", "app_passwords": [fast.hash("alice-pw")]}]}
    )
    return DirectoryVerifier(directory, secret=SECRET, pool=pool)


@pytest.mark.parametrize("cancelled", [1, 2])
def test_a_queued_hash_whose_checks_all_left_never_starts(cancelled: int) -> None:
    pool = HashPool(1)
    verifier = _directory_verifier(pool)
    svc, _ = service(basic=verifier.verify_password)
    header_value = basic_header("alice", "wrong-guess")
    gate = threading.Event()

    async def scenario() -> list[Any]:
        blocker = asyncio.ensure_future(pool.run(lambda: gate.wait(10), client="other"))
        await _until(lambda: pool.running == 1)
        checks = [
            asyncio.ensure_future(svc.check(request(authorization=header_value))) for _ in range(2)
        ]
        await _until(lambda: pool.pending == 1)  # one verification for both Checks
        for check in checks[:cancelled]:
            check.cancel()  # Envoy gave up on these RPCs
        await _until(lambda: all(c.done() for c in checks[:cancelled]))
        gate.set()
        await blocker
        return await asyncio.gather(*checks, return_exceptions=True)

    try:
        answers = run(scenario())
    finally:
        gate.set()
        pool.close()
    if cancelled == 2:
        assert pool.dropped == 1 and pool.started == 1  # only the blocker ever ran
    else:
        assert pool.dropped == 0 and pool.started == 2  # the other Check still waited
        assert isinstance(answers[1], Deny) and answers[1].status == 401


def test_a_full_hash_pool_is_503_with_retry_after() -> None:
    pool = HashPool(1, max_pending=1)
    verifier = _directory_verifier(pool)
    svc, _ = service(basic=verifier.verify_password)
    gate = threading.Event()

    async def scenario() -> Any:
        blocker = asyncio.ensure_future(pool.run(lambda: gate.wait(10), client="a"))
        queued = asyncio.ensure_future(pool.run(lambda: True, client="b"))
        await _until(lambda: pool.pending == 1)
        answer = await svc.check(request(authorization=basic_header("alice", "alice-pw")))
        gate.set()
        await asyncio.gather(blocker, queued)
        return answer

    try:
        answer = run(scenario())
    finally:
        gate.set()
        pool.close()
    assert isinstance(answer, Deny) and answer.status == 503
    assert header(answer, "retry-after")


# --- one deadline per verification (SPEC §5 "IdP unreachable") ---------------------------


def _quick_app() -> Application:
    config = app_config(external_host="https://app.example.com")
    config["oidc"]["timeout"] = "300ms"
    return apps(config)[0]


QUICK = _quick_app()
BOUND = 5.0  # seconds: only bounds a failure (Envoy's timeout in the shipped configs)


def test_a_verifier_past_oidc_timeout_is_our_503() -> None:
    async def hangs(username: str, password: str) -> Any:
        await asyncio.Event().wait()

    svc, _ = service(basic=hangs, app=QUICK)
    check = svc.check(request(authorization=basic_header("alice", "pw")))
    answer = run(asyncio.wait_for(check, BOUND))
    assert isinstance(answer, Deny) and answer.status == 503
    assert header(answer, "retry-after")


def test_waiting_for_a_silent_peer_replica_counts_against_the_deadline() -> None:
    """Another replica claimed the credential and never answers (it died): the wait for
    it and any verification after it share oidc.timeout, instead of waiting the claim's
    window (2 x timeout + 1 s) first."""
    verifier = CountingVerifier(Verified(ALICE))
    store = MemoryStore("t:")
    svc, _ = service(store=store, basic=verifier, app=QUICK)
    header_value = basic_header("alice", "pw")

    async def scenario() -> Any:
        peer = CredentialCache(store.sibling(), secret=SECRET, local_ttl=0)
        assert await peer.claim(QUICK.name, header_value, 60)
        return await asyncio.wait_for(svc.check(request(authorization=header_value)), BOUND)

    started = time.monotonic()
    answer = run(scenario())
    assert isinstance(answer, Deny) and answer.status == 503
    assert time.monotonic() - started < 2 * 0.3 + 1  # less than the claim window
    assert verifier.calls == 0


def test_a_slow_code_exchange_is_our_503_page() -> None:
    oidc = FakeOIDC()
    svc, _ = service(oidc=oidc, app=QUICK)

    async def scenario() -> Any:
        start = await svc.check(request("/wanted"))
        assert isinstance(start, Deny) and start.status == 302
        state = parse_qs(urlsplit(header(start, "location")[0]).query)["state"][0]
        login = next(c for c in header(start, "set-cookie") if "_login=" in c)
        oidc.exchange_hangs = True
        callback = svc.check(
            request(
                "/outpost.goauthentik.io/callback",
                f"code=c&state={state}",
                cookie=login.split(";", 1)[0],
            )
        )
        return await asyncio.wait_for(callback, BOUND)

    answer = run(scenario())
    assert isinstance(answer, Deny) and answer.status == 503
    assert header(answer, "retry-after")


# --- sessions from header auth (SPEC §5 "Sessions from header auth") --------------------

NOW = 1_700_000_000.0


def frozen() -> float:
    return NOW


def session_of(answer: Allow) -> tuple[str, str]:
    """(cookie pair, the whole Set-Cookie line) of the session an Allow created."""
    (line,) = [v for k, v in answer.response_headers if k == "set-cookie"]
    return line.split(";", 1)[0], line


@pytest.mark.parametrize(
    ("settings", "identity", "max_age"),
    [
        ({}, ALICE, 3600),  # header_session_lifetime's default, not session_lifetime's 24 h
        ({"receive": {"header_session_lifetime": "10m"}}, ALICE, 600),
        ({"session_lifetime": "5m"}, ALICE, 300),  # never past session_lifetime either
        ({}, Identity(sub="alice", expires_at=NOW + 120), 120),  # nor the token's exp
    ],
)
def test_a_session_from_header_auth_lasts_header_session_lifetime(
    settings: dict[str, Any], identity: Identity, max_age: int
) -> None:
    app = make_app(external_host="https://app.example.com", **settings)
    svc, _ = service(basic=CountingVerifier(Verified(identity)), app=app, clock=frozen)
    answer = run(svc.check(request(authorization=basic_header("alice", "pw"))))
    assert isinstance(answer, Allow)
    _, line = session_of(answer)
    assert f"Max-Age={max_age};" in line


def test_a_directory_session_ends_when_its_credential_leaves_the_directory() -> None:
    made = Identity(sub="bob", preferred_username="bob", provider="directory", credential_ref="r1")
    held = {"r1"}
    verifier = CountingVerifier(Verified(made))
    svc, store = service(
        basic=verifier,
        clock=frozen,
        credential_current=lambda identity: identity.credential_ref in held,
    )
    header_value = basic_header("bob", "bob-pw")

    async def scenario() -> tuple[Any, Any, Any]:
        first = await svc.check(request(authorization=header_value))
        assert isinstance(first, Allow)
        cookie, _ = session_of(first)
        again = await svc.check(request(cookie=cookie))
        assert isinstance(again, Allow) and again.method == "session"
        held.clear()  # restarted with bob's app password removed from the config
        by_cookie = await svc.check(request(cookie=cookie))
        by_header = await svc.check(request(authorization=header_value, accept="*/*"))
        sessions = SessionRepository(store, secret=SECRET, local_ttl=0, clock_wall=frozen)
        return by_cookie, by_header, await sessions.get(APP.name, cookie.split("=", 1)[1])

    by_cookie, by_header, stored = run(scenario())
    # The cookie no longer opens anything, is expired, and its session is gone.
    assert isinstance(by_cookie, Deny) and by_cookie.status == 401
    assert any("Max-Age=0" in v for v in header(by_cookie, "set-cookie"))
    assert stored is None
    # The credential cache (in Redis, across restarts) no longer vouches for it either,
    # and nothing was verified again to learn that.
    assert isinstance(by_header, Deny) and by_header.status == 401
    assert verifier.calls == 1
