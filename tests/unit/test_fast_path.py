"""`CheckService.check_now` (issue 13): the answer from memory alone is the answer the
full path gives, it is only given when nothing needs the store, a verifier or
randomness, and its metrics are the same.

The same paths run through the real grpc.aio server and Envoy in tests/e2e (every
e2e test of sessions, sign-out and the credential cache runs with the fast path on).
"""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import Identity, Rejected, Verified
from tests.unit.conftest import make_app
from tests.unit.test_service import (
    ALICE,
    CountingVerifier,
    basic_header,
    request,
    run,
    service,
)

LOCAL = 60.0  # local_cache_ttl long enough that nothing expires during a test


def same(a: Allow | Deny, b: Allow | Deny) -> None:
    """Equal decisions (Allow.identity_part, a rendering aid, is left out of `==`)."""
    assert type(a) is type(b) and a == b


def checks_total(registry: CollectorRegistry, **labels: str) -> float:
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "ext_authz_checks_total" and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def make(**kwargs: Any) -> Any:
    registry = CollectorRegistry()
    svc, store = service(registry=registry, local_ttl=LOCAL, **kwargs)
    return svc, store, registry


def test_session_from_memory_equals_the_full_path() -> None:
    svc, _, registry = make(basic=CountingVerifier(Verified(ALICE)))

    async def scenario() -> tuple[Allow | Deny, Allow | Deny | None]:
        first = await svc.check(request(authorization=basic_header("alice", "pw")))
        assert isinstance(first, Allow)
        cookie = next(v for k, v in first.response_headers if k == "set-cookie")
        by_cookie = request("/page", cookie=f"theme=dark; {cookie.split(';', 1)[0]}")
        slow = await svc.check(by_cookie)
        return slow, svc.check_now(by_cookie)

    slow, now = run(scenario())
    assert isinstance(slow, Allow) and slow.method == "session"
    assert now is not None
    same(slow, now)
    assert ("cookie", "theme=dark") in now.set_headers
    # Both answers counted, alike.
    assert checks_total(registry, result="allow", method="session") == 2


def test_a_cached_credential_from_memory_equals_the_full_path() -> None:
    verifier = CountingVerifier(Verified(ALICE))
    svc, _, _ = make(basic=verifier)
    header_value = basic_header("alice", "pw")

    async def scenario() -> tuple[Allow | Deny, Allow | Deny | None]:
        await svc.check(request(authorization=header_value))  # verified and cached
        again = request(authorization=header_value, accept="*/*")
        return await svc.check(again), svc.check_now(again)

    slow, now = run(scenario())
    assert isinstance(slow, Allow) and slow.method == "basic" and not slow.create_session
    assert now is not None
    same(slow, now)
    assert verifier.calls == 1


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        pytest.param("/public/x", {}, 200, id="skip-path"),
        pytest.param("/api", {"accept": "application/json"}, 401, id="no-credentials"),
    ],
)
def test_nothing_to_look_up_is_answered_from_memory(
    path: str, headers: dict[str, str], status: int
) -> None:
    app = make_app(
        external_host="https://app.example.com",
        oidc=False,
        skip_path_regex=["^/public/"],
        receive={"basic": {"enabled": True, "verify": "directory"}},
    )
    svc, _, _ = make(app=app)
    ask = request(path, **headers)
    now = svc.check_now(ask)
    assert now is not None
    same(run(svc.check(ask)), now)
    assert (200 if isinstance(now, Allow) else now.status) == status


def test_what_needs_io_is_left_to_the_full_path() -> None:
    rejecting = CountingVerifier(Rejected("invalid credentials"))
    svc, _, _ = make(basic=rejecting)
    wrong = basic_header("alice", "wrong")

    async def scenario() -> list[Allow | Deny | None]:
        await svc.check(request(authorization=wrong, accept="*/*"))  # negatively cached
        return [
            # A browser to sign in: a login state to store.
            svc.check_now(request("/page")),
            # A cached rejection counts against the client's guessing limit.
            svc.check_now(request(authorization=wrong, accept="*/*")),
            # Outpost paths: the sign-in's own I/O.
            svc.check_now(request("/outpost.goauthentik.io/ping")),
            # A credential never seen.
            svc.check_now(request(authorization=basic_header("bob", "pw"))),
        ]

    assert run(scenario()) == [None] * 4


def test_a_session_cookie_this_process_does_not_hold_goes_to_the_store() -> None:
    svc, _, _ = make()
    app = make_app(external_host="https://app.example.com")
    assert svc.check_now(request(cookie=f"{app.cookie_name}=not-a-session")) is None


def test_a_directory_credential_gone_is_left_to_the_full_path() -> None:
    made = Identity(sub="bob", provider="directory", credential_ref="r1")
    held = {"r1"}
    svc, _ = service(
        basic=CountingVerifier(Verified(made)),
        local_ttl=LOCAL,
        credential_current=lambda identity: identity.credential_ref in held,
    )
    header_value = basic_header("bob", "pw")

    async def scenario() -> tuple[Any, Any]:
        await svc.check(request(authorization=header_value, accept="*/*"))
        before = svc.check_now(request(authorization=header_value, accept="*/*"))
        held.clear()
        return before, svc.check_now(request(authorization=header_value, accept="*/*"))

    before, after = run(scenario())
    assert isinstance(before, Allow)
    assert after is None


def test_an_unsafe_value_is_logged_once_per_cached_entry(caplog: pytest.LogCaptureFixture) -> None:
    odd = Identity(sub="carol", preferred_username="carol", name="line\nbreak")
    svc, _, _ = make(basic=CountingVerifier(Verified(odd)))
    header_value = basic_header("carol", "pw")

    async def scenario() -> None:
        for _ in range(3):
            await svc.check(request(authorization=header_value, accept="*/*"))
        for _ in range(3):
            assert svc.check_now(request(authorization=header_value, accept="*/*"))

    with caplog.at_level("WARNING", logger="ext_authz"):
        run(scenario())
    lines = [r for r in caplog.records if r.getMessage().startswith("identity header dropped")]
    # Once when verified, once for the cache entry it then came from: not per request.
    assert len(lines) == 2


def test_a_signed_out_sessions_headers_leave_the_process() -> None:
    """Issue 11, finding 11: the upstream headers (a token, an upstream password) are
    kept with the cached session only, and go when it ends."""
    from ext_authz.adapters import envoy

    secret_token = "token-that-must-not-linger"
    alice = dataclasses.replace(ALICE, token=secret_token)
    svc, _, _ = make(basic=CountingVerifier(Verified(alice)))

    async def scenario() -> None:
        first = await svc.check(request(authorization=basic_header("alice", "pw")))
        assert isinstance(first, Allow)
        cookie = next(v for k, v in first.response_headers if k == "set-cookie")
        pair = cookie.split(";", 1)[0]
        now = svc.check_now(request("/page", cookie=pair))
        assert isinstance(now, Allow)
        envoy.check_response_bytes(now)
        assert any(secret_token.encode() in v for v in envoy._RENDERED.values())
        del now, first
        signed_out = await svc.check(request("/outpost.goauthentik.io/sign_out", cookie=pair))
        assert isinstance(signed_out, Deny) and signed_out.status == 302

    run(scenario())
    gc.collect()
    assert not any(secret_token.encode() in v for v in envoy._RENDERED.values())
