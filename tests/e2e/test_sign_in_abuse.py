"""Abuse of the browser sign-in (issue 11, findings 3 and 8), through real Envoy, the
IdP and redis-server (SPEC §6 "Start", "Return URL", "Callback").

- A login state is small and bounded: a return URL over 2 KiB is replaced by
  `external_host` and never stored whole, so unauthenticated requests with huge URLs
  cannot fill the store. The record is measured where it lives, in Redis.
- Someone who sees a victim's callback URL cannot spoil that sign-in: a callback
  without the victim's login cookie does not use the state up.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
import redis

from tests.e2e.signin import HTML, authorize_params, sign_in, to_callback
from tests.stack.demo import ALICE, BOB, Stack

pytestmark = pytest.mark.e2e

MAX_RETURN_URL = 2048  # SPEC §6: longer return URLs are replaced by external_host
RECORD_BOUND = 3 * 1024  # state + verifier + nonce + binding + a 2 KiB URL, sealed


@pytest.fixture
def redis_stack(make_stack: object) -> Stack:
    stack: Stack = make_stack(store="redis")  # type: ignore[operator]
    assert stack.redis is not None
    return stack


@pytest.fixture
def store(redis_stack: Stack) -> Iterator[redis.Redis]:
    assert redis_stack.redis is not None
    client = redis_stack.redis.client()
    yield client
    client.close()


def login_keys(stack: Stack, client: redis.Redis) -> set[bytes]:
    """The keys of this stack's login-state namespace (SPEC §8: one namespace per kind)."""
    pattern = f"{stack.config['store']['key_prefix']}login:*"
    return set(client.scan_iter(match=pattern, count=1000))


def start_and_measure(stack: Stack, client: redis.Redis, browser: httpx.Client, path: str) -> int:
    """Open `path` unauthenticated (302 to the IdP) and return the size in bytes of
    the one login-state record that request stored."""
    before = login_keys(stack, client)
    first = browser.get(stack.url("app", path), headers=HTML)
    assert first.status_code == 302, (first.status_code, first.text[:200])
    assert authorize_params(first.headers["location"])["state"]
    (key,) = login_keys(stack, client) - before
    size = client.strlen(key)
    assert isinstance(size, int) and size > 0
    print(f"{len(stack.url('app', path))}-byte URL -> {size}-byte login state in Redis")
    return size


def padded_path(stack: Stack, total_length: int) -> str:
    """A path (with query) whose full original URL is exactly `total_length` bytes."""
    base = stack.url("app", "/long?q=")
    return "/long?q=" + "a" * (total_length - len(base))


def test_a_50kb_original_url_leaves_a_small_record_and_lands_on_external_host(
    redis_stack: Stack, store: redis.Redis
) -> None:
    path = padded_path(redis_stack, 50_000)
    assert len(redis_stack.url("app", path)) == 50_000
    with redis_stack.client() as browser:
        size = start_and_measure(redis_stack, store, browser, path)
        assert size < RECORD_BOUND, f"a 50 KB URL made a {size}-byte login state"
        flow = sign_in(redis_stack, ALICE, path, client=browser)
    assert flow.final.status_code == 302, flow.final.text[:200]
    assert flow.final.headers["location"] == redis_stack.url("app", "/")


def test_a_50kb_rd_leaves_a_small_record_and_lands_on_external_host(
    redis_stack: Stack, store: redis.Redis
) -> None:
    rd = redis_stack.url("app", "/wanted?q=" + "b" * 50_000)
    path = f"/outpost.goauthentik.io/start?rd={quote(rd, safe='')}"
    with redis_stack.client() as browser:
        size = start_and_measure(redis_stack, store, browser, path)
        assert size < RECORD_BOUND, f"a 50 KB rd made a {size}-byte login state"
        flow = sign_in(redis_stack, BOB, path, client=browser)
    assert flow.final.status_code == 302, flow.final.text[:200]
    assert flow.final.headers["location"] == redis_stack.url("app", "/")


def test_a_return_url_of_exactly_2_kib_is_kept_and_its_record_stays_bounded(
    redis_stack: Stack, store: redis.Redis
) -> None:
    path = padded_path(redis_stack, MAX_RETURN_URL)
    with redis_stack.client() as browser:
        size = start_and_measure(redis_stack, store, browser, path)
        assert size < RECORD_BOUND, f"the largest kept URL made a {size}-byte login state"
        flow = sign_in(redis_stack, ALICE, path, client=browser)
    assert flow.final.headers["location"] == redis_stack.url("app", path)


# --- finding 8: the callback checks the login cookie before using the state up --------


def test_a_callback_without_the_login_cookie_does_not_spoil_the_sign_in(stack: Stack) -> None:
    victim, _, callback = to_callback(stack, ALICE, "/victim/page")
    try:
        # Someone who saw the callback URL (a log, a shared screen, Referer) replays it
        # first: with no login cookie, and with a login cookie of their own.
        with stack.client() as stranger:
            no_cookie = stranger.get(callback, headers=HTML)
            assert no_cookie.status_code == 400, no_cookie.text[:200]
            assert "/outpost.goauthentik.io/start" in no_cookie.text
        with stack.client() as attacker:
            own = attacker.get(stack.url("app", "/attacker"), headers=HTML)
            assert own.status_code == 302
            assert any("_login=" in c for c in own.headers.get_list("set-cookie"))
            other_cookie = attacker.get(callback, headers=HTML)
            assert other_cookie.status_code == 400, other_cookie.text[:200]

        # The victim's own browser still completes the sign-in...
        jar = victim.cookies.jar
        (login_cookie,) = [(c.name, c.value) for c in jar if c.name.endswith("_login")]
        final = victim.get(callback, headers=HTML)
        assert final.status_code == 302, (final.status_code, final.text[:200])
        assert final.headers["location"] == stack.url("app", "/victim/page")
        page = victim.get(final.headers["location"], headers=HTML)
        assert page.status_code == 200 and "alice" in page.text

        # ...once: a replay fails, even with the right login cookie (the callback's
        # answer expired it in the browser, so send it by hand).
        cookie = {"Cookie": f"{login_cookie[0]}={login_cookie[1]}"}
        with stack.client() as replayer:
            replay = replayer.get(callback, headers={**HTML, **cookie})
        assert replay.status_code == 400, (replay.status_code, replay.text[:200])
    finally:
        victim.close()
