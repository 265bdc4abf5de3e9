"""Which application a request is for, and outpost paths (SPEC §4 steps 2-3)."""

from __future__ import annotations

import pytest

from ext_authz.core.model import AuthRequest
from ext_authz.core.routing import ApplicationIndex, OutpostRoute, outpost_route, split_host
from tests.unit.conftest import app_config, apps

APPS = apps(
    app_config("one", "https://one.example.com", hosts=["alias.example.com", "one.internal"]),
    app_config("two", "http://two.example.com:8080"),
    app_config("shared-a", "https://shared.example.com"),
    app_config("shared-b", "https://shared.example.com:8443"),
    app_config("v6", "http://[::1]:9000"),
)


def request(host: str = "", scheme: str = "", **context: str) -> AuthRequest:
    return AuthRequest(has_http=True, host=host, scheme=scheme, context_extensions=context)


@pytest.mark.parametrize(
    ("host", "scheme", "context", "expected"),
    [
        pytest.param("one.example.com", "https", {}, "one", id="host"),
        pytest.param("ONE.Example.COM", "https", {}, "one", id="host-case-insensitive"),
        pytest.param("one.example.com:443", "https", {}, "one", id="host-with-port"),
        pytest.param("one.example.com", "", {}, "one", id="no-scheme"),
        pytest.param("alias.example.com", "https", {}, "one", id="extra-host"),
        pytest.param("One.Internal:8443", "", {}, "one", id="extra-host-case-and-port"),
        pytest.param("two.example.com:8080", "http", {}, "two", id="non-default-port"),
        pytest.param("two.example.com", "http", {}, "two", id="sole-candidate-any-port"),
        pytest.param("shared.example.com", "https", {}, "shared-a", id="shared-default-port"),
        pytest.param("shared.example.com:443", "", {}, "shared-a", id="shared-explicit-443"),
        pytest.param("shared.example.com:8443", "https", {}, "shared-b", id="shared-by-port"),
        pytest.param("SHARED.example.com:8443", "", {}, "shared-b", id="shared-case"),
        pytest.param("[::1]:9000", "http", {}, "v6", id="ipv6-literal"),
        pytest.param("[::1]", "http", {}, "v6", id="ipv6-literal-no-port"),
        pytest.param("evil.example.com", "https", {}, None, id="unknown-host"),
        pytest.param("one.example.com.evil.com", "https", {}, None, id="suffix-host"),
        pytest.param("xone.example.com", "https", {}, None, id="prefix-host"),
        pytest.param("example.com", "https", {}, None, id="parent-domain"),
        pytest.param("", "https", {}, None, id="no-host"),
        pytest.param(
            "evil.example.com", "https", {"ext_authz_app": "two"}, "two", id="context-names-app"
        ),
        pytest.param(
            "one.example.com",
            "https",
            {"ext_authz_app": "shared-b"},
            "shared-b",
            id="context-beats-host",
        ),
        pytest.param(
            "one.example.com",
            "https",
            {"ext_authz_app": "nope"},
            None,
            id="context-unknown-name-no-host-fallback",
        ),
        pytest.param(
            "one.example.com", "https", {"ext_authz_app": ""}, "one", id="context-empty-means-host"
        ),
        pytest.param(
            "one.example.com", "https", {"other_key": "two"}, "one", id="other-context-key-ignored"
        ),
    ],
)
def test_select_application(
    host: str, scheme: str, context: dict[str, str], expected: str | None
) -> None:
    chosen = ApplicationIndex(APPS).select(request(host, scheme, **context))
    assert (chosen.name if chosen is not None else None) == expected


@pytest.mark.parametrize(
    ("authority", "scheme", "expected"),
    [
        pytest.param("Example.COM", "", ("example.com", None), id="no-port"),
        pytest.param("example.com:8080", "", ("example.com", 8080), id="port"),
        pytest.param("example.com", "https", ("example.com", 443), id="https-default"),
        pytest.param("example.com", "http", ("example.com", 80), id="http-default"),
        pytest.param("example.com:", "https", ("example.com", 443), id="empty-port"),
        pytest.param("example.com:abc", "", ("example.com", None), id="bad-port"),
        pytest.param("[::1]:8080", "", ("[::1]", 8080), id="ipv6"),
        pytest.param("[::1]", "https", ("[::1]", 443), id="ipv6-no-port"),
        pytest.param(" example.com ", "", ("example.com", None), id="spaces"),
    ],
)
def test_split_host(authority: str, scheme: str, expected: tuple[str, int | None]) -> None:
    assert split_host(authority, scheme) == expected


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        pytest.param("/outpost.goauthentik.io/ping", "", OutpostRoute.PING, id="ping"),
        pytest.param("/outpost.goauthentik.io/start", "rd=/x", OutpostRoute.START, id="start"),
        pytest.param(
            "/outpost.goauthentik.io/callback",
            "code=c&state=s",
            OutpostRoute.CALLBACK,
            id="callback",
        ),
        pytest.param(
            # authentik's strict redirect URI, as the IdP sends the browser back to it.
            "/outpost.goauthentik.io/callback",
            "X-authentik-auth-callback=true&code=c&state=s&iss=https%3A%2F%2Fidp",
            OutpostRoute.CALLBACK,
            id="callback-authentik-redirect-uri",
        ),
        pytest.param("/outpost.goauthentik.io/sign_out", "", OutpostRoute.SIGN_OUT, id="sign-out"),
        pytest.param(
            "/outpost.goauthentik.io/callback/", "", OutpostRoute.CALLBACK, id="trailing-slash"
        ),
        pytest.param(
            "/any/page",
            "X-authentik-auth-callback=true&code=c&state=s",
            OutpostRoute.CALLBACK,
            id="query-callback",
        ),
        pytest.param(
            "/", "x-authentik-auth-callback=TRUE", OutpostRoute.CALLBACK, id="query-callback-case"
        ),
        pytest.param(
            "/any", "a=1&X-authentik-logout=true", OutpostRoute.SIGN_OUT, id="query-logout"
        ),
        pytest.param("/any", "X-authentik-auth-callback=false", None, id="query-callback-false"),
        pytest.param("/any", "X-authentik-logout=", None, id="query-logout-empty"),
        pytest.param("/any", "X-authentik-logout", None, id="query-logout-no-value"),
        pytest.param("/any", "", None, id="plain-path"),
        pytest.param("/outpost.goauthentik.io/unknown", "", None, id="unknown-outpost-path"),
        pytest.param("/outpost.goauthentik.io/", "", None, id="outpost-root"),
        pytest.param("/outpost.goauthentik.io", "", None, id="outpost-no-slash"),
        pytest.param("/outpost.goauthentik.io/pingx", "", None, id="outpost-longer-name"),
        pytest.param("/x/outpost.goauthentik.io/ping", "", None, id="not-a-prefix"),
        pytest.param("/OUTPOST.goauthentik.io/ping", "", None, id="case-sensitive-path"),
        pytest.param("/ping", "", None, id="bare-ping"),
    ],
)
def test_outpost_route(path: str, query: str, expected: OutpostRoute | None) -> None:
    assert outpost_route(AuthRequest(has_http=True, path=path, query=query)) is expected
