"""Receiving header authentication through real Envoy, redis-server and the IdP.

Application `app` of the demo world verifies Basic authentik-style (app passwords at
the IdP's token endpoint) and Bearer tokens as JWTs or by introspection.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.e2e.signin import sign_in
from tests.stack.demo import (
    ALICE,
    BOB,
    CAROL,
    OIDC_CLIENT_ID,
    OTHER_CLIENT_ID,
    Stack,
    private_idp_stack,
)
from tests.stack.echo import EchoServer
from tests.stack.idp import IdP
from tests.stack.redis import RedisServer
from tests.support import basic, echoed

pytestmark = pytest.mark.e2e

COOKIE_NAME = re.compile(r"^authentik_proxy_[0-9a-f]{8}$")


def session_cookie(response: Any) -> tuple[str, str, str]:
    """(name, value, the whole Set-Cookie line) of the session cookie."""
    for line in response.headers.get_list("set-cookie"):
        name, _, rest = line.partition("=")
        if COOKIE_NAME.match(name):
            return name, rest.split(";", 1)[0], line
    raise AssertionError(f"no session cookie in {response.headers.get_list('set-cookie')}")


def token_requests(idp: IdP) -> int:
    return idp.stats().get("token:client_credentials", 0)


@pytest.fixture
def shared(make_stack: Any) -> Stack:
    """Two replicas sharing one Redis."""
    stack: Stack = make_stack(replicas=2, store="redis")
    return stack


def test_app_password_allows_and_its_cookie_works_on_the_other_replica(make_stack: Any) -> None:
    stack: Stack = make_stack(replicas=2, store="redis", fresh=True)
    first = stack.get(
        "app", "/", headers={"Authorization": basic(ALICE.username, ALICE.app_password)}
    )
    headers = echoed(first)
    assert headers["x-authentik-username"] == ["alice"]
    assert headers["x-authentik-groups"] == ["admins"]
    assert headers["x-authentik-meta-provider"] == [OIDC_CLIENT_ID]
    assert headers["x-authentik-jwt"][0].count(".") == 2  # the raw JWT
    assert "authorization" not in headers
    name, value, line = session_cookie(first)
    assert "HttpOnly" in line and "SameSite=Lax" in line and "Path=/" in line
    assert "Secure" not in line  # external_host is http

    # Stop the replica that created it: the cookie alone must work on the other one.
    stack.replicas[0].stop()
    for _ in range(3):
        again = stack.get("app", "/next", headers={"Cookie": f"{name}={value}"})
        assert echoed(again)["x-authentik-username"] == ["alice"]
        assert not session_cookie_lines(again)


def session_cookie_lines(response: Any) -> list[str]:
    return [
        c for c in response.headers.get_list("set-cookie") if COOKIE_NAME.match(c.split("=")[0])
    ]


@pytest.mark.parametrize(
    ("authorization", "invalid_token"),
    [
        pytest.param(basic("alice", "wrong-password"), False, id="wrong-password"),
        pytest.param("Basic not*base64", False, id="malformed-basic"),
        pytest.param("Basic " + base64.b64encode(b"no-colon").decode(), False, id="no-colon"),
        pytest.param("Digest username=alice", False, id="unknown-scheme"),
        pytest.param("Bearer", True, id="empty-bearer"),  # HTTP strips trailing OWS
        pytest.param("Bearer not-a-token-anyone-issued", True, id="unknown-bearer"),
    ],
)
def test_invalid_header_is_401_when_intercepting(
    shared: Stack, authorization: str, invalid_token: bool
) -> None:
    response = shared.get(
        "app", "/", headers={"Authorization": authorization, "Accept": "application/json"}
    )
    assert response.status_code == 401
    challenges = response.headers.get_list("www-authenticate")
    assert 'Basic realm="app"' in challenges
    bearer = [c for c in challenges if c.startswith("Bearer")]
    assert bearer == [
        'Bearer realm="app", error="invalid_token"' if invalid_token else 'Bearer realm="app"'
    ]
    assert response.json()["error"] in ("invalid_token", "unauthorized")
    assert response.headers["cache-control"] == "no-store"


def test_without_intercept_invalid_header_is_ignored(make_stack: Any) -> None:
    stack: Stack = make_stack(
        store="redis", config_overrides={"applications": {"app": {"intercept_header_auth": False}}}
    )
    wrong = basic(ALICE.username, "wrong-password")
    login = stack.get("app", "/page", headers={"Authorization": wrong, "Accept": "text/html"})
    assert login.status_code == 302
    assert login.headers["location"].startswith(stack.idp.issuer)  # type: ignore[union-attr]

    # With a valid session the request passes, and the header reaches the upstream untouched.
    name, value, _ = session_cookie(sign_in(stack, ALICE).final)
    passed = stack.get("app", "/", headers={"Authorization": wrong, "Cookie": f"{name}={value}"})
    assert echoed(passed)["authorization"] == [wrong]


def test_jwt_access_tokens_are_checked_for_audience(shared: Stack) -> None:
    idp = shared.idp
    assert idp is not None
    # HS256 with the client secret (authentik's proxy provider) and RS256 both pass.
    for alg in ("HS256", "RS256"):
        token = idp.mint_access_token(OIDC_CLIENT_ID, "bob", fmt="jwt", alg=alg)
        ok = shared.get("app", "/", headers={"Authorization": f"Bearer {token}"})
        assert echoed(ok)["x-authentik-username"] == ["bob"], alg

    # Another application's tokens do not: RS256 (a good signature, the wrong audience)
    # and HS256 (keyed with that application's secret, not ours).
    for alg in ("RS256", "HS256"):
        other = idp.mint_access_token(OTHER_CLIENT_ID, "bob", fmt="jwt", alg=alg)
        denied = shared.get("app", "/", headers={"Authorization": f"Bearer {other}"})
        assert denied.status_code == 401, alg
        assert 'error="invalid_token"' in " ".join(denied.headers.get_list("www-authenticate"))


def test_alg_none_token_is_rejected(shared: Stack) -> None:
    assert shared.idp is not None

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    forged = (
        b64({"alg": "none", "typ": "JWT"})
        + "."
        + b64(
            {
                "iss": shared.idp.issuer,
                "aud": OIDC_CLIENT_ID,
                "sub": "alice",
                "preferred_username": "alice",
                "exp": 4_102_444_800,
            }
        )
        + "."
    )
    response = shared.get("app", "/", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert 'Bearer realm="app", error="invalid_token"' in response.headers.get_list(
        "www-authenticate"
    )


def test_opaque_token_via_introspection_and_token_login(shared: Stack) -> None:
    assert shared.idp is not None
    opaque = shared.idp.mint_access_token(OIDC_CLIENT_ID, "alice", fmt="opaque")
    assert opaque.count(".") == 0
    ok = shared.get("app", "/", headers={"Authorization": f"Bearer {opaque}"})
    assert echoed(ok)["x-authentik-username"] == ["alice"]

    # authentik's reserved username sends the password down the Bearer path.
    other = shared.idp.mint_access_token(OIDC_CLIENT_ID, "bob", fmt="opaque")
    via_basic = shared.get(
        "app", "/", headers={"Authorization": basic("goauthentik.io/token", other)}
    )
    assert echoed(via_basic)["x-authentik-username"] == ["bob"]


def metric(stack_replica: Any, name: str) -> float:
    import httpx

    text = httpx.get(f"{stack_replica.http_url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_twelve_requests_over_two_replicas_ask_the_idp_once(shared: Stack) -> None:
    idp = shared.idp
    assert idp is not None
    before = token_requests(idp)
    checks_before = [metric(r, "ext_authz_checks_total") for r in shared.replicas]
    credentials = basic(BOB.username, BOB.app_password)
    for i in range(12):
        response = shared.get("app", f"/n/{i}", headers={"Authorization": credentials})
        assert echoed(response)["x-authentik-username"] == ["bob"]
    assert token_requests(idp) - before == 1
    served = [
        metric(r, "ext_authz_checks_total") - b
        for r, b in zip(shared.replicas, checks_before, strict=True)
    ]
    assert all(n > 0 for n in served), f"both replicas answered: {served}"


def test_store_holds_nothing_in_clear(make_stack: Any, redis_server: RedisServer) -> None:
    stack: Stack = make_stack(store="redis", fresh=True)
    prefix = stack.config["store"]["key_prefix"]
    response = stack.get(
        "app", "/", headers={"Authorization": basic(ALICE.username, ALICE.app_password)}
    )
    headers = echoed(response)
    _, cookie_value, _ = session_cookie(response)
    token = headers["x-authentik-jwt"][0]
    client = redis_lib.Redis(port=redis_server.port)
    dump = b""
    keys = list(client.scan_iter(match=f"{prefix}*"))
    assert len(keys) >= 3  # a session, its per-sub index, the credential cache entry
    for key in keys:
        assert client.pttl(key) > 0, key
        kind = client.type(key)
        dump += key
        if kind == b"string":
            dump += client.get(key) or b""
        elif kind == b"set":
            dump += b"".join(client.smembers(key))
    for secret in (
        cookie_value,
        token,
        ALICE.app_password,
        "s3cret",
        "alice@example.com",
        "Alice Example",
        "admins",
    ):
        assert secret.encode() not in dump, f"{secret!r} found in the store"


@pytest.fixture
def idp_outage_stack(
    workdir: Path, echo_server: EchoServer, redis_server: RedisServer
) -> Iterator[tuple[Stack, IdP]]:
    """A stack with an IdP of its own, so the test may stop it."""
    with private_idp_stack(workdir, echo_server, redis_server, name="idp-outage") as pair:
        yield pair


def test_idp_down_fresh_credentials_503_cached_still_200(
    idp_outage_stack: tuple[Stack, IdP],
) -> None:
    stack, idp = idp_outage_stack
    cached = basic(ALICE.username, ALICE.app_password)
    assert stack.get("app", "/", headers={"Authorization": cached}).status_code == 200
    idp.stop()
    fresh = stack.get("app", "/", headers={"Authorization": basic(BOB.username, BOB.app_password)})
    assert fresh.status_code == 503
    assert fresh.headers.get("retry-after")
    again = stack.get("app", "/", headers={"Authorization": cached})
    assert echoed(again)["x-authentik-username"] == ["alice"]


def test_redis_down_header_auth_still_verifies_without_a_session(
    make_stack: Any, workdir: Path
) -> None:
    redis = RedisServer(workdir / "redis-header-auth")
    redis.start()
    try:
        stack: Stack = make_stack(store=redis)
        redis.stop()
        response = stack.get(
            "app", "/", headers={"Authorization": basic(CAROL.username, CAROL.app_password)}
        )
        assert echoed(response)["x-authentik-username"] == ["carol"]
        assert not session_cookie_lines(response), "no session without a store"
        # Directory credentials too (no IdP involved), on the other application.
        directory = stack.get(
            "whoami", "/", headers={"Authorization": basic(BOB.username, BOB.app_password)}
        )
        assert echoed(directory)["x-authentik-username"] == ["bob"]
        # Without credentials there is nothing to verify: 401 as usual, not a crash.
        assert stack.get("whoami", "/").status_code == 401
        redis.start()
        deadline = time.monotonic() + 30  # bounds a failure only
        while True:
            again = stack.get(
                "app", "/", headers={"Authorization": basic(ALICE.username, ALICE.app_password)}
            )
            if session_cookie_lines(again) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert session_cookie_lines(again), "sessions are created again once Redis is back"
    finally:
        redis.stop()


def test_concurrent_new_credentials_over_two_replicas_ask_the_idp_once(make_stack: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stack: Stack = make_stack(replicas=2, store="redis", fresh=True)
    idp = stack.idp
    assert idp is not None
    before = token_requests(idp)
    credentials = basic(CAROL.username, CAROL.app_password)

    def one(i: int) -> int:
        with stack.client() as client:
            response = client.get(
                stack.url("app", f"/c/{i}"), headers={"Authorization": credentials}
            )
            return response.status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(one, range(12)))
    assert statuses == [200] * 12
    assert token_requests(idp) - before == 1
