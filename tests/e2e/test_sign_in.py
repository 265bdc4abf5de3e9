"""Browser sign-in and Redis sessions across replicas, through real Envoy, Redis and
the IdP (SPEC §6, §8). The httpx "browser" keeps cookies per host as a browser does."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest

from ext_authz.adapters.redis_store import RedisStore
from ext_authz.core.cookies import cookie_name_for
from ext_authz.core.login import code_challenge
from ext_authz.sessions import SessionRepository
from tests.e2e.signin import HTML, authorize_params, sign_in
from tests.stack.demo import ALICE, BOB, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, Stack
from tests.stack.demo import SECRET as DEMO_SECRET
from tests.stack.echo import EchoServer
from tests.stack.idp import AUTHENTIK_CALLBACK, IdP
from tests.stack.proc import wait_until
from tests.stack.redis import RedisServer

pytestmark = pytest.mark.e2e

SESSION = re.compile(r"^authentik_proxy_[0-9a-f]{8}$")


def session_pair(response: httpx.Response) -> tuple[str, str] | None:
    for line in response.headers.get_list("set-cookie"):
        name, _, rest = line.partition("=")
        if SESSION.match(name) and not rest.startswith(";"):
            return name, rest.split(";", 1)[0]
    return None


def set_cookie_line(response: httpx.Response, prefix: str) -> str:
    return next(c for c in response.headers.get_list("set-cookie") if c.startswith(prefix))


def test_redirect_carries_pkce_nonce_state_and_redirect_uri(stack: Stack) -> None:
    response = stack.get("app", "/some/page?x=1", headers=HTML)
    assert response.status_code == 302
    params = authorize_params(response.headers["location"])
    assert params["response_type"] == "code"
    assert params["client_id"] == OIDC_CLIENT_ID
    assert params["redirect_uri"] == stack.url("app", AUTHENTIK_CALLBACK)
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 32 and len(params["nonce"]) >= 32
    assert set(params["scope"].split()) >= {"openid", "profile", "email", "ak_proxy"}
    login_cookie = set_cookie_line(response, "authentik_proxy_")
    assert (
        "_login=" in login_cookie and "HttpOnly" in login_cookie and "Max-Age=600" in login_cookie
    )
    # The challenge is S256 of a verifier we never reveal: not the challenge of itself.
    assert params["code_challenge"] != code_challenge(params["code_challenge"])


def test_sign_in_end_to_end_and_replay(stack: Stack) -> None:
    # A cookie the client chose before signing in is never adopted as the session id.
    with stack.client() as browser:
        cookie_name = cookie_name_for(OIDC_CLIENT_ID)
        planted = "planted-session-id-0123456789abcdefghijklmnopqrstuv"
        browser.cookies.set(cookie_name, planted, domain="app.localhost")
        flow = sign_in(stack, ALICE, "/deep/page?q=1", client=browser)
        assert flow.final.status_code == 302
        assert flow.final.headers["location"] == stack.url("app", "/deep/page?q=1")
        pair = session_pair(flow.final)
        assert pair is not None and pair[1] != planted
        line = set_cookie_line(flow.final, pair[0] + "=")
        for attribute in ("HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="):
            assert attribute in line
        assert "Secure" not in line  # http external_host
        page = browser.get(flow.final.headers["location"], headers=HTML)
        assert page.status_code == 200
        assert "x-authentik-username" in page.text and "alice" in page.text
        # authentik's strict redirect URI: the IdP sent the browser back to it, query
        # kept; the tokens were HS256 with the client secret, as authentik signs them.
        assert flow.callback_url.startswith(stack.url("app", AUTHENTIK_CALLBACK + "&"))
        echoed = browser.get(stack.url("app", "/echo"))
        (upstream_jwt,) = json.loads(echoed.text)["headers"]["x-authentik-jwt"]
        assert jwt.get_unverified_header(upstream_jwt)["alg"] == "HS256"
        claims = jwt.decode(
            upstream_jwt, OIDC_CLIENT_SECRET, algorithms=["HS256"], audience=OIDC_CLIENT_ID
        )
        assert claims["sub"] == ALICE.username

        # Replaying the callback URL fails: the state is single use.
        replay = browser.get(flow.callback_url, headers=HTML)
        assert replay.status_code == 400
        assert "/outpost.goauthentik.io/start" in replay.text


def test_callback_errors_are_pages_not_loops(stack: Stack) -> None:
    denied = stack.get("app", "/outpost.goauthentik.io/callback?error=access_denied&state=x")
    assert denied.status_code == 403 and "access_denied" in denied.text
    bogus = stack.get("app", "/outpost.goauthentik.io/callback?code=abc&state=never-issued")
    assert bogus.status_code == 400
    assert "location" not in bogus.headers


@pytest.mark.parametrize(
    "rd",
    [
        "https://evil.example/",
        "//evil.example/",
        "javascript:alert(1)",
        "http://app.localhost.evil.example/",
        "/\\evil.example",
        "http://alice@evil.example/",
    ],
)
def test_start_never_returns_to_foreign_urls(stack: Stack, rd: str) -> None:
    flow = sign_in(stack, ALICE, f"/outpost.goauthentik.io/start?rd={quote(rd, safe='')}")
    assert flow.final.status_code == 302
    assert flow.final.headers["location"] == stack.url("app", "/")


def test_start_returns_to_a_local_url(stack: Stack) -> None:
    target = stack.url("app", "/wanted?a=b")
    flow = sign_in(stack, ALICE, f"/outpost.goauthentik.io/start?rd={quote(target, safe='')}")
    assert flow.final.headers["location"] == target


# --- two replicas sharing Redis: sessions, sign-out everywhere -----------------------


@pytest.fixture
def replicas_ab(
    workdir: Path,
    echo_server: EchoServer,
    redis_server: RedisServer,
    idp: IdP,
    envoy_port_pool: Any,
) -> Iterator[tuple[Stack, Stack]]:
    """Replica A and replica B, each behind its own Envoy, sharing Redis and key prefix:
    a request through A's port reaches only A, and through B's only B."""
    stacks = []
    try:
        for name in ("a", "b"):
            port = envoy_port_pool.take()
            stack = Stack(
                workdir=workdir / f"replica-{name}",
                echo=echo_server,
                envoy_port=port,
                idp=idp,
                store_url=redis_server.url,
                redis=redis_server,
                key_prefix="ext-authz-ab:",
                name=f"replica-{name}",
            )
            stacks.append(stack)
            stack.start()
        yield stacks[0], stacks[1]
    finally:
        for stack in stacks:
            stack.stop()
            envoy_port_pool.give_back(stack.port)


def _on(stack: Stack, cookie: tuple[str, str], path: str = "/") -> httpx.Response:
    return stack.get("app", path, headers={"Cookie": f"{cookie[0]}={cookie[1]}", **HTML})


def test_session_from_a_works_on_b_and_sign_out_ends_all(replicas_ab: tuple[Stack, Stack]) -> None:
    a, b = replicas_ab
    first = sign_in(a, BOB)
    second = sign_in(a, BOB)  # another browser of the same user
    one, two = session_pair(first.final), session_pair(second.final)
    assert one and two and one != two
    assert _on(b, one).status_code == 200
    assert _on(b, two).status_code == 200

    out = a.get("app", "/outpost.goauthentik.io/sign_out", headers={"Cookie": f"{one[0]}={one[1]}"})
    assert out.status_code == 302
    assert a.idp is not None
    assert out.headers["location"].startswith(a.idp.issuer)
    assert "id_token_hint=" in out.headers["location"]
    expired = set_cookie_line(out, one[0] + "=")
    assert "Max-Age=0" in expired

    # Pub/sub ends B's copies at once, local_cache_ttl (2 s) at the latest; how soon is
    # the machine's business, so the deadline only bounds a failure.
    signed_out = time.monotonic()
    wait_until(
        lambda: _on(b, one).status_code == 302 and _on(b, two).status_code == 302,
        30.0,
        "the sign-out on A to end both sessions on B",
    )
    print(f"sessions ended on B {time.monotonic() - signed_out:.2f}s after the sign-out on A")
    assert _on(b, one).status_code == 302, "sign-out ended the session on B"
    assert _on(b, two).status_code == 302, "sign-out ended the user's other session"


def _new_sid(idp: IdP, username: str, before: list[str]) -> str:
    (sid,) = [s for s in idp.sids(username) if s not in before]
    return sid


def test_ending_an_idp_session_by_sid_ends_its_sessions_on_both_replicas(
    replicas_ab: tuple[Stack, Stack],
) -> None:
    """What authentik's SESSION_END does (SPEC §11): the sessions made from one IdP
    session (the id_token's `sid`) end on every replica; another sign-in of the same
    user, from another IdP session, stays. The repository below is what the websocket
    handler calls, over the replicas' own Redis and key prefix."""
    a, b = replicas_ab
    assert a.idp is not None and a.redis is not None
    idp = a.idp
    before = idp.sids(BOB.username)
    first = session_pair(sign_in(a, BOB).final)
    first_sid = _new_sid(idp, BOB.username, before)
    before = idp.sids(BOB.username)
    second = session_pair(sign_in(b, BOB).final)  # another browser: another IdP session
    second_sid = _new_sid(idp, BOB.username, before)
    assert first and second and first_sid != second_sid
    for stack in (a, b):  # each replica now holds both sessions in its local cache
        assert _on(stack, first).status_code == 200
        assert _on(stack, second).status_code == 200

    async def end_first() -> int:
        store = RedisStore.from_url(a.redis.url, key_prefix="ext-authz-ab:", timeout=5)
        try:
            repo = SessionRepository(store, secret=DEMO_SECRET.encode(), local_ttl=0)
            return await repo.end_all_for_sid(first_sid)
        finally:
            await store.close()

    assert asyncio.run(end_first()) == 1
    wait_until(
        lambda: _on(a, first).status_code == 302 and _on(b, first).status_code == 302,
        30.0,
        "both replicas to drop the session of the ended IdP session",
    )
    assert _on(a, second).status_code == 200 and _on(b, second).status_code == 200


def test_redis_down_old_session_is_503_and_recovery_needs_no_restart(
    make_stack: Any, workdir: Path
) -> None:
    redis = RedisServer(workdir / "redis-outage")
    redis.start()
    try:
        stack: Stack = make_stack(
            store=redis, config_overrides={"store": {"local_cache_ttl": "1s"}}
        )
        flow = sign_in(stack, ALICE)
        pair = session_pair(flow.final)
        assert pair is not None
        assert _on(stack, pair).status_code == 200
        time.sleep(1.2)  # let the in-process copy age past local_cache_ttl
        redis.stop()
        down = _on(stack, pair)
        assert down.status_code == 503, (down.status_code, down.text[:200])
        assert down.headers.get("retry-after")
        redis.start()
        # The old session is gone with the old Redis (no persistence): a new sign-in works.
        deadline = time.monotonic() + 30  # bounds a failure only
        while True:
            try:
                again = sign_in(stack, BOB)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        new_pair = session_pair(again.final)
        assert new_pair is not None
        assert _on(stack, new_pair).status_code == 200
    finally:
        redis.stop()


def test_echo_page_json(stack: Stack) -> None:
    flow = sign_in(stack, ALICE)
    pair = session_pair(flow.final)
    assert pair is not None
    response = stack.get("app", "/x", headers={"Cookie": f"{pair[0]}={pair[1]}"})
    assert json.loads(response.text)["headers"]["x-authentik-email"] == [ALICE.email]
