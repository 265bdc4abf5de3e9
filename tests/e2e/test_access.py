"""Access rules per application (SPEC §12) through every front: real Envoy over gRPC and
`http_service`, nginx (authentik's auth_request snippet) and Caddy (forward_auth), the
real IdP and the echo upstream.

One rule set on both demo applications: `whoami` (directory users over Basic and
Bearer) and `app` (OIDC sessions, authentik app passwords, Bearer JWTs). The demo
users: alice is in `admins`; bob in `devs`, whose group attribute is `team: dev`; both
have addresses at example.com.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.signin import HTML, sign_in
from tests.stack.demo import ALICE, BOB, BOB_STATIC_TOKEN, OIDC_CLIENT_ID, DemoUser, Stack
from tests.stack.proc import wait_until
from tests.support import basic, echoed

pytestmark = pytest.mark.e2e

RULES: list[dict[str, Any]] = [
    {"paths": ["^/admin/"], "groups": ["admins"]},
    {"paths": ["^/write/"], "methods": ["POST", "DELETE"], "groups": ["admins"]},
    {"paths": ["^/mail-in/"], "emails": ["@EXAMPLE.com"]},
    {"paths": ["^/mail-out/"], "emails": ["@other.test", "ALICE@example.com"]},
    {"paths": ["^/team/"], "claims": {"ak_proxy.user_attributes.team": ["dev"]}},
    {},
]
OVERRIDES: dict[str, Any] = {
    "applications": {
        "whoami": {"access": RULES},
        "app": {"access": RULES, "skip_path_regex": ["^/public/"]},
    }
}

# (user, method, path, status): the same answers from every front and every credential.
TABLE: list[tuple[DemoUser, str, str, int]] = [
    (ALICE, "GET", "/admin/x", 200),
    (BOB, "GET", "/admin/x", 403),  # outside the group
    (BOB, "GET", "/public/../admin/x", 403),  # judged after normalisation
    (BOB, "GET", "/elsewhere", 200),  # ... and 200 elsewhere
    (ALICE, "POST", "/write/x", 200),
    (BOB, "POST", "/write/x", 403),  # the method rule refuses POST
    (BOB, "GET", "/write/x", 200),  # ... and admits GET (the last rule)
    (BOB, "GET", "/mail-in/x", 200),  # the domain, in another case
    (BOB, "GET", "/mail-out/x", 403),
    (ALICE, "GET", "/mail-out/x", 200),  # the address, in another case
    (BOB, "GET", "/team/x", 200),  # a claim from the IdP's ak_proxy (or the directory)
    (ALICE, "GET", "/team/x", 403),
]
FRONTS = ["envoy", "envoy-http", "nginx", "caddy"]


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest, make_stack: Any) -> Stack:
    stack: Stack = make_stack(front=request.param, config_overrides=OVERRIDES)
    return stack


def judged(response: httpx.Response, user: DemoUser, status: int, what: str) -> None:
    """The answer is `status`; a 200 carries the user's identity upstream, a 403 none."""
    assert response.status_code == status, (what, response.status_code, response.text[:200])
    if status == 200:
        assert echoed(response)["x-authentik-username"] == [user.username], what
    else:
        assert "x-authentik-username" not in response.headers, what
        assert "x-authentik-username" not in response.text, what
        assert "set-cookie" not in response.headers, what  # no session made, none ended
        assert "no-store" in response.headers.get("cache-control", "") or (
            response.headers.get("server", "").startswith("nginx")  # nginx makes its own 403
        ), what


def upstream_saw(stack: Stack, marker: str) -> bool:
    """Whether the echo upstream logged a request whose path contains `marker` (it logs
    one line per request, without the query)."""
    return marker in stack.echo.log_path.read_text(errors="replace")


def test_directory_users_obey_the_rules(front: Stack) -> None:
    for user, method, path, status in TABLE:
        response = front.request(
            method,
            "whoami",
            path,
            headers={"Authorization": basic(user.username, user.app_password)},
        )
        judged(response, user, status, f"{front.front_kind} whoami {user.username} {method} {path}")


def test_a_directory_bearer_token_obeys_the_same_rules(front: Stack) -> None:
    token = {"Authorization": f"Bearer {BOB_STATIC_TOKEN}"}
    judged(front.get("whoami", "/admin/x", headers=token), BOB, 403, "bob's token on /admin/")
    judged(front.get("whoami", "/team/x", headers=token), BOB, 200, "bob's token on /team/")


def test_app_passwords_and_jwts_obey_the_rules_of_a_session(front: Stack) -> None:
    assert front.idp is not None
    for user, method, path, status in TABLE:
        app_password = {"Authorization": basic(user.username, user.app_password)}
        what = f"{front.front_kind} app {user.username} {method} {path}"
        judged(front.request(method, "app", path, headers=app_password), user, status, what)
        jwt = front.idp.mint_access_token(OIDC_CLIENT_ID, user.username, fmt="jwt")
        bearer = {"Authorization": f"Bearer {jwt}"}
        judged(front.request(method, "app", path, headers=bearer), user, status, what + " jwt")


def test_a_refused_session_stays_signed_in_and_its_request_never_reaches_upstream(
    front: Stack,
) -> None:
    marker = uuid.uuid4().hex
    with front.client() as browser:
        sign_in(front, BOB, "/page", client=browser)
        page = browser.get(front.url("app", "/page"), headers=HTML)
        assert page.status_code == 200, page.text[:200]
        for method, path in (("GET", "/admin/"), ("POST", "/write/")):
            refused = browser.request(
                method, front.url("app", f"{path}refused-{marker}"), headers=HTML
            )
            assert refused.status_code == 403, (front.front_kind, method, path)
            assert "set-cookie" not in refused.headers  # the session is not ended
        json_refused = browser.get(
            front.url("app", f"/admin/json-{marker}"), headers={"Accept": "application/json"}
        )
        assert json_refused.status_code == 403
        if front.front_kind != "nginx":  # nginx answers its own 403 page
            assert json_refused.json() == {"error": "forbidden", "detail": "access denied"}
            assert json_refused.headers["cache-control"] == "no-store"
        # The session's claims (the IdP's ak_proxy) meet the claim rule like a token's.
        team = browser.get(front.url("app", "/team/x"))
        assert team.status_code == 200
        assert echoed(team)["x-authentik-username"] == [BOB.username]
        # Still signed in, on a path the rules allow, without signing in again.
        allowed = browser.get(front.url("app", f"/allowed-{marker}"), headers=HTML)
        assert allowed.status_code == 200
        assert f"allowed-{marker}" in allowed.text
        assert "bob" in allowed.text  # X-authentik-username, as the echo page shows it
    # The allowed request reached the echo upstream; wait for its line, then the
    # refused ones, sent before it, would be there too had they passed.
    wait_until(lambda: upstream_saw(front, f"allowed-{marker}"), 30, "the allowed request upstream")
    log = front.echo.log_path.read_text(errors="replace")
    assert f"refused-{marker}" not in log
    assert f"json-{marker}" not in log


def test_skip_paths_stay_open_with_rules_present(front: Stack) -> None:
    bob = {"Authorization": basic(BOB.username, BOB.app_password)}
    for host in ("whoami", "app"):
        anonymous = front.get(host, "/public/x")
        assert anonymous.status_code == 200, (front.front_kind, host)
        assert "x-authentik-username" not in echoed(anonymous)
        signed = front.get(host, "/public/x", headers=bob)
        assert signed.status_code == 200, (front.front_kind, host)


def test_traefik_replay_relays_the_403_and_the_method(make_stack: Any) -> None:
    """Traefik is not packaged here: its forwardAuth, replayed from its source
    (tests/stack/traefik.py), asks the real ext-authz with X-Forwarded-Method."""
    from tests.e2e.test_forward_auth import traefik_for
    from tests.stack.traefik import ClientRequest

    stack: Stack = make_stack(front="envoy-http", config_overrides=OVERRIDES)
    traefik = traefik_for(stack, "whoami")
    host = f"whoami.localhost:{stack.port}"
    for user, method, path, status in TABLE:
        what = f"traefik {user.username} {method} {path}"
        _, outcome = traefik.forward_auth(
            ClientRequest(
                method=method,
                host=host,
                target=path,
                headers=(("Authorization", basic(user.username, user.app_password)),),
            )
        )
        if status == 200:
            assert outcome.allowed, what
            assert outcome.upstream_headers.values("X-Authentik-Username") == [user.username]
        else:
            assert not outcome.allowed and outcome.status == 403, what
            assert not outcome.client_headers.has("X-Authentik-Username"), what
            assert outcome.client_headers.values("Cache-Control") == ["no-store"], what
