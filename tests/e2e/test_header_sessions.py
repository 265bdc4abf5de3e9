"""Sessions made from header authentication, through real Envoy and redis-server
(issue 11 finding 7, SPEC §5 "Sessions from header auth").

A session created from a Basic or Bearer credential lasts at most
`receive.header_session_lifetime` (1 h by default), and one made from a directory
credential ends as soon as the directory no longer holds that user, app password or
token: the replicas are restarted with the changed config (sessions and the credential
cache live on in Redis across the restart) and the old cookie no longer opens anything.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
import redis as redis_lib
from argon2 import PasswordHasher

from tests.stack.demo import ALICE, BOB, BOB_STATIC_TOKEN, CAROL, Stack
from tests.stack.redis import RedisServer
from tests.support import basic, echoed

pytestmark = pytest.mark.e2e

COOKIE = re.compile(r"^(authentik_proxy_[0-9a-f]{8})=([^;]*)")


def session_cookie(response: Any) -> tuple[str, str, int]:
    """(name=value, the value, Max-Age) of the session cookie a response sets."""
    for line in response.headers.get_list("set-cookie"):
        found = COOKIE.match(line)
        if found:
            age = re.search(r"Max-Age=(\d+)", line)
            assert age is not None, line
            return found.group(0), found.group(2), int(age.group(1))
    raise AssertionError(f"no session cookie in {response.headers.get_list('set-cookie')}")


def session_ttl(redis_server: RedisServer, stack: Stack, cookie_value: str) -> float:
    """The store's TTL of the session behind a cookie, in seconds."""
    prefix = stack.config["store"]["key_prefix"]
    key = f"{prefix}session:{hashlib.sha256(cookie_value.encode()).hexdigest()}"
    ttl_ms = redis_lib.Redis(port=redis_server.port).pttl(key)
    assert ttl_ms > 0, key
    return ttl_ms / 1000


@pytest.mark.parametrize(
    ("overrides", "lifetime"),
    [
        pytest.param(None, 3600, id="default-1h"),
        pytest.param({"header_session_lifetime": "10m"}, 600, id="10m"),
    ],
)
def test_a_session_from_header_auth_lasts_header_session_lifetime(
    make_stack: Any, redis_server: RedisServer, overrides: dict[str, Any] | None, lifetime: int
) -> None:
    config = {"applications": {"whoami": {"receive": overrides}}} if overrides else None
    stack: Stack = make_stack(store="redis", idp=False, config_overrides=config)
    response = stack.get(
        "whoami", "/", headers={"Authorization": basic(BOB.username, BOB.app_password)}
    )
    assert echoed(response)["x-authentik-username"] == [BOB.username]
    _, value, max_age = session_cookie(response)
    print(f"header_session_lifetime {lifetime}s: Max-Age={max_age}")
    # Max-Age counts whole seconds from a moment after the expiry was fixed.
    assert lifetime - 2 <= max_age <= lifetime  # not session_lifetime's 24 h
    assert session_ttl(redis_server, stack, value) <= lifetime  # the store agrees


def test_a_directory_session_ends_when_its_credential_leaves_the_config(
    make_stack: Any,
) -> None:
    stack: Stack = make_stack(store="redis", idp=False, replicas=2, fresh=True)
    sessions: dict[str, str] = {}
    for who, authorization in (
        ("bob-password", basic(BOB.username, BOB.app_password)),
        ("bob-token", f"Bearer {BOB_STATIC_TOKEN}"),
        ("alice-old-password", basic(ALICE.username, ALICE.app_password)),
        ("carol", basic(CAROL.username, CAROL.app_password)),
    ):
        made = stack.get("whoami", f"/{who}", headers={"Authorization": authorization})
        assert made.status_code == 200, who
        sessions[who], _, _ = session_cookie(made)
    for who, cookie in sessions.items():
        assert stack.get("whoami", "/again", headers={"Cookie": cookie}).status_code == 200, who

    # The operator removes bob and gives alice a new app password; carol stays as she
    # is. Every replica restarts with that config; Redis keeps sessions and caches.
    for replica in stack.replicas:
        users = replica.config["directory"]["users"]
        users[:] = [u for u in users if u["username"] != BOB.username]
        alice = next(u for u in users if u["username"] == ALICE.username)
        alice["app_passwords"] = [PasswordHasher().hash("alice-new-app-password")]
        replica.restart()
    stack.envoy.wait_healthy()

    for who in ("bob-password", "bob-token", "alice-old-password"):
        answer = stack.get("whoami", "/after", headers={"Cookie": sessions[who]})
        assert answer.status_code == 401, (who, answer.status_code)
        # The stale cookie is expired in the answer.
        assert any(
            line.startswith(sessions[who].split("=", 1)[0] + "=") and "Max-Age=0" in line
            for line in answer.headers.get_list("set-cookie")
        ), who
    # Nor does the credential itself pass, though Redis still caches it as verified.
    for authorization in (
        basic(BOB.username, BOB.app_password),
        f"Bearer {BOB_STATIC_TOKEN}",
        basic(ALICE.username, ALICE.app_password),
    ):
        denied = stack.get("whoami", "/after", headers={"Authorization": authorization})
        assert denied.status_code == 401, authorization
    # The credential that stayed keeps its session across the restarts.
    kept = stack.get("whoami", "/after", headers={"Cookie": sessions["carol"]})
    assert echoed(kept)["x-authentik-username"] == [CAROL.username]
    # And alice's new password works.
    new = stack.get(
        "whoami",
        "/after",
        headers={"Authorization": basic(ALICE.username, "alice-new-app-password")},
    )
    assert echoed(new)["x-authentik-username"] == [ALICE.username]
