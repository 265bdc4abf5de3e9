"""The Traefik replayer (tests/stack/traefik.py) against Traefik's own source.

Traefik is not packaged here, so the forward-auth tests trust this replay of
traefik/traefik pkg/middlewares/auth/forward.go and
pkg/middlewares/forwardedheaders/forwarded_header.go. These tests pin each rule it
implements to the Go code it mirrors, on the shipped deploy/traefik/dynamic.yml.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.stack.forward_auth import AUTH_PATHS
from tests.stack.traefik import (
    AuthAnswer,
    ClientRequest,
    ForwardAuth,
    Header,
    TraefikConfig,
    apply_answer,
    auth_request,
    canonical_key,
    entrypoint_headers,
)

ADDRESS = "http://10.0.0.5:9400" + AUTH_PATHS["traefik"]
COOKIE = "authentik_proxy_0a1b2c3d"


@pytest.fixture(scope="module")
def middleware() -> ForwardAuth:
    config = TraefikConfig.load(
        {
            "host": "app.company",
            "upstream": "10.0.0.7:8000",
            "ext_authz": "10.0.0.5:9400",
            "session_cookie": COOKIE,
        }
    )
    (forward_auth,) = config.middlewares.values()
    assert forward_auth.address == ADDRESS
    return forward_auth


def client_request(**changes: object) -> ClientRequest:
    base = ClientRequest(
        method="POST",
        host="app.company:8443",
        target="/reports/2024?format=csv&x=%2F",
        headers=(
            ("Authorization", "Basic YWxpY2U6cHc="),
            ("Cookie", "theme=dark; authentik_proxy_0a1b2c3d=s3ss10n"),
            ("Accept", "text/html"),
            ("X-authentik-username", "root"),
            ("X_authentik_uid", "0"),
            ("X-Forwarded-Host", "other.company"),
            ("X-Forwarded-Uri", "/public/"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
        ),
        remote_addr="198.51.100.4:51234",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("x-authentik-username", "X-Authentik-Username"),
        ("X-AUTHENTIK-META-APP", "X-Authentik-Meta-App"),
        ("x_authentik_uid", "X_authentik_uid"),  # `_` is a token byte: no capital after it
        ("authorization", "Authorization"),
        ("bad header", "bad header"),  # not a token: left as is
    ],
)
def test_canonical_key_is_gos(name: str, canonical: str) -> None:
    assert canonical_key(name) == canonical


def test_entrypoint_replaces_client_forwarded_headers() -> None:
    """XForwarded.ServeHTTP with no trusted IPs: delete, then set from the connection."""
    header = entrypoint_headers(client_request(), hostname="traefik-1")
    assert header.values("X-Forwarded-Host") == ["app.company:8443"]
    assert header.values("X-Forwarded-Uri") == []  # deleted; forwardAuth sets it
    assert header.values("X-Forwarded-For") == []  # deleted; forwardAuth appends the peer
    assert header.get("X-Forwarded-Proto") == "http"
    assert header.get("X-Forwarded-Port") == "8443"
    assert header.get("X-Real-Ip") == "198.51.100.4"
    assert header.get("X-Forwarded-Server") == "traefik-1"
    assert not header.has("X-Secret-Hop") and not header.has("Connection")
    assert header.get("X-Authentik-Username") == "root"  # not Traefik's business


def test_auth_request_is_writeheader(middleware: ForwardAuth) -> None:
    request = client_request()
    sent = auth_request(middleware, request, entrypoint_headers(request))
    assert (sent.method, sent.url) == ("GET", ADDRESS)  # no preserveRequestMethod, no body
    assert sent.host == "10.0.0.5:9400"  # Go's client: the address's host
    h = sent.headers
    assert h.get("X-Forwarded-Method") == "POST"
    assert h.get("X-Forwarded-Uri") == "/reports/2024?format=csv&x=%2F"
    assert h.get("X-Forwarded-Host") == "app.company:8443"
    assert h.get("X-Forwarded-Proto") == "http"
    assert h.values("X-Forwarded-For") == ["198.51.100.4"]
    # The credentials and the client's claims reach the auth server as sent.
    assert h.get("Authorization") == "Basic YWxpY2U6cHc="
    assert h.get("Cookie") == "theme=dark; authentik_proxy_0a1b2c3d=s3ss10n"
    assert h.get("X-Authentik-Username") == "root"
    assert h.get("X_authentik_uid") == "0"
    # No User-Agent from the client: Go's default is suppressed with an empty value.
    assert h.values("User-Agent") == [""]


def test_auth_request_without_trust_forward_header_is_old_writeheader() -> None:
    legacy = ForwardAuth(address=ADDRESS)
    request = client_request()
    sent = auth_request(legacy, request, Header(request.headers))
    assert sent.headers.values("X-Forwarded-Host") == ["app.company:8443"]
    assert sent.headers.values("X-Forwarded-For") == ["198.51.100.4"]
    assert not sent.headers.has("X-Forwarded-Port")


def test_auth_request_headers_filter_keeps_forwarded_ones_when_trusted() -> None:
    limited = ForwardAuth(
        address=ADDRESS, trust_forward_header=True, auth_request_headers=("Cookie",)
    )
    request = client_request()
    sent = auth_request(limited, request, entrypoint_headers(request))
    names = set(sent.headers.names())
    assert "Cookie" in names and "Authorization" not in names
    assert {"X-Forwarded-Host", "X-Real-Ip", "X-Forwarded-Uri"} <= names


def test_denied_answer_is_relayed_with_location_resolved_against_the_address(
    middleware: ForwardAuth,
) -> None:
    """Response.Location(): a relative Location points the browser at the auth server."""
    request = client_request()
    answer = AuthAnswer(
        302,
        [
            ("Location", "/outpost.goauthentik.io/start?rd=x"),
            ("Set-Cookie", "authentik_proxy_login=abc; Path=/; HttpOnly"),
            ("Connection", "close"),
            ("Content-Type", "text/html"),
        ],
        b"<a>sign in</a>",
    )
    outcome = apply_answer(middleware, request, entrypoint_headers(request), answer)
    assert not outcome.allowed
    assert outcome.status == 302
    location = outcome.client_headers.get("Location")
    assert location == "http://10.0.0.5:9400/outpost.goauthentik.io/start?rd=x"
    assert outcome.client_headers.values("Set-Cookie") == [
        "authentik_proxy_login=abc; Path=/; HttpOnly"
    ]
    assert not outcome.client_headers.has("Connection")
    assert outcome.body == b"<a>sign in</a>"
    # An absolute Location passes as it is.
    absolute = replace(answer, headers=[("Location", "https://idp.company/authorize?x=1")])
    outcome = apply_answer(middleware, request, entrypoint_headers(request), absolute)
    assert outcome.client_headers.get("Location") == "https://idp.company/authorize?x=1"


def test_401_keeps_every_challenge(middleware: ForwardAuth) -> None:
    request = client_request()
    answer = AuthAnswer(
        401,
        [("WWW-Authenticate", 'Basic realm="app"'), ("WWW-Authenticate", 'Bearer realm="app"')],
    )
    outcome = apply_answer(middleware, request, entrypoint_headers(request), answer)
    assert outcome.status == 401
    assert outcome.client_headers.values("WWW-Authenticate") == [
        'Basic realm="app"',
        'Bearer realm="app"',
    ]


@pytest.mark.parametrize("status", [200, 204])
def test_allowed_answer_replaces_every_spelling(middleware: ForwardAuth, status: int) -> None:
    request = client_request()
    answer = AuthAnswer(
        status,
        [
            ("X-authentik-username", "alice"),
            ("X-authentik-groups", "admins|devs"),
            ("Cookie", "theme=dark"),
            ("X-Other", "not listed"),
        ],
    )
    outcome = apply_answer(middleware, request, entrypoint_headers(request), answer)
    assert outcome.allowed
    upstream = outcome.upstream_headers
    assert upstream.values("X-Authentik-Username") == ["alice"]
    assert upstream.values("X-Authentik-Groups") == ["admins|devs"]
    assert upstream.raw("X_authentik_uid") is None  # the regex: any spelling goes
    assert upstream.values("Authorization") == []  # listed, absent from the answer
    assert upstream.values("Cookie") == ["theme=dark"]
    assert upstream.values("X-Other") == []
    assert upstream.get("Accept") == "text/html"
    assert outcome.client_cookies == ()


def test_without_the_regex_an_underscore_spelling_survives(middleware: ForwardAuth) -> None:
    """authentik's snippet (names only): Go deletes X-Authentik-Uid, not X_authentik_uid."""
    names_only = replace(middleware, auth_response_headers_regex="")
    request = client_request()
    answer = AuthAnswer(200, [("X-authentik-uid", "alice-sub")])
    outcome = apply_answer(names_only, request, entrypoint_headers(request), answer)
    assert outcome.upstream_headers.values("X-Authentik-Uid") == ["alice-sub"]
    assert outcome.upstream_headers.raw("X_authentik_uid") == ["0"]


def test_only_named_auth_cookies_reach_the_client(middleware: ForwardAuth) -> None:
    request = client_request()
    answer = AuthAnswer(
        200,
        [
            ("Set-Cookie", f"{COOKIE}=new; Path=/; HttpOnly; SameSite=Lax"),
            ("Set-Cookie", "authentik_proxy_ffffffff=other; Path=/"),
        ],
    )
    outcome = apply_answer(middleware, request, entrypoint_headers(request), answer)
    assert outcome.client_cookies == (f"{COOKIE}=new; Path=/; HttpOnly; SameSite=Lax",)


def test_auth_signin_url_turns_401_into_a_redirect() -> None:
    signin = ForwardAuth(address=ADDRESS, auth_signin_url="https://app.company/login")
    request = client_request()
    outcome = apply_answer(signin, request, Header(), AuthAnswer(401))
    assert (outcome.status, outcome.client_headers.get("Location")) == (
        302,
        "https://app.company/login",
    )


def test_unknown_forward_auth_options_are_refused() -> None:
    with pytest.raises(ValueError, match="trustForwardHeaders"):
        ForwardAuth.from_yaml({"address": ADDRESS, "trustForwardHeaders": True})
