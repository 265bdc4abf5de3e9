"""What the real proxies send to a forward-auth server, and what they do with its answer.

The shipped configs run in the real nginx 1.22 (deploy/nginx/), Caddy 2.6
(deploy/caddy/) and Envoy 1.40 (envoy/envoy-http.yaml.tmpl) in front of the echo
upstream, asking a recording stub (tests/stack/stub_auth.py) instead of ext-authz. The
stub's scripted answers stand for ext-authz's; the tests pin the proxies' side of the
contract that ext-authz's forward-auth endpoints rely on (SPEC §10): which request
arrives (method, Host, the original URL, X-Forwarded-*, credentials, spoofed identity
headers), and what reaches the client (status, headers, body, Set-Cookie) and the
upstream (copied headers, nothing of the client's identity claims).

Traefik is not packaged here: its replay (tests/stack/traefik.py) is pinned to its
source in tests/unit/test_traefik_replay.py; the last test here only checks that the
replayed request goes out on the wire as built.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack.caddy import TEMPLATE as CADDY_TEMPLATE
from tests.stack.caddy import Caddy
from tests.stack.echo import EchoServer
from tests.stack.envoy import HTTP_TEMPLATE, Envoy
from tests.stack.forward_auth import AUTH_PATHS, IDENTITY_HEADERS, OUTPOST_PREFIX
from tests.stack.nginx import API_401_TEMPLATE, Nginx
from tests.stack.stub_auth import Answer, StubAuthServer
from tests.stack.traefik import ClientRequest, Traefik

pytestmark = pytest.mark.integration

HOST = "app.localhost"
# What a browser holds: ext-authz's session cookie next to the application's own.
CLIENT_COOKIE = "theme=dark; authentik_proxy_0a1b2c3d=s3ss10n"
# A client posing as someone, in every spelling a proxy or an upstream might fold.
SPOOFED = (
    ("X-authentik-username", "root"),
    ("X-Authentik-Name", "Root"),
    ("x-authentik-meta-outpost", "forged"),
    ("X_authentik_uid", "0"),
    ("X-authentik_email", "root@evil.test"),
)
# A client trying to choose what the forward-auth server believes about the request.
FORWARDED = (
    ("X-Forwarded-Host", "other.localhost"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Uri", "/public/"),
    ("X-Forwarded-Method", "GET"),
    ("X-Original-URL", "http://other.localhost/public/"),
)
IDENTITY = (
    ("X-authentik-username", "alice"),
    ("X-authentik-groups", "admins|devs"),
    ("X-authentik-email", "alice@example.com"),
    ("X-authentik-uid", "alice-sub"),
    ("X-authentik-meta-app", "app"),
    ("Authorization", "Basic YWRtaW46czNjcmV0"),
    ("Cookie", "theme=dark"),
)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubAuthServer]:
    with StubAuthServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_stub(stub: StubAuthServer) -> None:
    stub.clear()
    stub.answer(Answer())


@pytest.fixture(scope="module")
def nginx(workdir: Path, stub: StubAuthServer, echo_server: EchoServer) -> Iterator[Nginx]:
    with Nginx(
        upstream=f"127.0.0.1:{echo_server.port}", ext_authz=stub.address, workdir=workdir
    ) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def nginx_api(workdir: Path, stub: StubAuthServer, echo_server: EchoServer) -> Iterator[Nginx]:
    with Nginx(
        upstream=f"127.0.0.1:{echo_server.port}",
        ext_authz=stub.address,
        workdir=workdir,
        template=API_401_TEMPLATE,
        name="nginx-api",
    ) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def caddy(workdir: Path, stub: StubAuthServer, echo_server: EchoServer) -> Iterator[Caddy]:
    with Caddy(
        upstream=f"127.0.0.1:{echo_server.port}", ext_authz=stub.address, workdir=workdir
    ) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def envoy_http(workdir: Path, stub: StubAuthServer, echo_server: EchoServer) -> Iterator[Envoy]:
    proxy = Envoy(
        ext_authz_ports=[stub.port],
        echo_port=echo_server.port,
        workdir=workdir,
        template=HTTP_TEMPLATE,
        name="envoy-http",
    )
    proxy.start(wait_healthy=False)  # no health checks on the HTTP cluster
    yield proxy
    proxy.stop()


def send(
    port: int,
    method: str = "GET",
    target: str = "/",
    headers: tuple[tuple[str, str], ...] = (),
    content: bytes | None = None,
) -> httpx.Response:
    """One request to 127.0.0.1:port with Host app.localhost:port; no cookie jar."""
    return httpx.request(
        method,
        f"http://127.0.0.1:{port}{target}",
        headers=[("Host", f"{HOST}:{port}"), *headers],
        content=content,
        follow_redirects=False,
        timeout=15.0,
    )


def upstream_saw(response: httpx.Response) -> dict[str, list[str]]:
    """The echo upstream's view of the request: lower-case name -> values."""
    assert response.status_code == 200, response.text
    headers: dict[str, list[str]] = response.json()["headers"]
    return headers


def assert_no_client_identity(seen: dict[str, Any]) -> None:
    """No spoofed value under any name, no `_` spelling, no Caddy placeholder text."""
    for name in seen:
        assert "_" not in name, name
    for values in seen.values():
        for value in values:
            assert value not in {"root", "Root", "forged", "0", "root@evil.test"}, seen
            assert "{http.reverse_proxy" not in value, seen


# -- nginx: auth_request (authentik's snippet) ----------------------------------------


def test_nginx_subrequest_carries_the_original_request(nginx: Nginx, stub: StubAuthServer) -> None:
    port = nginx.listen_port
    send(
        port,
        "POST",
        "/reports/2024?format=csv&x=%2F",
        (
            ("Cookie", CLIENT_COOKIE),
            ("Authorization", "Basic YWxpY2U6cHc="),
            ("Accept", "text/html"),
            *SPOOFED,
            *FORWARDED,
        ),
        content=b"a body the auth server never sees",
    )
    sub = stub.only()
    # auth_request is a GET subrequest without body, whatever the client's method.
    assert (sub.method, sub.target) == ("GET", AUTH_PATHS["nginx"])
    assert sub.body == b""
    # Host and X-Original-URL both keep the port ($ak_http_host is the Host header).
    assert sub.get("Host") == f"{HOST}:{port}"
    assert sub.get("X-Original-URL") == f"http://{HOST}:{port}/reports/2024?format=csv&x=%2F"
    assert sub.get("X-Original-Method") == "POST"
    # What ext-authz believes from this trusted proxy is nginx's, not the client's.
    assert sub.get("X-Forwarded-For") == "127.0.0.1"
    assert sub.get("X-Forwarded-Host") == f"{HOST}:{port}"
    assert sub.get("X-Forwarded-Proto") == "http"
    assert sub.get("X-Forwarded-Uri") is None
    assert sub.get("X-Forwarded-Method") is None
    assert sub.get("X-Original-URI") is None
    # The credentials and the client's own claims arrive as sent (ext-authz sees what
    # it must remove); nginx drops header names with `_`.
    assert sub.get("Cookie") == CLIENT_COOKIE
    assert sub.get("Authorization") == "Basic YWxpY2U6cHc="
    assert sub.get("Accept") == "text/html"
    assert sub.get("X-authentik-username") == "root"
    assert sub.get("X_authentik_uid") is None
    assert sub.get("X-authentik_email") is None


def test_nginx_401_sends_the_browser_to_start(nginx: Nginx, stub: StubAuthServer) -> None:
    stub.answer(
        Answer(
            401,
            [
                ("WWW-Authenticate", 'Basic realm="app"'),
                ("WWW-Authenticate", 'Bearer realm="app"'),
                ("Set-Cookie", "authentik_proxy_0a1b2c3d=; Max-Age=0; Path=/"),
                ("Set-Cookie", "second=1; Path=/"),
                ("Cache-Control", "no-store"),
            ],
            b'{"error": "unauthenticated"}',
        )
    )
    port = nginx.listen_port
    response = send(port, "GET", "/some/path?a=1&b=2", (("Accept", "text/html"),))
    assert response.status_code == 302
    # error_page -> @goauthentik_proxy_signin: an absolute URL on the request's host, the
    # return URL NOT percent-encoded (its `&b=2` reads as a parameter of /start).
    assert response.headers["location"] == (
        f"http://{HOST}:{port}{OUTPOST_PREFIX}/start?rd=http://{HOST}:{port}/some/path?a=1&b=2"
    )
    # nginx 1.22 copies one WWW-Authenticate (the first) and $upstream_http_set_cookie is
    # the first Set-Cookie only.
    assert response.headers.get_list("www-authenticate") == ['Basic realm="app"']
    assert response.headers.get_list("set-cookie") == [
        "authentik_proxy_0a1b2c3d=; Max-Age=0; Path=/"
    ]
    assert "unauthenticated" not in response.text  # the auth body is never relayed
    assert "cache-control" not in response.headers


@pytest.mark.parametrize(
    ("answer", "status"),
    [(403, 403), (302, 500), (400, 500), (404, 500), (503, 500)],
)
def test_nginx_relays_only_401_and_403(
    nginx: Nginx, stub: StubAuthServer, answer: int, status: int
) -> None:
    stub.answer(
        Answer(answer, [("Location", "https://idp.test/"), ("Retry-After", "5")], b"the reason")
    )
    response = send(nginx.listen_port, "GET", "/x", (("Accept", "text/html"),))
    assert response.status_code == status
    assert "the reason" not in response.text
    assert "location" not in response.headers
    assert "retry-after" not in response.headers


def test_nginx_allowed_copies_the_answers_headers(nginx: Nginx, stub: StubAuthServer) -> None:
    stub.answer(
        Answer(
            200,
            [
                *IDENTITY,
                ("Set-Cookie", "authentik_proxy_0a1b2c3d=new; Path=/; HttpOnly"),
                ("Set-Cookie", "second=1; Path=/"),
                ("X-Not-Copied", "1"),
            ],
        )
    )
    response = send(
        nginx.listen_port,
        "POST",
        "/p?q=1",
        (
            ("Cookie", CLIENT_COOKIE),
            ("Authorization", "Bearer client-token"),
            ("X-authentik-foo", "not ours"),
            *SPOOFED,
        ),
        content=b"hello",
    )
    seen = upstream_saw(response)
    for name, value in IDENTITY:
        assert seen[name.lower()] == [value], name
    assert_no_client_identity(seen)
    assert "x-not-copied" not in seen
    # nginx can only replace headers it names: an unnamed one passes.
    assert seen["x-authentik-foo"] == ["not ours"]
    assert response.json()["body"] == "hello"
    # add_header Set-Cookie $auth_cookie: the first Set-Cookie of the answer only.
    assert response.headers.get_list("set-cookie") == [
        "authentik_proxy_0a1b2c3d=new; Path=/; HttpOnly"
    ]


def test_nginx_allowed_without_headers_removes_credentials_and_claims(
    nginx: Nginx, stub: StubAuthServer
) -> None:
    """An answer without Authorization or Cookie removes them: ext-authz must answer the
    ones the upstream should keep."""
    stub.answer(Answer(200))
    response = send(
        nginx.listen_port,
        "GET",
        "/public/page",
        (("Cookie", CLIENT_COOKIE), ("Authorization", "Basic YWxpY2U6cHc="), *SPOOFED),
    )
    seen = upstream_saw(response)
    assert "authorization" not in seen
    assert "cookie" not in seen
    for name in IDENTITY_HEADERS:
        assert name.lower() not in seen, name
    assert_no_client_identity(seen)
    assert "set-cookie" not in response.headers


def test_nginx_outpost_paths_are_proxied_as_they_are(nginx: Nginx, stub: StubAuthServer) -> None:
    stub.answer(
        Answer(
            302,
            [
                ("Location", "https://idp.test/authorize?state=s"),
                ("Set-Cookie", "authentik_proxy_login=abc; Path=/; HttpOnly"),
                ("Set-Cookie", "second=1; Path=/"),
            ],
            b"to the IdP",
        )
    )
    port = nginx.listen_port
    target = f"{OUTPOST_PREFIX}/start?rd=http://{HOST}:{port}/x"
    response = send(port, "GET", target, (("Cookie", CLIENT_COOKIE), *FORWARDED))
    assert response.status_code == 302
    assert response.headers["location"] == "https://idp.test/authorize?state=s"
    assert response.headers.get_list("set-cookie") == [
        "authentik_proxy_login=abc; Path=/; HttpOnly",
        "second=1; Path=/",
    ]
    assert response.text == "to the IdP"
    sub = stub.only()
    assert (sub.method, sub.target) == ("GET", target)
    assert sub.get("Host") == f"{HOST}:{port}"
    assert sub.get("X-Forwarded-Host") == f"{HOST}:{port}"
    assert sub.get("X-Forwarded-For") == "127.0.0.1"
    assert sub.get("Cookie") == CLIENT_COOKIE


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", (("Accept", "text/html,application/xhtml+xml"),), 302),
        ("HEAD", (("Accept", "text/html"),), 302),
        ("GET", (("Accept", "application/json"),), 401),
        ("GET", (), 401),
        ("GET", (("Accept", "text/html"), ("X-Requested-With", "XMLHttpRequest")), 401),
        ("POST", (("Accept", "text/html"),), 401),
    ],
)
def test_nginx_api_variant_keeps_the_401_for_api_clients(
    nginx_api: Nginx,
    stub: StubAuthServer,
    method: str,
    headers: tuple[tuple[str, str], ...],
    status: int,
) -> None:
    stub.answer(
        Answer(
            401,
            [
                ("WWW-Authenticate", 'Basic realm="app"'),
                ("Set-Cookie", "authentik_proxy_0a1b2c3d=; Max-Age=0; Path=/"),
            ],
        )
    )
    response = send(nginx_api.listen_port, method, "/api/items", headers)
    assert response.status_code == status
    assert response.headers.get_list("set-cookie") == [
        "authentik_proxy_0a1b2c3d=; Max-Age=0; Path=/"
    ]
    assert response.headers.get_list("www-authenticate") == ['Basic realm="app"']
    if status == 302:
        assert response.headers["location"].startswith(
            f"http://{HOST}:{nginx_api.listen_port}{OUTPOST_PREFIX}/start?rd="
        )
    else:
        assert response.headers["cache-control"] == "no-store"


# -- Caddy: forward_auth (authentik's snippet) ----------------------------------------


def test_caddy_subrequest_carries_the_original_request(caddy: Caddy, stub: StubAuthServer) -> None:
    port = caddy.listen_port
    send(
        port,
        "POST",
        "/reports/2024?format=csv&x=%2F",
        (
            ("Cookie", CLIENT_COOKIE),
            ("Authorization", "Basic YWxpY2U6cHc="),
            ("Accept", "text/html"),
            *SPOOFED,
            *FORWARDED,
        ),
        content=b"a body the auth server never sees",
    )
    sub = stub.only()
    # forward_auth rewrites the method to GET and the path, keeping the query.
    assert sub.method == "GET"
    assert sub.target == AUTH_PATHS["caddy"] + "?format=csv&x=%2F"
    assert sub.body == b""
    assert sub.get("Host") == f"{HOST}:{port}"
    assert sub.get("X-Forwarded-Method") == "POST"
    assert sub.get("X-Forwarded-Uri") == "/reports/2024?format=csv&x=%2F"
    # Not trusted (no trusted_proxies): Caddy's own values replace the client's.
    assert sub.get("X-Forwarded-Host") == f"{HOST}:{port}"
    assert sub.get("X-Forwarded-Proto") == "http"
    assert sub.get("X-Forwarded-For") == "127.0.0.1"
    assert sub.get("X-Original-URL") == "http://other.localhost/public/"  # Caddy ignores it
    assert sub.get("Cookie") == CLIENT_COOKIE
    assert sub.get("Authorization") == "Basic YWxpY2U6cHc="
    assert sub.get("Accept") == "text/html"
    # request_header -X-Authentik* / -X_Authentik* ran before forward_auth.
    assert not {name.lower() for name, _ in SPOOFED} & sub.names()


@pytest.mark.parametrize("status", [302, 401, 403, 503])
def test_caddy_relays_a_denial_as_it_is(caddy: Caddy, stub: StubAuthServer, status: int) -> None:
    headers = [
        ("Location", "https://idp.test/authorize?state=s"),
        ("WWW-Authenticate", 'Basic realm="app"'),
        ("WWW-Authenticate", 'Bearer realm="app"'),
        ("Set-Cookie", "authentik_proxy_login=abc; Path=/; HttpOnly"),
        ("Set-Cookie", "second=1; Path=/"),
        ("Retry-After", "5"),
        ("Cache-Control", "no-store"),
        ("Content-Type", "application/json"),
    ]
    stub.answer(Answer(status, headers, b'{"error": "the reason"}'))
    response = send(caddy.listen_port, "GET", "/x", (("Accept", "text/html"),))
    assert response.status_code == status
    for name in {name for name, _ in headers}:
        expected = [value for n, value in headers if n == name]
        assert response.headers.get_list(name) == expected, name
    assert response.json() == {"error": "the reason"}


@pytest.mark.parametrize("status", [200, 204])
def test_caddy_allowed_copies_the_answers_headers(
    caddy: Caddy, stub: StubAuthServer, status: int
) -> None:
    stub.answer(
        Answer(
            status,
            [
                *IDENTITY,
                ("Set-Cookie", "authentik_proxy_0a1b2c3d=new; Path=/; HttpOnly"),
                ("X-Not-Copied", "1"),
            ],
        )
    )
    response = send(
        caddy.listen_port,
        "POST",
        "/p?q=1",
        (
            ("Cookie", CLIENT_COOKIE),
            ("Authorization", "Bearer client-token"),
            ("X-authentik-foo", "not ours"),
            *SPOOFED,
        ),
        content=b"hello",
    )
    seen = upstream_saw(response)
    for name, value in IDENTITY:
        assert seen[name.lower()] == [value], name
    assert_no_client_identity(seen)
    assert "x-not-copied" not in seen
    assert "x-authentik-foo" not in seen  # every X-Authentik* went before asking
    assert response.json()["body"] == "hello"
    # On 2xx Caddy copies only copy_headers: a Set-Cookie never reaches the browser.
    assert "set-cookie" not in response.headers


def test_caddy_allowed_without_headers_sends_no_placeholders(
    caddy: Caddy, stub: StubAuthServer
) -> None:
    """Caddy 2.6 copies a header the answer lacks as "{http.reverse_proxy.header.X}";
    the shipped clean-up removes it."""
    stub.answer(Answer(200))
    response = send(
        caddy.listen_port,
        "GET",
        "/public/page",
        (("Cookie", CLIENT_COOKIE), ("Authorization", "Basic YWxpY2U6cHc="), *SPOOFED),
    )
    seen = upstream_saw(response)
    assert "authorization" not in seen
    assert "cookie" not in seen
    for name in IDENTITY_HEADERS:
        assert name.lower() not in seen, name
    assert_no_client_identity(seen)


def test_caddy_outpost_paths_are_proxied_as_they_are(caddy: Caddy, stub: StubAuthServer) -> None:
    stub.answer(
        Answer(
            302,
            [
                ("Location", "http://app.localhost/x"),
                ("Set-Cookie", "authentik_proxy_0a1b2c3d=new; Path=/; HttpOnly"),
            ],
        )
    )
    port = caddy.listen_port
    target = f"{OUTPOST_PREFIX}/callback?code=c&state=s"
    response = send(port, "GET", target, (("Cookie", CLIENT_COOKIE), *SPOOFED, *FORWARDED))
    assert response.status_code == 302
    assert response.headers["location"] == "http://app.localhost/x"
    assert response.headers.get_list("set-cookie") == [
        "authentik_proxy_0a1b2c3d=new; Path=/; HttpOnly"
    ]
    sub = stub.only()
    assert (sub.method, sub.target) == ("GET", target)
    assert sub.get("Host") == f"{HOST}:{port}"
    assert sub.get("X-Forwarded-Host") == f"{HOST}:{port}"
    assert sub.get("X-Forwarded-For") == "127.0.0.1"
    # The outpost route comes before the clean-up: the client's claims arrive.
    assert sub.get("X-authentik-username") == "root"


def test_caddy_with_authentiks_trusted_proxies_lets_a_client_pick_the_host(
    workdir: Path, tmp_path: Path, stub: StubAuthServer, echo_server: EchoServer
) -> None:
    """Why the Caddyfile leaves out authentik's `trusted_proxies private_ranges`: with
    it, a client on a private address (here loopback) chooses the X-Forwarded-Host that
    picks the application, so a session for one application could open another."""
    with_trust = tmp_path / "Caddyfile"
    text = CADDY_TEMPLATE.read_text()
    marker = "\t\t\turi /outpost.goauthentik.io/auth/caddy\n"
    assert marker in text
    with_trust.write_text(text.replace(marker, marker + "\t\t\ttrusted_proxies private_ranges\n"))
    proxy = Caddy(
        upstream=f"127.0.0.1:{echo_server.port}",
        ext_authz=stub.address,
        workdir=workdir,
        template=with_trust,
        name="caddy-trusting",
    )
    with proxy:
        send(proxy.listen_port, "GET", "/x", FORWARDED)
    sub = stub.only()
    assert sub.get("X-Forwarded-Host") == "other.localhost"
    assert sub.get("X-Forwarded-Proto") == "https"
    assert sub.get("X-Forwarded-For") == "203.0.113.9, 127.0.0.1"


# -- Envoy http_service (envoy/envoy-http.yaml.tmpl) -----------------------------------


def test_envoy_check_request_carries_the_original_request(
    envoy_http: Envoy, stub: StubAuthServer
) -> None:
    port = envoy_http.listen_port
    send(
        port,
        "POST",
        "/reports//2024/../2025?format=csv",
        (
            ("Cookie", CLIENT_COOKIE),
            ("Authorization", "Basic YWxpY2U6cHc="),
            ("Accept", "text/html"),
            ("X-Requested-With", "XMLHttpRequest"),
            ("X-Not-Allowed", "1"),
            *SPOOFED,
            *FORWARDED,
        ),
        content=b"a body the auth server never sees",
    )
    sub = stub.only()
    # The original method; the prefix, then the normalised path and the query.
    assert sub.method == "POST"
    assert sub.target == AUTH_PATHS["envoy"] + "/reports/2025?format=csv"
    assert sub.body == b""
    assert sub.get("Content-Length") == "0"
    assert sub.get("Host") == f"{HOST}:{port}"
    assert sub.get("Cookie") == CLIENT_COOKIE
    assert sub.get("Authorization") == "Basic YWxpY2U6cHc="
    assert sub.get("X-Requested-With") == "XMLHttpRequest"
    assert sub.get("X-Not-Allowed") is None
    assert sub.get("X-Forwarded-Host") is None  # not in allowed_headers
    # use_remote_address: Envoy appends its view of the peer (for a loopback peer Envoy
    # appends this host's own address); the last entry is the one to believe.
    forwarded_for = sub.get("X-Forwarded-For")
    assert forwarded_for is not None and forwarded_for.startswith("203.0.113.9,")
    assert sub.get("x-request-id")
    # Every spelling of a client's identity claim reaches ext-authz, to be removed.
    assert {name.lower() for name, _ in SPOOFED} <= sub.names()


def test_envoy_only_200_allows(envoy_http: Envoy, stub: StubAuthServer) -> None:
    stub.answer(Answer(204, [("X-authentik-username", "alice")]))
    response = send(envoy_http.listen_port, "GET", "/x")
    assert response.status_code == 204  # relayed as a denial; the upstream is not asked
    assert "x-authentik-username" not in response.headers


def test_envoy_5xx_answer_becomes_status_on_error(envoy_http: Envoy, stub: StubAuthServer) -> None:
    stub.answer(Answer(503, [("Retry-After", "5")], b"IdP unreachable"))
    response = send(envoy_http.listen_port, "GET", "/x")
    assert response.status_code == 503
    assert "retry-after" not in response.headers
    assert response.text == ""


def test_envoy_relays_a_denial_with_the_allowed_headers(
    envoy_http: Envoy, stub: StubAuthServer
) -> None:
    stub.answer(
        Answer(
            401,
            [
                ("WWW-Authenticate", 'Basic realm="app"'),
                ("WWW-Authenticate", 'Bearer realm="app"'),
                ("Set-Cookie", "authentik_proxy_0a1b2c3d=; Max-Age=0; Path=/"),
                ("Set-Cookie", "second=1; Path=/"),
                ("Cache-Control", "no-store"),
                ("Content-Type", "application/json"),
                ("X-Not-Allowed", "1"),
            ],
            b'{"error": "the reason"}',
        )
    )
    response = send(envoy_http.listen_port, "GET", "/x")
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == [
        'Basic realm="app"',
        'Bearer realm="app"',
    ]
    assert response.headers.get_list("set-cookie") == [
        "authentik_proxy_0a1b2c3d=; Max-Age=0; Path=/",
        "second=1; Path=/",
    ]
    assert response.headers["cache-control"] == "no-store"
    assert "x-not-allowed" not in response.headers
    assert response.json() == {"error": "the reason"}


def test_envoy_allowed_sets_removes_and_relays_cookies(
    envoy_http: Envoy, stub: StubAuthServer
) -> None:
    stub.answer(
        Answer(
            200,
            [
                *IDENTITY,
                ("Set-Cookie", "authentik_proxy_0a1b2c3d=new; Path=/; HttpOnly"),
                ("Set-Cookie", "second=1; Path=/"),
                ("X-Not-Copied", "1"),
                (
                    "x-envoy-auth-headers-to-remove",
                    ", ".join(name for name, _ in SPOOFED if name != "X-authentik-username"),
                ),
            ],
        )
    )
    response = send(
        envoy_http.listen_port,
        "POST",
        "/p?q=1",
        (("Cookie", CLIENT_COOKIE), ("Authorization", "Bearer client-token"), *SPOOFED),
        content=b"hello",
    )
    seen = upstream_saw(response)
    for name, value in IDENTITY:
        assert seen[name.lower()] == [value], name
    assert_no_client_identity(seen)
    assert "x-not-copied" not in seen
    assert "x-envoy-auth-headers-to-remove" not in seen
    assert response.headers.get_list("set-cookie") == [
        "authentik_proxy_0a1b2c3d=new; Path=/; HttpOnly",
        "second=1; Path=/",
    ]


# -- Traefik: the replay goes out as built --------------------------------------------


def test_traefik_replay_sends_the_request_it_built(stub: StubAuthServer) -> None:
    traefik = Traefik(
        {
            "host": HOST,
            "upstream": "127.0.0.1:9",
            "ext_authz": stub.address,
            "session_cookie": "authentik_proxy_0a1b2c3d",
        }
    )
    stub.answer(Answer(200, IDENTITY))
    request = ClientRequest(
        method="POST",
        host=f"{HOST}:8080",
        target="/p?q=1",
        headers=(("Cookie", CLIENT_COOKIE), *SPOOFED, *FORWARDED),
        remote_addr="127.0.0.1:40000",
    )
    sent, outcome = traefik.forward_auth(request)
    assert sent is not None
    sub = stub.only()
    assert (sub.method, sub.target) == ("GET", AUTH_PATHS["traefik"])
    assert sub.get("Host") == stub.address
    assert sub.get("Accept-Encoding") == "gzip"  # Go's Transport adds it
    assert sub.get("User-Agent") is None  # Go omits the empty one writeHeader sets
    on_the_wire = [(k, v) for k, v in sub.headers if k not in ("Host", "Accept-Encoding")]
    assert on_the_wire == [(k, v) for k, v in sent.headers.pairs() if k != "User-Agent"]
    assert outcome.allowed
    seen: dict[str, list[str]] = {}
    for name, value in outcome.upstream_headers.pairs():
        seen.setdefault(name.lower(), []).append(value)
    for name, value in IDENTITY:
        assert seen[name.lower()] == [value], name
    assert_no_client_identity(seen)
