"""Forward auth (SPEC §10): each proxy's dialect in (`from_proxy`), the answer out
(`to_response`), and whom we believe (`TrustedProxies`). Pure functions: the requests
are `HttpRequest` values built here, the decisions `Allow`/`Deny` values."""

from __future__ import annotations

import ipaddress
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz.adapters.forward_auth import (
    Dialect,
    ForwardAuth,
    Refused,
    TrustedProxies,
    from_proxy,
    to_response,
)
from ext_authz.adapters.http_server import HttpRequest, HttpResponse
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import AuthRequest

P = "/outpost.goauthentik.io"
TRUSTED = TrustedProxies(
    tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8"))
)
PROXY = "10.0.0.7"
STRANGER = "192.0.2.9"


def req(
    target: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    peer: str = PROXY,
) -> HttpRequest:
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    return HttpRequest(method, target, MappingProxyType(lowered), peer)


def original(request: HttpRequest) -> tuple[Dialect, tuple[str, str, str, str, str]]:
    dialect, auth = from_proxy(request, TRUSTED)
    assert auth.has_http
    return dialect, (auth.method, auth.scheme, auth.host, auth.path, auth.query)


# --- each dialect rebuilds the original request ------------------------------------------

REBUILT: list[Any] = [
    pytest.param(
        req(
            f"{P}/auth/envoy/app/x?a=1&b=2",
            {"host": "app.example.com:8443", "x-forwarded-proto": "https"},
            method="POST",
        ),
        Dialect.ENVOY,
        ("POST", "https", "app.example.com:8443", "/app/x", "a=1&b=2"),
        id="envoy: the path after the prefix, Host, x-forwarded-proto",
    ),
    pytest.param(
        req(f"{P}/auth/envoy", {"host": "app.example.com"}),
        Dialect.ENVOY,
        ("GET", "", "app.example.com", "/", ""),
        id="envoy: the bare prefix is /",
    ),
    pytest.param(
        req(f"{P}/auth/envoy?q=1", {"host": "app.example.com"}, method="HEAD"),
        Dialect.ENVOY,
        ("HEAD", "", "app.example.com", "/", "q=1"),
        id="envoy: the bare prefix with a query",
    ),
    pytest.param(
        req(
            f"{P}/auth/envoy{P}/start?rd=%2Fx",
            {"host": "app.example.com", "x-forwarded-proto": "http"},
        ),
        Dialect.ENVOY,
        ("GET", "http", "app.example.com", f"{P}/start", "rd=%2Fx"),
        id="envoy: an outpost path behind the prefix",
    ),
    pytest.param(
        req(
            f"{P}/auth/nginx",
            {
                "x-original-url": "https://app.example.com:8443/p/q?x=1#frag",
                "x-original-uri": "/other?y=2",
                "host": "app.example.com",
                "x-forwarded-proto": "http",
            },
        ),
        Dialect.NGINX,
        ("GET", "https", "app.example.com:8443", "/p/q", "x=1"),
        id="nginx: X-Original-URL (with its port) beats X-Original-URI and Host",
    ),
    pytest.param(
        req(f"{P}/auth/nginx", {"x-original-url": "http://app.example.com"}),
        Dialect.NGINX,
        ("GET", "http", "app.example.com", "/", ""),
        id="nginx: X-Original-URL without a path is /",
    ),
    pytest.param(
        req(
            f"{P}/auth/nginx",
            {"x-original-uri": "/p/q?x=y", "host": "app.example.com", "x-forwarded-proto": "https"},
        ),
        Dialect.NGINX,
        ("GET", "https", "app.example.com", "/p/q", "x=y"),
        id="nginx: X-Original-URI with Host",
    ),
    pytest.param(
        req(
            f"{P}/auth/nginx",
            {"x-original-uri": "/form", "host": "app.example.com", "x-original-method": "post"},
        ),
        Dialect.NGINX,
        ("POST", "", "app.example.com", "/form", ""),
        id="nginx: X-Original-Method",
    ),
    pytest.param(
        req(
            f"{P}/auth/traefik",
            {
                "x-forwarded-method": "PUT",
                "x-forwarded-proto": "https",
                "x-forwarded-host": "app.example.com",
                "x-forwarded-uri": "/api/v1?x=1",
                "host": "outpost.internal:9400",
            },
        ),
        Dialect.TRAEFIK,
        ("PUT", "https", "app.example.com", "/api/v1", "x=1"),
        id="traefik: X-Forwarded-Method/Proto/Host/Uri (not Host)",
    ),
    pytest.param(
        req(
            f"{P}/auth/caddy",
            {
                "x-forwarded-method": "DELETE",
                "x-forwarded-proto": "http",
                "x-forwarded-host": "app.example.com:8080",
                "x-forwarded-uri": "/",
            },
        ),
        Dialect.CADDY,
        ("DELETE", "http", "app.example.com:8080", "/", ""),
        id="caddy: X-Forwarded-*",
    ),
    pytest.param(
        req(
            f"{P}/auth/traefik/",
            {
                "x-forwarded-proto": "HTTPS, http",
                "x-forwarded-host": "app.example.com, other.example.com",
                "x-forwarded-uri": "/x",
            },
        ),
        Dialect.TRAEFIK,
        ("GET", "https", "app.example.com", "/x", ""),
        id="traefik: no method is GET; the first of listed hosts and protos",
    ),
    pytest.param(
        req(
            f"{P}/start?rd=https%3A%2F%2Fapp.example.com%2F",
            {"host": "outpost.internal", "x-forwarded-host": "app.example.com"},
        ),
        Dialect.DIRECT,
        ("GET", "", "app.example.com", f"{P}/start", "rd=https%3A%2F%2Fapp.example.com%2F"),
        id="direct: X-Forwarded-Host from a trusted proxy",
    ),
    pytest.param(
        req(
            f"{P}/callback?code=c&state=s",
            {"host": "app.example.com", "x-forwarded-host": "evil.example.com"},
            peer=STRANGER,
        ),
        Dialect.DIRECT,
        ("GET", "", "app.example.com", f"{P}/callback", "code=c&state=s"),
        id="direct: Host, not X-Forwarded-Host, from anyone else",
    ),
    pytest.param(
        req(
            f"{P}/sign_out",
            {"host": "app.example.com", "x-forwarded-proto": "https"},
            peer=STRANGER,
        ),
        Dialect.DIRECT,
        ("GET", "", "app.example.com", f"{P}/sign_out", ""),
        id="direct: X-Forwarded-Proto ignored from an untrusted peer",
    ),
    pytest.param(
        req(f"{P}/ping", {"host": "app.example.com", "x-forwarded-proto": "https"}),
        Dialect.DIRECT,
        ("GET", "https", "app.example.com", f"{P}/ping", ""),
        id="direct: ping, X-Forwarded-Proto from a trusted proxy",
    ),
    pytest.param(
        req(
            f"{P}/start",
            {
                "host": "outpost.internal",
                "x-forwarded-host": "app.example.com, edge.internal",
                "x-forwarded-proto": "HTTPS, http",
            },
        ),
        Dialect.DIRECT,
        ("GET", "https", "app.example.com", f"{P}/start", ""),
        id="direct: the first of listed X-Forwarded-Host and -Proto, as for traefik",
    ),
    pytest.param(
        req(f"{P}/auth/envoy/x", {"host": "app.example.com", "x-forwarded-proto": "HTTPS"}),
        Dialect.ENVOY,
        ("GET", "https", "app.example.com", "/x", ""),
        id="envoy: the scheme is case-insensitive",
    ),
    pytest.param(
        req(f"{P}/auth/nginx", {"x-original-url": "HTTPS://App.Example.com/X"}),
        Dialect.NGINX,
        ("GET", "https", "App.Example.com", "/X", ""),
        id="nginx: the URL's scheme is case-insensitive",
    ),
    pytest.param(
        req("/any/page?X-authentik-logout=true", {"host": "app.example.com"}, peer=STRANGER),
        Dialect.DIRECT,
        ("GET", "", "app.example.com", "/any/page", "X-authentik-logout=true"),
        id="direct: any path with the logout flag",
    ),
    pytest.param(
        req("/cb?x-authentik-auth-callback=true&code=c", {"host": "app.example.com"}),
        Dialect.DIRECT,
        ("GET", "", "app.example.com", "/cb", "x-authentik-auth-callback=true&code=c"),
        id="direct: any path with the callback flag",
    ),
]


@pytest.mark.parametrize(("request_", "dialect", "expected"), REBUILT)
def test_rebuilds_the_original_request(
    request_: HttpRequest, dialect: Dialect, expected: tuple[str, ...]
) -> None:
    assert original(request_) == (dialect, expected)


def test_the_original_request_keeps_the_headers_the_decision_reads() -> None:
    request = req(
        f"{P}/auth/traefik",
        {
            "x-forwarded-host": "app.example.com",
            "x-forwarded-uri": "/",
            "authorization": "Basic eDp5",
            "cookie": "a=b",
            "accept": "text/html",
        },
    )
    _, auth = from_proxy(request, TRUSTED)
    assert auth.header("authorization") == "Basic eDp5"
    assert auth.header("cookie") == "a=b"
    assert auth.header("accept") == "text/html"
    assert dict(auth.context_extensions) == {}


# --- 400: the original request cannot be read --------------------------------------------

BAD: list[Any] = [
    pytest.param(f"{P}/auth/nginx", {"host": "app.example.com"}, id="nginx: no X-Original-*"),
    pytest.param(
        f"{P}/auth/nginx", {"x-original-url": "", "x-original-uri": ""}, id="nginx: empty values"
    ),
    pytest.param(
        f"{P}/auth/nginx", {"x-original-url": "/relative/path"}, id="nginx: URL not absolute"
    ),
    pytest.param(f"{P}/auth/nginx", {"x-original-url": "app.example.com/p"}, id="nginx: no scheme"),
    pytest.param(f"{P}/auth/nginx", {"x-original-url": "ftp://app.example.com/"}, id="nginx: ftp"),
    pytest.param(f"{P}/auth/nginx", {"x-original-url": "https:///p"}, id="nginx: no host"),
    pytest.param(
        f"{P}/auth/nginx",
        {"x-original-url": "https://user:pw@app.example.com/"},
        id="nginx: userinfo",
    ),
    pytest.param(
        f"{P}/auth/nginx", {"x-original-url": "https://evil@app.example.com/"}, id="nginx: user"
    ),
    pytest.param(
        f"{P}/auth/nginx", {"x-original-url": "https://app.example.com:99999/"}, id="nginx: port"
    ),
    pytest.param(
        f"{P}/auth/nginx", {"x-original-url": "https://app.example.com:http/"}, id="nginx: port?"
    ),
    pytest.param(f"{P}/auth/nginx", {"x-original-url": "https://[::1/"}, id="nginx: bad IPv6"),
    pytest.param(
        f"{P}/auth/nginx",
        {"x-original-uri": "p/q", "host": "app.example.com"},
        id="nginx: URI not a path",
    ),
    pytest.param(
        f"{P}/auth/nginx",
        {"x-original-uri": "//evil.example.com/p", "host": "app.example.com"},
        id="nginx: URI starting //",
    ),
    pytest.param(f"{P}/auth/nginx", {"x-original-uri": "/p"}, id="nginx: URI without Host"),
    pytest.param(
        f"{P}/auth/nginx",
        {"x-original-uri": "/p", "host": "app.example.com", "x-forwarded-proto": "gopher"},
        id="nginx: unknown scheme",
    ),
    pytest.param(
        f"{P}/auth/traefik",
        {"x-forwarded-uri": "/p", "x-forwarded-proto": "https"},
        id="traefik: no X-Forwarded-Host",
    ),
    pytest.param(
        f"{P}/auth/traefik",
        {"x-forwarded-host": " , ", "x-forwarded-uri": "/p"},
        id="traefik: blank X-Forwarded-Host",
    ),
    pytest.param(
        f"{P}/auth/caddy", {"x-forwarded-host": "app.example.com"}, id="caddy: no X-Forwarded-Uri"
    ),
    pytest.param(
        f"{P}/auth/traefik",
        {"x-forwarded-host": "app.example.com", "x-forwarded-uri": "p"},
        id="traefik: Uri not starting /",
    ),
    pytest.param(
        f"{P}/auth/caddy",
        {"x-forwarded-host": "app.example.com", "x-forwarded-uri": "//evil.example.com/"},
        id="caddy: Uri starting //",
    ),
    pytest.param(
        f"{P}/auth/traefik",
        {"x-forwarded-host": "app.example.com", "x-forwarded-uri": "/", "x-forwarded-proto": "ws"},
        id="traefik: unknown scheme",
    ),
    pytest.param(f"{P}/auth/envoy/p", {}, id="envoy: no Host"),
    pytest.param(
        f"{P}/auth/envoy/p",
        {"host": "app.example.com", "x-forwarded-proto": "ftp"},
        id="envoy: unknown scheme",
    ),
    pytest.param(f"{P}/ping", {}, id="direct: no Host"),
]


@pytest.mark.parametrize(("target", "headers"), BAD)
def test_unreadable_original_request_is_400(target: str, headers: dict[str, str]) -> None:
    with pytest.raises(Refused) as refused:
        from_proxy(req(target, headers), TRUSTED)
    assert refused.value.status == 400
    assert refused.value.result == "bad_request"
    assert refused.value.body == "bad forward-auth request\n"
    for value in headers.values():  # the detail never quotes a header value
        if len(value) > 3:
            assert value not in str(refused.value)


# --- 403: forward-auth paths from untrusted peers ----------------------------------------

FORWARD_AUTH_PATHS = [
    f"{P}/auth/nginx",
    f"{P}/auth/traefik",
    f"{P}/auth/caddy",
    f"{P}/auth/envoy/x",
]
GOOD_HEADERS = {
    "host": "app.example.com",
    "x-original-url": "https://app.example.com/",
    "x-forwarded-host": "app.example.com",
    "x-forwarded-uri": "/",
}


@pytest.mark.parametrize("target", FORWARD_AUTH_PATHS)
@pytest.mark.parametrize(
    "peer",
    [STRANGER, "2001:db8::1", "::ffff:192.0.2.9", "11.0.0.1", "fe80::1%eth0", "", "not-an-ip"],
)
def test_forward_auth_from_an_untrusted_peer_is_403(target: str, peer: str) -> None:
    with pytest.raises(Refused) as refused:
        from_proxy(req(target, GOOD_HEADERS, peer=peer), TRUSTED)
    assert (refused.value.status, refused.value.result) == (403, "untrusted_peer")


@pytest.mark.parametrize("target", FORWARD_AUTH_PATHS)
@pytest.mark.parametrize("peer", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "10.1.2.3"])
def test_forward_auth_from_a_trusted_peer_is_read(target: str, peer: str) -> None:
    dialect, auth = from_proxy(req(target, GOOD_HEADERS, peer=peer), TRUSTED)
    assert dialect is not Dialect.DIRECT
    assert auth.host == "app.example.com"


# --- 404: no such dialect, no such outpost route -----------------------------------------

NOT_FOUND = [
    f"{P}/auth/",
    f"{P}/auth/unknown",
    f"{P}/auth/envoyx/p",
    f"{P}/auth/nginx/extra",
    f"{P}/auth/Nginx",
    f"{P}/nothing",
    f"{P}/",
    "/",
    "/some/page?x=1",
    "/page?X-authentik-logout=false",
]


@pytest.mark.parametrize("target", NOT_FOUND)
@pytest.mark.parametrize("peer", [PROXY, STRANGER])
def test_unknown_paths_are_404(target: str, peer: str) -> None:
    with pytest.raises(Refused) as refused:
        from_proxy(req(target, GOOD_HEADERS, peer=peer), TRUSTED)
    assert (refused.value.status, refused.value.result) == (404, "not_found")


# --- trusted proxies, client address and request id --------------------------------------


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("127.0.0.1", True),
        ("10.255.255.255", True),
        ("::1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:7f00:1", True),
        ("11.0.0.0", False),
        ("::2", False),
        ("::ffff:192.0.2.1", False),
        ("", False),
        ("localhost", False),
        ("127.0.0.1.nip.io", False),
    ],
)
def test_trusted_proxies(peer: str, trusted: bool) -> None:
    assert (peer in TRUSTED) is trusted
    assert (peer in TRUSTED) is trusted  # remembered answers are the same answers


def test_trusted_proxies_remember_a_bounded_number_of_peers() -> None:
    trusted = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"),))
    for i in range(5000):
        assert f"192.0.{i // 256}.{i % 256}" not in trusted
    assert "10.0.0.1" in trusted
    assert len(trusted._known) <= 4096


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        (PROXY, None, PROXY),
        (PROXY, "", PROXY),
        (PROXY, "198.51.100.1", "198.51.100.1"),
        (PROXY, "198.51.100.1, 10.0.0.2", "198.51.100.1"),
        (PROXY, "203.0.113.66, 198.51.100.1, 10.0.0.2", "198.51.100.1"),  # spoofed left part
        (PROXY, "198.51.100.1,10.0.0.3,127.0.0.1", "198.51.100.1"),
        (PROXY, "10.0.0.3, 10.0.0.2", "10.0.0.3"),  # only our proxies: the farthest one
        (PROXY, "2001:db8::5", "2001:db8::5"),
        (PROXY, "[2001:db8::5]:4711, 10.0.0.2", "2001:db8::5"),
        (PROXY, " , ", PROXY),
        # Some load balancers append address:port: the port is not part of who it is.
        (PROXY, "198.51.100.1:50123, 10.0.0.2:443", "198.51.100.1"),
        (PROXY, "198.51.100.1, 10.0.0.2:443", "198.51.100.1"),
        (PROXY, "[2001:db8::5], 10.0.0.2", "2001:db8::5"),
        (PROXY, "unknown, 10.0.0.2", "unknown"),
        ("::1", "198.51.100.1", "198.51.100.1"),
        ("::ffff:10.0.0.7", "198.51.100.1", "198.51.100.1"),
        (STRANGER, "198.51.100.1", STRANGER),  # not believed
        ("2001:db8::9", "10.0.0.1", "2001:db8::9"),
    ],
)
def test_client_address(peer: str, forwarded_for: str | None, client: str) -> None:
    assert TRUSTED.client_address(peer, forwarded_for) == client


def test_client_address_reaches_the_decision() -> None:
    headers = {"host": "app.example.com", "x-forwarded-for": "198.51.100.1, 10.0.0.2"}
    _, auth = from_proxy(req(f"{P}/auth/envoy/", headers), TRUSTED)
    assert auth.client == "198.51.100.1"
    _, auth = from_proxy(req(f"{P}/ping", headers, peer=STRANGER), TRUSTED)
    assert auth.client == STRANGER


@pytest.mark.parametrize(("peer", "request_id"), [(PROXY, "abc-123"), (STRANGER, "")])
def test_request_id_only_from_trusted_peers(peer: str, request_id: str) -> None:
    headers = {"host": "app.example.com", "x-request-id": "abc-123"}
    _, auth = from_proxy(req(f"{P}/ping", headers, peer=peer), TRUSTED)
    assert auth.request_id == request_id


# --- the answer ---------------------------------------------------------------------------

ORIGINAL = AuthRequest(
    has_http=True,
    method="GET",
    host="app.example.com",
    path="/",
    headers=MappingProxyType(
        {"authorization": "Bearer client-token", "cookie": "theme=dark", "accept": "*/*"}
    ),
)
IDENTITY_HEADERS = (("X-authentik-username", "alice"), ("X-authentik-uid", "u1"))
SET_COOKIE = ("set-cookie", "authentik_proxy_x=v; Path=/; HttpOnly")
COPYING = [Dialect.NGINX, Dialect.TRAEFIK, Dialect.CADDY]


def test_allow_is_200_with_the_upstream_headers_for_envoy() -> None:
    allow = Allow(
        method="basic",
        set_headers=IDENTITY_HEADERS,
        remove_headers=("authorization", "x-authentik-groups"),
        response_headers=(SET_COOKIE,),
    )
    response = to_response(Dialect.ENVOY, allow, ORIGINAL)
    assert response == HttpResponse(
        200,
        (
            *IDENTITY_HEADERS,
            ("x-envoy-auth-headers-to-remove", "authorization,x-authentik-groups"),
            SET_COOKIE,
        ),
        b"",
    )


def test_allow_for_envoy_without_removals_names_none() -> None:
    response = to_response(Dialect.ENVOY, Allow(method="skip"), ORIGINAL)
    assert response == HttpResponse(200, (), b"")


@pytest.mark.parametrize("dialect", COPYING)
def test_allow_echoes_the_clients_own_authorization_and_cookie(dialect: Dialect) -> None:
    allow = Allow(method="session", set_headers=IDENTITY_HEADERS)
    response = to_response(dialect, allow, ORIGINAL)
    assert response.status == 200
    assert response.body == b""
    assert response.headers == (
        *IDENTITY_HEADERS,
        ("authorization", "Bearer client-token"),
        ("cookie", "theme=dark"),
    )
    assert not any(k == "x-envoy-auth-headers-to-remove" for k, _ in response.headers)


@pytest.mark.parametrize("dialect", COPYING)
def test_allow_never_echoes_what_is_removed_or_set(dialect: Dialect) -> None:
    allow = Allow(
        method="basic",
        set_headers=(
            *IDENTITY_HEADERS,
            ("Authorization", "Basic dXBzdHJlYW06cHc="),
            ("cookie", ""),
        ),
        remove_headers=("x-authentik-groups",),
        response_headers=(SET_COOKIE,),
    )
    response = to_response(dialect, allow, ORIGINAL)
    assert response.headers == (
        *IDENTITY_HEADERS,
        ("Authorization", "Basic dXBzdHJlYW06cHc="),
        ("cookie", ""),
        SET_COOKIE,
    )
    allow = Allow(method="bearer", remove_headers=("authorization", "cookie"))
    assert to_response(dialect, allow, ORIGINAL).headers == ()


@pytest.mark.parametrize("dialect", COPYING)
def test_allow_echoes_only_what_the_client_sent(dialect: Dialect) -> None:
    bare = AuthRequest(has_http=True, host="app.example.com", headers=MappingProxyType({}))
    assert to_response(dialect, Allow(method="skip"), bare).headers == ()


DENIALS = [
    Deny(
        401,
        "unauthenticated",
        (("www-authenticate", 'Basic realm="app"'), ("cache-control", "no-store")),
        "401 sign in\n",
    ),
    Deny(403, "unknown_host", (("content-type", "text/plain"),), "unknown host"),
    Deny(
        302,
        "redirect",
        (("location", "https://idp.example.com/authorize?x=1"), SET_COOKIE),
    ),
    Deny(503, "idp_unavailable", (("retry-after", "5"),), "503 try again"),
    Deny(400, "bad_state", (("content-type", "text/html"), SET_COOKIE), "<p>é</p>"),
]


@pytest.mark.parametrize("dialect", [Dialect.ENVOY, Dialect.TRAEFIK, Dialect.CADDY, Dialect.DIRECT])
@pytest.mark.parametrize("deny", DENIALS, ids=lambda d: str(d.status))
def test_denials_are_relayed_as_decided(dialect: Dialect, deny: Deny) -> None:
    response = to_response(dialect, deny, ORIGINAL)
    assert response == HttpResponse(deny.status, deny.headers, deny.body.encode())


@pytest.mark.parametrize("deny", DENIALS[:2], ids=lambda d: str(d.status))
def test_nginx_relays_401_and_403_as_decided(deny: Deny) -> None:
    response = to_response(Dialect.NGINX, deny, ORIGINAL)
    assert response == HttpResponse(deny.status, deny.headers, deny.body.encode())


@pytest.mark.parametrize("deny", DENIALS[2:], ids=lambda d: str(d.status))
def test_nginx_gets_401_for_every_other_denial_keeping_set_cookie(deny: Deny) -> None:
    response = to_response(Dialect.NGINX, deny, ORIGINAL)
    assert response.status == 401
    kept = [h for h in deny.headers if h[0] == "set-cookie"]
    assert [h for h in response.headers if h[0] == "set-cookie"] == kept
    assert not any(k in ("location", "retry-after") for k, _ in response.headers)
    assert ("cache-control", "no-store") in response.headers
    assert response.body == f"401 {deny.reason}\n".encode()


# --- the handler: refusals are answered, not raised ----------------------------------------


def test_handler_answers_refusals_and_counts_them() -> None:
    counted: list[str] = []

    async def never(_: AuthRequest) -> Allow | Deny:
        raise AssertionError("no decision for a refused request")

    handler = ForwardAuth(never, None, TRUSTED, counted.append)
    for target, peer, status in [
        (f"{P}/auth/nginx", STRANGER, 403),
        (f"{P}/auth/nginx", PROXY, 400),
        (f"{P}/auth/nope", PROXY, 404),
    ]:
        response = handler(req(target, {"host": "app.example.com"}, peer=peer))
        assert isinstance(response, HttpResponse)
        assert response.status == status
        assert ("cache-control", "no-store") in response.headers
    assert counted == ["untrusted_peer", "bad_request", "not_found"]


def test_handler_decides_and_maps_the_answer() -> None:
    import asyncio

    seen: list[AuthRequest] = []
    asked: list[tuple[str, bool]] = []

    async def check(
        request: AuthRequest, transport: str = "grpc", *, can_redirect: bool = True
    ) -> Allow | Deny:
        seen.append(request)
        asked.append((transport, can_redirect))
        return Deny(302, "redirect", (("location", "https://idp.example.com/"),))

    handler = ForwardAuth(check, None, TRUSTED, lambda _: None)
    pending = handler(req(f"{P}/auth/nginx", {"x-original-url": "https://app.example.com/x"}))
    assert not isinstance(pending, HttpResponse)

    async def run() -> HttpResponse:
        return await pending

    response = asyncio.run(run())
    assert response.status == 401  # nginx: a redirect becomes a 401
    assert seen[0].path == "/x"
    # nginx cannot relay a redirect: the service is told so (no login state stored).
    assert asked == [("http", False)]


# --- property: nothing but Refused escapes --------------------------------------------------

_NAMES = [
    "host",
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-forwarded-proto",
    "x-forwarded-method",
    "x-forwarded-for",
    "x-request-id",
]
_AWKWARD = st.lists(
    st.one_of(
        # What the HTTP server can hand over: text, and bytes that were not UTF-8 as
        # the lone surrogates of `surrogateescape`.
        st.characters(codec="utf-8"),
        st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
        st.sampled_from([*":/?#[]@%&=;,. \t\\", "http://", "https://", "//", "%2F"]),
    ),
    max_size=30,
).map("".join)
_TARGETS = st.one_of(
    _AWKWARD,
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(
            [
                f"{P}/auth/nginx",
                f"{P}/auth/traefik",
                f"{P}/auth/caddy",
                f"{P}/auth/envoy",
                f"{P}/auth/",
                f"{P}/",
                f"{P}/start",
                f"{P}/callback",
                "/",
                "/?x-authentik-auth-callback=true&",
                "/?x-authentik-logout=true&",
                "/?%",
            ]
        ),
        _AWKWARD,
    ),
)
_VALUES = st.one_of(
    _AWKWARD,
    st.builds(
        lambda a, b: a + b,
        st.sampled_from(["http://", "https://", "/", "//", "http://[", "https://a:", "10.0.0.1, "]),
        _AWKWARD,
    ),
)
_PEERS = st.one_of(
    st.sampled_from([PROXY, STRANGER, "::1", "::ffff:10.0.0.1", "fe80::1%lo", ""]),
    st.text(st.characters(codec="ascii"), max_size=40),  # the socket's address, as text
)


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=_TARGETS,
    headers=st.dictionaries(st.sampled_from(_NAMES), _VALUES, max_size=8),
    method=st.sampled_from(["GET", "POST", "HEAD", "PURGE", ""]),
    peer=_PEERS,
)
def test_from_proxy_raises_only_refused(
    target: str, headers: dict[str, str], method: str, peer: str
) -> None:
    request = HttpRequest(method, target, MappingProxyType(headers), peer)
    try:
        dialect, auth = from_proxy(request, TRUSTED)
    except Refused as refused:
        assert refused.status in (400, 403, 404)
        return
    assert auth.host
    assert auth.path.startswith("/")
    assert auth.scheme in ("", "http", "https")
    assert dialect is Dialect.DIRECT or peer in TRUSTED
    # The decision hashes and seals what it reads as UTF-8: all of it must encode.
    texts = [auth.method, auth.host, auth.path, auth.query, auth.scheme, auth.request_id]
    texts += [auth.client, *auth.headers.values()]
    for text in texts:
        text.encode("utf-8")


def test_bytes_that_are_not_utf8_reach_the_decision_as_text_and_the_proxy_unchanged() -> None:
    raw_cookie = "authentik_proxy_1234abcd=\udcff\udcfe; theme=caf\udce9"
    request = req(
        f"{P}/auth/traefik",
        {
            "x-forwarded-host": "app.example.com",
            "x-forwarded-uri": "/p\udcff?state=\udcfe",
            "cookie": raw_cookie,
            "x-forwarded-for": "\udcff, 10.0.0.2",
        },
    )
    dialect, auth = from_proxy(request, TRUSTED)
    assert auth.header("cookie") == "authentik_proxy_1234abcd=\ufffd\ufffd; theme=caf\ufffd"
    assert (auth.path, auth.query, auth.client) == ("/p\ufffd", "state=\ufffd", "\ufffd")
    response = to_response(dialect, Allow(method="skip"), auth, request.headers)
    assert ("cookie", raw_cookie) in response.headers  # the client's own bytes, untouched


def test_plain_requests_are_not_copied() -> None:
    request = req(f"{P}/ping", {"host": "app.example.com", "accept": "text/html"})
    _, auth = from_proxy(request, TRUSTED)
    assert auth.headers is request.headers
