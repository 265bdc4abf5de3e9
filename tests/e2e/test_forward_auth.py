"""Forward auth over HTTP (SPEC §10) through the real proxies and the real ext-authz.

Each stack puts one proxy in front of an ext-authz replica's forward-auth port, with
the config we ship: nginx with authentik's documented snippet (deploy/nginx), Caddy
with authentik's snippet (deploy/caddy), Envoy with `http_service`
(envoy/envoy-http.yaml.tmpl). The IdP is the oidc-provider that looks like authentik;
the upstream is the echo app, which shows what it received.

Application `app` (OIDC, authentik-style app passwords) sends HTTP Basic upstream from
attributes here (SEND_BASIC), like an authentik provider with "Send HTTP-Basic
Authentication" on, and answers `unauthenticated: auto` (browsers are sent to sign in,
API clients get 401).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.e2e.signin import HTML, sign_in
from tests.stack.demo import ALICE, BOB, Stack
from tests.support import basic, echoed

pytestmark = pytest.mark.e2e

SEND_BASIC: dict[str, Any] = {
    "applications": {
        "app": {
            "skip_path_regex": ["^/public/"],
            "unauthenticated": "auto",
            "send": {
                "basic": {
                    "enabled": True,
                    "username_attribute": "app_username",
                    "password_attribute": "app_password",
                }
            },
        }
    }
}
SPOOFED = {"X-authentik-username": "root", "X-Authentik-Uid": "0"}
UNDERSCORED = {"X_authentik_username": "root", "X-authentik_email": "root@evil.test"}


def upstream_basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(params=["nginx", "caddy"])
def proxied(request: pytest.FixtureRequest, make_stack: Any) -> Stack:
    """The same world behind real nginx, then behind real Caddy."""
    stack: Stack = make_stack(front=request.param, config_overrides=SEND_BASIC)
    return stack


@pytest.fixture
def envoy_http(make_stack: Any) -> Stack:
    stack: Stack = make_stack(front="envoy-http", config_overrides=SEND_BASIC)
    return stack


def follow(client: httpx.Client, response: httpx.Response, **kwargs: Any) -> httpx.Response:
    """Follow redirects that stay on the application's site."""
    for _ in range(5):
        if response.status_code not in (302, 303):
            return response
        response = client.get(urljoin(str(response.url), response.headers["location"]), **kwargs)
    return response


# --- nginx and Caddy, with authentik's snippets ------------------------------------------


def test_browser_signs_in_lands_on_the_original_url_and_signs_out(proxied: Stack) -> None:
    assert proxied.idp is not None
    with proxied.client() as browser:
        first = browser.get(proxied.url("app", "/private/page?x=1&y=2"), headers=HTML)
        assert first.status_code == 302
        if proxied.front_kind == "nginx":
            # nginx: error_page 401 -> /outpost.goauthentik.io/start, which redirects on.
            assert "/outpost.goauthentik.io/start?rd=" in first.headers["location"]
        else:
            # Caddy relays our 302 straight to the IdP.
            assert first.headers["location"].startswith(proxied.idp.issuer)

        done = sign_in(proxied, ALICE, "/private/page?x=1&y=2", client=browser)
        assert done.final.status_code == 302
        assert done.final.headers["location"] == proxied.url("app", "/private/page?x=1&y=2")

        page = browser.get(done.final.headers["location"])
        seen = echoed(page)
        assert seen["x-authentik-username"] == [ALICE.username]
        assert seen["x-authentik-email"] == [ALICE.email]
        assert seen["x-authentik-meta-app"] == ["app"]
        assert seen["authorization"] == [upstream_basic("admin", "s3cret")]
        # The session cookie never reaches the upstream.
        assert "authentik_proxy_" not in ";".join(seen.get("cookie", []))

        out = browser.get(proxied.url("app", "/outpost.goauthentik.io/sign_out"))
        assert out.status_code == 302
        again = browser.get(proxied.url("app", "/private/page"), headers=HTML)
        assert again.status_code == 302, "the session ended with the sign-out"


def test_app_password_gives_upstream_basic_and_no_spoofed_identity(proxied: Stack) -> None:
    response = proxied.get(
        "app",
        "/api",
        headers={"Authorization": basic(ALICE.username, ALICE.app_password), **SPOOFED},
    )
    seen = echoed(response)
    assert seen["x-authentik-username"] == [ALICE.username]
    assert seen["x-authentik-uid"] != ["0"]
    # The app password was consumed: the upstream sees the Basic built from attributes.
    assert seen["authorization"] == [upstream_basic("admin", "s3cret")]


def test_spoofed_identity_never_reaches_the_upstream_unauthenticated_paths(proxied: Stack) -> None:
    response = proxied.get("app", "/public/x", headers={**SPOOFED, **UNDERSCORED})
    seen = echoed(response)  # a skip path passes
    names = {name.lower().replace("_", "-") for name in seen}
    assert not any(name.startswith("x-authentik-") for name in names), seen


def test_api_client_without_credentials_is_denied(proxied: Stack) -> None:
    response = proxied.get("app", "/api", headers={"Accept": "application/json"})
    if proxied.front_kind == "nginx":
        # authentik's snippet sends everyone to sign in (the nginx-api variant does not).
        assert response.status_code == 302
        assert "/outpost.goauthentik.io/start" in response.headers["location"]
    else:
        # Caddy relays our answer as it is.
        assert response.status_code == 401
        assert 'Basic realm="app"' in response.headers.get_list("www-authenticate")
        assert response.json()["error"] == "unauthorized"


def test_cookies_of_the_client_pass_without_ours(proxied: Stack) -> None:
    response = proxied.get(
        "app",
        "/api",
        headers={
            "Authorization": basic(BOB.username, BOB.app_password),
            "Cookie": 'theme=dark; b="2"; authentik_proxy_deadbeef=x',
        },
    )
    seen = echoed(response)
    assert seen["x-authentik-username"] == [BOB.username]
    assert seen["cookie"] == ['theme=dark; b="2"; authentik_proxy_deadbeef=x']


def test_nginx_api_variant_answers_api_clients_401_with_the_challenge(make_stack: Any) -> None:
    stack: Stack = make_stack(front="nginx-api", config_overrides=SEND_BASIC)
    api = stack.get("app", "/api", headers={"Accept": "application/json"})
    assert api.status_code == 401
    # nginx relays one WWW-Authenticate line: both of our challenges are in it.
    (challenge,) = api.headers.get_list("www-authenticate")
    assert 'Basic realm="app"' in challenge and 'Bearer realm="app"' in challenge
    browser = stack.get("app", "/page", headers=HTML)
    assert browser.status_code == 302
    assert "/outpost.goauthentik.io/start" in browser.headers["location"]
    wrong = stack.get("app", "/api", headers={"Authorization": basic(ALICE.username, "wrong")})
    assert wrong.status_code == 401


# --- Envoy http_service ---------------------------------------------------------------------


def test_envoy_http_api_client_gets_401_and_browser_302(envoy_http: Stack) -> None:
    api = envoy_http.get("app", "/api", headers={"Accept": "application/json"})
    assert api.status_code == 401
    assert 'Basic realm="app"' in api.headers.get_list("www-authenticate")
    assert api.json()["error"] == "unauthorized"
    browser = envoy_http.get("app", "/page", headers=HTML)
    assert browser.status_code == 302
    assert browser.headers["location"].startswith(envoy_http.idp.issuer)  # type: ignore[union-attr]


def test_envoy_http_header_auth_makes_a_session_that_works_next_time(envoy_http: Stack) -> None:
    first = envoy_http.get(
        "app",
        "/api",
        headers={
            "Authorization": basic(ALICE.username, ALICE.app_password),
            "Cookie": "theme=dark",
            **SPOOFED,
            **UNDERSCORED,
        },
    )
    seen = echoed(first)
    assert seen["x-authentik-username"] == [ALICE.username]
    # The consumed app password is replaced by the upstream Basic from attributes.
    assert seen["authorization"] == [upstream_basic("admin", "s3cret")]
    # No spoofed value arrives in any spelling; ours replace or remove them.
    assert seen["x-authentik-uid"] != ["0"]
    assert seen["x-authentik-email"] == [ALICE.email]
    values = [v for vals in seen.values() for v in vals]
    assert "root" not in values and "root@evil.test" not in values and "0" not in values
    assert not [n for n in seen if "_" in n], seen
    cookie = next(
        c for c in first.headers.get_list("set-cookie") if c.startswith("authentik_proxy_")
    )
    pair = cookie.split(";", 1)[0]

    second = envoy_http.get("app", "/again", headers={"Cookie": f"theme=dark; {pair}"})
    seen = echoed(second)
    assert seen["x-authentik-username"] == [ALICE.username]
    # The session cookie is stripped from what the upstream sees; the others pass.
    assert seen["cookie"] == ["theme=dark"]


def test_envoy_http_skip_path_and_spoofed_headers(envoy_http: Stack) -> None:
    response = envoy_http.get("app", "/public/x", headers={**SPOOFED, **UNDERSCORED})
    seen = echoed(response)
    names = {name.lower().replace("_", "-") for name in seen}
    assert not any(name.startswith("x-authentik-") for name in names), seen


# --- Traefik (not packaged here: its forwardAuth replayed from its source) ---------------


def traefik_for(stack: Stack, app: str = "app") -> Any:
    from ext_authz.core.cookies import cookie_name_for
    from tests.stack.demo import OIDC_CLIENT_ID
    from tests.stack.traefik import Traefik

    return Traefik(
        {
            "host": f"{app}.localhost",
            "upstream": f"127.0.0.1:{stack.echo.port}",
            "ext_authz": stack.replicas[0].forward_auth_address,
            "session_cookie": cookie_name_for(OIDC_CLIENT_ID),
        }
    )


def test_traefik_replay_allows_with_identity_and_drops_spoofed_headers(make_stack: Any) -> None:
    from tests.stack.traefik import ClientRequest

    # A stack of its own: the session below is made only when this replica verifies
    # the credential itself (a session per verification, not per request).
    envoy_http: Stack = make_stack(front="envoy-http", config_overrides=SEND_BASIC, fresh=True)
    traefik = traefik_for(envoy_http)
    sent, outcome = traefik.forward_auth(
        ClientRequest(
            host=f"app.localhost:{envoy_http.port}",
            target="/api?x=1",
            headers=(
                ("Authorization", basic(ALICE.username, ALICE.app_password)),
                ("Cookie", "theme=dark"),
                ("X-authentik-username", "root"),
                ("X_authentik_uid", "0"),
            ),
        )
    )
    assert sent is not None and sent.target == "/outpost.goauthentik.io/auth/traefik"
    assert outcome.allowed
    upstream = outcome.upstream_headers
    assert upstream.values("X-Authentik-Username") == [ALICE.username]
    assert upstream.values("Authorization") == [upstream_basic("admin", "s3cret")]
    assert upstream.values("Cookie") == ["theme=dark"]
    assert not upstream.has("X_authentik_uid")
    # The session created from the header reaches the client (addAuthCookiesToResponse).
    assert any(c.startswith("authentik_proxy_") for c in outcome.client_cookies)


def test_traefik_replay_browser_302_api_401(envoy_http: Stack) -> None:
    from tests.stack.traefik import ClientRequest

    traefik = traefik_for(envoy_http)
    host = f"app.localhost:{envoy_http.port}"
    _, browser = traefik.forward_auth(
        ClientRequest(host=host, target="/page", headers=(("Accept", "text/html"),))
    )
    assert not browser.allowed and browser.status == 302
    assert browser.client_headers.get("Location").startswith(envoy_http.idp.issuer)  # type: ignore[union-attr]
    _, api = traefik.forward_auth(
        ClientRequest(host=host, target="/api", headers=(("Accept", "application/json"),))
    )
    assert not api.allowed and api.status == 401
    assert 'Basic realm="app"' in api.client_headers.values("Www-Authenticate")
