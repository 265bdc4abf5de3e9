"""Sending identity upstream through real Envoy: what the echo app really receives.

Application `app` with `send.basic` on (username_attribute app_username,
password_attribute app_password); identities come from the IdP's
`ak_proxy.user_attributes` (groups' attributes in name order, the user's own on top).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.e2e.signin import sign_in
from tests.stack.demo import ALICE, BOB, CAROL, Stack
from tests.support import basic, echoed

pytestmark = pytest.mark.e2e

SEND_BASIC = {
    "applications": {
        "app": {
            "send": {
                "basic": {
                    "enabled": True,
                    "username_attribute": "app_username",
                    "password_attribute": "app_password",
                }
            }
        }
    }
}


def upstream_basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def sending(make_stack: Any) -> Stack:
    stack: Stack = make_stack(config_overrides=SEND_BASIC)
    return stack


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        pytest.param(ALICE, upstream_basic("admin", "s3cret"), id="group-username-user-password"),
        pytest.param(
            CAROL, upstream_basic("carol-upstream", "pässwörd:with:colons"), id="user-overrides"
        ),
        pytest.param(BOB, upstream_basic(BOB.email, ""), id="neither-email-and-empty"),
    ],
)
def test_upstream_basic_from_attributes(sending: Stack, user: Any, expected: str) -> None:
    response = sending.get(
        "app", "/", headers={"Authorization": basic(user.username, user.app_password)}
    )
    headers = echoed(response)
    assert headers["authorization"] == [expected]


def session_pair(stack: Stack, user: Any) -> str:
    """`name=value` of a new session: a browser sign-in always creates one (a Basic
    request only does when its credentials are not already cached)."""
    flow = sign_in(stack, user)
    cookie = next(
        c for c in flow.final.headers.get_list("set-cookie") if c.startswith("authentik_proxy_")
    )
    return cookie.split(";", 1)[0]


def test_upstream_basic_replaces_client_value_on_session_requests(sending: Stack) -> None:
    pair = session_pair(sending, ALICE)
    # The session alone still sends Basic upstream, replacing what the client sent.
    again = sending.get("app", "/", headers={"Cookie": pair, "Authorization": "Basic eDp5"})
    assert echoed(again)["authorization"] == [upstream_basic("admin", "s3cret")]


def test_identity_headers_carry_the_idp_values(stack: Stack) -> None:
    response = stack.get(
        "app", "/", headers={"Authorization": basic(CAROL.username, CAROL.app_password)}
    )
    headers = echoed(response)
    assert headers["x-authentik-username"] == ["carol"]
    assert headers["x-authentik-email"] == [CAROL.email]
    assert headers["x-authentik-name"] == [CAROL.name]
    assert headers["x-authentik-uid"] == ["carol"]
    assert headers["x-authentik-groups"] == ["admins|devs"] or headers["x-authentik-groups"] == [
        "devs|admins"
    ]
    assert headers["x-authentik-meta-app"] == ["app"]
    jwt = headers["x-authentik-jwt"][0]
    assert jwt.count(".") == 2
    claims = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
    assert claims["sub"] == "carol"
    # additionalHeaders adds X-Team but cannot override ours or authorization.
    assert headers["x-team"] == ["blue"]
    assert "authorization" not in headers


def test_client_cannot_spoof_identity_headers(stack: Stack) -> None:
    response = stack.get(
        "app",
        "/",
        headers={
            "Authorization": basic(BOB.username, BOB.app_password),
            "X-authentik-groups": "admins",
            "X-Authentik-Uid": "root",
            "X_authentik_username": "root",
            "X-authentik-meta-whatever": "spoof",
        },
    )
    headers = echoed(response)
    assert headers["x-authentik-groups"] == ["devs"]
    assert headers["x-authentik-uid"] == ["bob"]
    assert headers["x-authentik-username"] == ["bob"]
    assert "x_authentik_username" not in headers
    assert "x-authentik-meta-whatever" not in headers


def test_session_cookie_is_stripped_from_the_upstream_cookie(stack: Stack) -> None:
    pair = session_pair(stack, ALICE)
    response = stack.get("app", "/", headers={"Cookie": f"theme=dark; {pair}"})
    headers = echoed(response)
    assert headers["cookie"] == ["theme=dark"]
    only_ours = stack.get("app", "/", headers={"Cookie": pair})
    assert "cookie" not in echoed(only_ours)
