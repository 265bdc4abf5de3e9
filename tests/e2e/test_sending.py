"""Sending identity upstream through real Envoy: what the echo app really receives.

Application `app` with `send.basic` on (username_attribute app_username,
password_attribute app_password); identities come from the IdP's
`ak_proxy.user_attributes` (groups' attributes in name order, the user's own on top).
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.signin import sign_in
from tests.stack.demo import ALICE, BOB, CAROL, SHARED_DOMAIN, Stack, merge_config
from tests.support import basic, echoed, raw_request

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


# --- cookies of every application stay out of every upstream (issue 11, finding 5) ---

SHOP, WIKI = "shop" + SHARED_DOMAIN, "wiki" + SHARED_DOMAIN


def two_apps_on_one_cookie_domain(config: dict[str, Any]) -> dict[str, Any]:
    """Directory applications `shop` and `wiki` whose sessions share `.example.test`
    (authentik's cookie domain): the browser sends each one's cookie to both."""
    port = urlsplit(config["applications"][0]["external_host"]).port
    shared = {"cookie_domain": SHARED_DOMAIN, "skip_path_regex": ["^/public/"]}
    return merge_config(
        config,
        {
            "applications": {
                "shop": {"external_host": f"http://{SHOP}:{port}", **shared},
                "wiki": {"external_host": f"http://{WIKI}:{port}", **shared},
            }
        },
    )


@pytest.fixture
def shared_domain(make_stack: Any) -> Stack:
    stack: Stack = make_stack(idp=False, config_overrides=two_apps_on_one_cookie_domain)
    return stack


def through(
    stack: Stack, host: str, path: str = "/", headers: list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, list[str]], str]:
    return raw_request(stack.port, path, host=f"{host}:{stack.port}", headers=headers)


def signed_in(stack: Stack, host: str) -> str:
    """`name=value` of a new session on `host`, made from ALICE's app password."""
    status, headers, body = through(
        stack, host, headers=[("Authorization", basic(ALICE.username, ALICE.app_password))]
    )
    assert status == 200, (status, body[:300])
    (line,) = [c for c in headers.get("set-cookie", []) if c.startswith("authentik_proxy_")]
    assert f"Domain={SHARED_DOMAIN}" in line
    return line.split(";", 1)[0]


def upstream_headers(response: tuple[int, dict[str, list[str]], str]) -> dict[str, list[str]]:
    status, _, body = response
    assert status == 200, (status, body[:300])
    headers: dict[str, list[str]] = json.loads(body)["headers"]
    return headers


def test_another_applications_session_never_reaches_the_upstream(shared_domain: Stack) -> None:
    shop, wiki = signed_in(shared_domain, SHOP), signed_in(shared_domain, WIKI)
    wiki_name, wiki_value = wiki.split("=", 1)
    assert shop.split("=", 1)[0] != wiki_name
    cookie = f'c=3,4; {wiki}; b="2"; {shop}; {wiki_name}_login=state-binding'
    headers = upstream_headers(through(shared_domain, SHOP, headers=[("Cookie", cookie)]))
    assert headers["x-authentik-username"] == ["alice"]  # shop's own session worked
    # Every application's session and login cookies are gone; the rest, byte for byte.
    assert headers["cookie"] == ['c=3,4; b="2"']
    assert not any(wiki_value in v for values in headers.values() for v in values)


def test_another_applications_session_is_stripped_on_a_skip_path(shared_domain: Stack) -> None:
    wiki = signed_in(shared_domain, WIKI)
    response = through(shared_domain, SHOP, "/public/x", headers=[("Cookie", f"{wiki}; c=3,4")])
    assert upstream_headers(response)["cookie"] == ["c=3,4"]


def test_cookies_that_are_not_ours_pass_untouched(shared_domain: Stack) -> None:
    shop = signed_in(shared_domain, SHOP)
    for cookie in ['c=3,4; b="2"', 'a=1;b=2 ;  flag; q="x y"', "c=3,4,b=5"]:
        response = through(shared_domain, SHOP, "/public/x", headers=[("Cookie", cookie)])
        assert upstream_headers(response)["cookie"] == [cookie]
        # The same with a session to strip: only that pair and its separator go.
        response = through(shared_domain, SHOP, headers=[("Cookie", f"{shop}; {cookie}")])
        assert upstream_headers(response)["cookie"] == [cookie]


def test_repeated_cookie_headers_keep_envoys_comma_join(shared_domain: Stack) -> None:
    wiki = signed_in(shared_domain, WIKI)
    auth = ("Authorization", basic(ALICE.username, ALICE.app_password))
    lines = [("Cookie", "c=3,4"), ("Cookie", f'{wiki}; b="2"'), auth]
    headers = upstream_headers(through(shared_domain, SHOP, headers=lines))
    # Envoy hands ext-authz the two lines joined by "," and sends the upstream what
    # ext-authz wrote: the same join, without wiki's pair and its "; ".
    assert headers["cookie"] == ['c=3,4,b="2"']


# --- attributes.additionalHeaders: declared names only (issue 11, finding 6) -----------
#
# The demo declares X-Team on both applications (send.additional_headers); CAROL's
# attributes ask for X-Team: blue, the undeclared X-Floor, and names that may never be
# sent. A client's own X-Team (or X_Team, which many upstreams read as X-Team) must
# never reach an upstream, whatever the identity says.

SPOOFED_TEAM = [("X-Team", "red"), ("X_Team", "red")]


def team_headers(headers: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: v for k, v in headers.items() if k.replace("_", "-") == "x-team"}


@pytest.mark.parametrize(
    ("host", "path", "user", "expected"),
    [
        pytest.param("app", "/", CAROL, {"x-team": ["blue"]}, id="authenticated-declared-value"),
        pytest.param("app", "/", BOB, {}, id="authenticated-without-a-value"),
        pytest.param("whoami", "/", CAROL, {"x-team": ["blue"]}, id="directory-identity"),
        pytest.param("whoami", "/public/x", None, {}, id="skip-path"),
        pytest.param("whoami", "/private", None, None, id="unauthenticated-denied"),
    ],
)
def test_a_clients_declared_header_never_reaches_the_upstream(
    stack: Stack, host: str, path: str, user: Any, expected: dict[str, list[str]] | None
) -> None:
    headers = list(SPOOFED_TEAM)
    if user is not None:
        headers.append(("Authorization", basic(user.username, user.app_password)))
    response = stack.get(host, path, headers=headers)
    if expected is None:
        assert response.status_code == 401  # ext-authz's answer; the upstream is not asked
        return
    assert team_headers(echoed(response)) == expected


def carols_team_is_unsafe(config: dict[str, Any]) -> dict[str, Any]:
    """CAROL's directory X-Team value has a control character: it is dropped."""
    config = json.loads(json.dumps(config))
    (carol,) = [u for u in config["directory"]["users"] if u["username"] == CAROL.username]
    carol["attributes"]["additionalHeaders"]["X-Team"] = "blue\x01"
    return config


def test_a_clients_declared_header_is_removed_when_the_value_is_unsafe(make_stack: Any) -> None:
    stack: Stack = make_stack(idp=False, config_overrides=carols_team_is_unsafe)
    response = stack.get(
        "whoami",
        "/",
        headers=[*SPOOFED_TEAM, ("Authorization", basic(CAROL.username, CAROL.app_password))],
    )
    assert team_headers(echoed(response)) == {}
    records = stack.replicas[0].log_records()
    dropped = [r for r in records if r.get("msg") == "identity header dropped: unsafe value"]
    assert dropped and dropped[0]["headers"] == ["X-Team"]


def test_only_declared_attribute_headers_are_sent(stack: Stack) -> None:
    response = stack.get(
        "app", "/floors", headers={"Authorization": basic(CAROL.username, CAROL.app_password)}
    )
    headers = echoed(response)
    assert headers["x-team"] == ["blue"]  # declared
    assert "x-floor" not in headers  # not declared
    # Never sent, declared or not: ours in any spelling, and authorization.
    assert headers["x-authentik-username"] == ["carol"]
    assert not [name for name in headers if name.startswith("x_")]
    assert "authorization" not in headers
    # One log line names what was dropped (names only, never values).
    lines = [
        r
        for replica in stack.replicas
        for r in replica.log_records()
        if r.get("msg") == "additional header dropped: not declared"
    ]
    assert lines, "no log line for the undeclared headers"
    assert set(lines[0]["headers"]) == {
        "X-Floor",
        "x_authentik_username",
        "X-authentik-username",
        "Authorization",
    }
    assert lines[0]["app"] == "app"
    assert not any("root" in json.dumps(line) or '"3"' in json.dumps(line) for line in lines)
