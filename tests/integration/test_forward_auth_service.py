"""Forward auth (SPEC §10) through the real service: `python -m ext_authz serve` with
the demo config, asked over HTTP as each proxy asks.

`whoami` is directory-backed (no IdP needed); `app` signs in at the test IdP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ext_authz.core.cookies import cookie_name_for
from tests.stack.demo import ALICE, BOB, OIDC_CLIENT_ID, ext_authz_config, merge_config
from tests.stack.extauthz import ExtAuthz
from tests.stack.idp import IdP
from tests.stack.proc import free_port, port_open, wait_until
from tests.stack.redis import RedisServer
from tests.support import basic

pytestmark = pytest.mark.integration

DEADLINE = 20.0  # bounds a failure; a passing test never waits for it
OUTPOST = "/outpost.goauthentik.io"
ENVOY_PORT = 18080  # only names the applications' external_host; nothing listens there
ALICE_BASIC = basic(ALICE.username, ALICE.app_password)


def traefik(host: str, uri: str = "/", **headers: str) -> dict[str, str]:
    """The headers Traefik's forwardAuth (and Caddy's forward_auth) send."""
    return {
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": host,
        "X-Forwarded-Uri": uri,
        **headers,
    }


@pytest.fixture(scope="module")
def service(workdir: Path, idp: IdP) -> Iterator[ExtAuthz]:
    """One replica of the demo config (whoami and app), forward auth on a free port."""
    config = ext_authz_config(ENVOY_PORT, idp=idp)
    replica = ExtAuthz(config, workdir / "forward-auth", name="fa-service").start()
    yield replica
    replica.stop()


@pytest.fixture
def client(service: ExtAuthz) -> Iterator[httpx.Client]:
    assert service.forward_auth_url is not None
    with httpx.Client(base_url=service.forward_auth_url, timeout=DEADLINE) as c:
        yield c


# --- the dialects, end to end ----------------------------------------------------------


def test_traefik_allows_a_valid_app_password_with_identity_headers(client: httpx.Client) -> None:
    # Bob's credential is this test's alone in the module: a session is made once per
    # verification, so the Set-Cookie below needs a credential no other test verified.
    response = client.get(
        f"{OUTPOST}/auth/traefik",
        headers=traefik(
            "whoami.localhost",
            "/private?x=1",
            Authorization=basic(BOB.username, BOB.app_password),
            **{"X-authentik-username": "root", "Cookie": "theme=dark"},
        ),
    )
    assert response.status_code == 200, response.text
    assert response.content == b""
    assert response.headers["x-authentik-username"] == BOB.username
    assert response.headers["x-authentik-email"] == BOB.email
    assert response.headers["x-authentik-name"] == BOB.name
    assert response.headers["x-authentik-groups"] == "devs"
    assert response.headers["x-authentik-meta-app"] == "whoami"
    # The consumed Authorization is not handed back for Traefik to copy upstream;
    # the client's other cookies are.
    assert "authorization" not in response.headers
    assert response.headers["cookie"] == "theme=dark"
    assert response.headers["set-cookie"].startswith("authentik_proxy_")


def test_traefik_sends_a_browser_to_the_idp(client: httpx.Client, idp: IdP) -> None:
    response = client.get(
        f"{OUTPOST}/auth/traefik",
        headers=traefik("app.localhost", "/dashboard?tab=1", Accept="text/html"),
    )
    assert response.status_code == 302, response.text
    location = httpx.URL(response.headers["location"])
    assert str(location).startswith(idp.issuer + "/")
    assert location.params["client_id"] == OIDC_CLIENT_ID
    assert location.params["redirect_uri"] == (
        f"http://app.localhost:{ENVOY_PORT}{OUTPOST}/callback?X-authentik-auth-callback=true"
    )
    assert location.params["code_challenge_method"] == "S256"
    assert "set-cookie" in response.headers  # the login cookie binding the state


def test_caddy_answers_an_api_client_401_with_a_challenge(client: httpx.Client) -> None:
    response = client.get(
        f"{OUTPOST}/auth/caddy",
        headers=traefik("whoami.localhost", "/api/items", Accept="application/json"),
    )
    assert response.status_code == 401
    challenges = response.headers.get_list("www-authenticate")
    assert 'Basic realm="whoami"' in challenges
    assert 'Bearer realm="whoami"' in challenges
    assert response.json()["error"] == "unauthorized"
    assert response.headers["cache-control"] == "no-store"


def test_traefik_answers_a_rejected_credential_401(client: httpx.Client) -> None:
    response = client.get(
        f"{OUTPOST}/auth/traefik",
        headers=traefik("app.localhost", "/", Authorization=basic(ALICE.username, "wrong")),
    )
    assert response.status_code == 401
    assert 'Basic realm="app"' in response.headers.get_list("www-authenticate")


def test_traefik_without_x_forwarded_host_is_400(client: httpx.Client) -> None:
    headers = traefik("whoami.localhost", "/")
    del headers["X-Forwarded-Host"]
    response = client.get(f"{OUTPOST}/auth/traefik", headers=headers)
    assert (response.status_code, response.text) == (400, "bad forward-auth request\n")


def test_nginx_without_x_original_url_is_400(client: httpx.Client) -> None:
    response = client.get(f"{OUTPOST}/auth/nginx", headers={"Host": "whoami.localhost"})
    assert (response.status_code, response.text) == (400, "bad forward-auth request\n")


def test_nginx_gets_401_instead_of_a_redirect_and_200_with_credentials(
    client: httpx.Client,
) -> None:
    browser = client.get(
        f"{OUTPOST}/auth/nginx",
        headers={"X-Original-URL": "http://app.localhost/page", "Accept": "text/html"},
    )
    assert browser.status_code == 401  # nginx's error_page 401 sends it to start
    assert "location" not in browser.headers
    allowed = client.get(
        f"{OUTPOST}/auth/nginx",
        headers={
            "X-Original-URL": f"http://whoami.localhost:{ENVOY_PORT}/page",
            "Authorization": ALICE_BASIC,
        },
    )
    assert allowed.status_code == 200
    assert allowed.headers["x-authentik-username"] == ALICE.username


def test_envoy_http_service_lists_the_headers_to_remove(client: httpx.Client) -> None:
    response = client.get(
        f"{OUTPOST}/auth/envoy/private?x=1",
        headers={
            "Host": "whoami.localhost",
            "Authorization": ALICE_BASIC,
            "X-authentik-groups": "root",
            "X-Forwarded-Proto": "http",
        },
    )
    assert response.status_code == 200, response.text
    removed = response.headers["x-envoy-auth-headers-to-remove"].split(",")
    assert "authorization" in removed
    assert response.headers["x-authentik-groups"] == "admins"


def test_direct_outpost_paths_are_served(client: httpx.Client) -> None:
    ping = client.get(f"{OUTPOST}/ping", headers={"Host": "whoami.localhost"})
    assert ping.status_code == 204
    assert client.get("/not/an/outpost/path", headers={"Host": "whoami.localhost"}).status_code == (
        404
    )


def test_keep_alive_serves_many_requests_on_one_connection(service: ExtAuthz) -> None:
    assert service.forward_auth_port is not None
    with socket.create_connection(("127.0.0.1", service.forward_auth_port), DEADLINE) as sock:
        request = f"GET {OUTPOST}/ping HTTP/1.1\r\nHost: whoami.localhost\r\n\r\n".encode()
        sock.sendall(request * 5)
        received = b""
        while received.count(b"HTTP/1.1 204") < 5:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {received!r}"
            received += chunk


def raw_exchange(port: int, request: bytes) -> bytes:
    """One request on its own connection; the answer's status line and headers."""
    with socket.create_connection(("127.0.0.1", port), DEADLINE) as sock:
        sock.settimeout(DEADLINE)
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {answer!r}"
            answer += chunk
    return answer.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize(
    ("uri", "extra", "status"),
    [
        pytest.param(b"/", b"Accept: text/html\r\nCookie: %(cookie)s=\xff\xfe", 302, id="cookie"),
        pytest.param(f"{OUTPOST}/callback?code=c&state=\xff".encode(), b"", 400, id="state"),
        pytest.param(
            f"{OUTPOST}/sign_out".encode(), b"Cookie: %(cookie)s=\xff", 302, id="sign_out"
        ),
        pytest.param(b"/\xff?q=\xfe", b"Accept: text/html", 302, id="path"),
    ],
)
def test_bytes_that_are_not_utf8_are_answered_not_an_internal_error(
    service: ExtAuthz, uri: bytes, extra: bytes, status: int
) -> None:
    assert service.forward_auth_port is not None

    def internal_errors() -> int:
        return sum(r.get("msg") == "internal error" for r in service.log_records())

    before = internal_errors()
    cookie = cookie_name_for(OIDC_CLIENT_ID).encode()
    head = raw_exchange(
        service.forward_auth_port,
        b"GET " + OUTPOST.encode() + b"/auth/traefik HTTP/1.1\r\nHost: outpost\r\n"
        b"X-Forwarded-Host: app.localhost\r\nX-Forwarded-Uri: "
        + uri
        + b"\r\n"
        + (extra % {b"cookie": cookie} + b"\r\n" if extra else b"")
        + b"\r\n",
    )
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert internal_errors() == before


def test_metrics_count_forward_auth_as_transport_http(
    service: ExtAuthz, client: httpx.Client
) -> None:
    client.get(f"{OUTPOST}/auth/traefik", headers=traefik("whoami.localhost", "/public/x"))
    client.get(f"{OUTPOST}/auth/nginx", headers={"Host": "whoami.localhost"})
    assert service.http_url is not None
    text = httpx.get(service.http_url + "/metrics", timeout=DEADLINE).text
    assert checks(text, app="whoami", result="allow", method="skip", transport="http") >= 1
    assert checks(text, result="bad_request", transport="http") >= 1
    assert checks(text, transport="grpc") == 0


def checks(metrics: str, **labels: str) -> float:
    """The sum of ext_authz_checks_total over the series carrying all `labels`."""
    total = 0.0
    for match in re.finditer(r"^ext_authz_checks_total\{([^}]*)\} (\S+)$", metrics, re.M):
        series = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(series.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


# --- trust ------------------------------------------------------------------------------


def test_a_peer_outside_the_trusted_proxies_gets_403(workdir: Path) -> None:
    config = merge_config(
        ext_authz_config(ENVOY_PORT),
        {"server": {"forward_auth_trusted_proxies": ["10.0.0.0/8"]}},
    )
    with ExtAuthz(config, workdir / "forward-auth", name="fa-untrusting") as replica:
        url = replica.forward_auth_url
        assert url is not None
        with httpx.Client(base_url=url, timeout=DEADLINE) as c:
            for path, headers in [
                ("/auth/traefik", traefik("whoami.localhost", "/", Authorization=ALICE_BASIC)),
                ("/auth/nginx", {"X-Original-URL": "http://whoami.localhost/"}),
                ("/auth/envoy/x", {"Host": "whoami.localhost"}),
            ]:
                response = c.get(OUTPOST + path, headers=headers)
                assert (response.status_code, response.text) == (403, "forbidden\n"), path
            # Outpost paths are ordinary requests: served, on their own Host.
            ping = c.get(
                f"{OUTPOST}/ping",
                headers={"Host": "whoami.localhost", "X-Forwarded-Host": "nowhere.example"},
            )
            assert ping.status_code == 204
        assert replica.http_url is not None
        text = httpx.get(replica.http_url + "/metrics", timeout=DEADLINE).text
        assert checks(text, result="untrusted_peer", transport="http") == 3


# --- workers ------------------------------------------------------------------------------


def _socket_owners(port: int, client_ports: set[int], pids: list[int]) -> dict[int, int]:
    """client port -> pid of the process holding the server side of that connection to
    127.0.0.1:`port` (Linux: /proc/net/tcp and /proc/PID/fd)."""
    inodes: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if local_port == port and remote_port in client_ports and fields[3] == "01":
            inodes[fields[9]] = remote_port
    owners: dict[int, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target.removeprefix("socket:[").removesuffix("]")
            if target.startswith("socket:[") and inode in inodes:
                owners[inodes[inode]] = pid
    return owners


def test_two_workers_serve_forward_auth_on_one_port(
    workdir: Path, redis_server: RedisServer
) -> None:
    config = merge_config(
        ext_authz_config(ENVOY_PORT, redis_server.url, key_prefix="fa-workers:"),
        {"server": {"workers": 2}},
    )
    with ExtAuthz(config, workdir / "forward-auth", name="fa-workers") as replica:
        port = replica.forward_auth_port
        assert port is not None

        def worker_pids() -> list[int]:
            ready = [r for r in replica.log_records() if r.get("msg") == "ready"]
            return sorted({int(r["pid"]) for r in ready})

        wait_until(lambda: len(worker_pids()) == 2, DEADLINE, "two workers ready", replica.process)
        pids = worker_pids()
        assert replica.process.pid not in pids  # the supervisor serves no forward auth

        # Many connections, each kept open: SO_REUSEPORT spreads them over the workers.
        sockets = [socket.create_connection(("127.0.0.1", port), DEADLINE) for _ in range(32)]
        try:
            for sock in sockets:
                sock.sendall(
                    f"GET {OUTPOST}/auth/traefik HTTP/1.1\r\nHost: outpost\r\n"
                    "X-Forwarded-Host: whoami.localhost\r\nX-Forwarded-Uri: /public/x\r\n"
                    "\r\n".encode()
                )
            for sock in sockets:
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 "), "answered"
            client_ports = {s.getsockname()[1] for s in sockets}
            owners = _socket_owners(port, client_ports, pids)
        finally:
            for sock in sockets:
                sock.close()
        assert set(owners) == client_ports  # every connection is held by a worker
        assert set(owners.values()) == set(pids), "both workers answered"

        assert replica.http_url is not None
        text = httpx.get(replica.http_url + "/metrics", timeout=DEADLINE).text
        assert checks(text, app="whoami", result="allow", transport="http") >= 32


# --- drain ---------------------------------------------------------------------------------


class HangingIdP:
    """An OIDC issuer whose every request waits until the test releases it, then gets
    a 503: it makes a check that is in flight for exactly as long as the test wants."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.arrived.set()
                outer.release.wait(DEADLINE)
                self.send_response(503)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HangingIdP:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_sigterm_lets_an_in_flight_forward_auth_request_finish(workdir: Path) -> None:
    with HangingIdP() as hanging:
        config = merge_config(
            ext_authz_config(ENVOY_PORT),
            {
                "server": {"grace_period": "30s"},
                "applications": {
                    "slow": {
                        "external_host": "http://slow.localhost",
                        "oidc": {
                            "issuer": hanging.issuer,
                            "client_id": "slow",
                            "client_secret": "slow-client-secret-0123456789abcdef",
                            "timeout": "60s",
                        },
                    }
                },
            },
        )
        replica = ExtAuthz(config, workdir / "forward-auth", name="fa-drain").start()
        try:
            port = replica.forward_auth_port
            assert port is not None
            with socket.create_connection(("127.0.0.1", port), DEADLINE) as sock:
                sock.settimeout(DEADLINE)
                sock.sendall(
                    f"GET {OUTPOST}/auth/traefik HTTP/1.1\r\nHost: outpost\r\n"
                    "X-Forwarded-Host: slow.localhost\r\nX-Forwarded-Uri: /\r\n"
                    f"Authorization: {ALICE_BASIC}\r\n\r\n".encode()
                )
                assert hanging.arrived.wait(DEADLINE), "the check reached the IdP"
                replica.process.send_signal(signal.SIGTERM)
                # Draining for real: the listener is closed, the check still waits.
                wait_until(
                    lambda: not port_open("127.0.0.1", port),
                    DEADLINE,
                    "the forward-auth listener to close",
                    replica.process,
                )
                hanging.release.set()
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = sock.recv(65536)
                    assert chunk, f"closed without an answer after {answer!r}"
                    answer += chunk
            assert replica.process.wait(DEADLINE) == 0
        finally:
            replica.stop()
    head = answer.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 503 "), head  # the IdP was down: ours, with Retry-After
    assert "\r\nretry-after: " in head
    assert "\r\nconnection: close" in head
    records = replica.log_records()
    assert any(r.get("msg") == "draining" for r in records)
    assert any(r.get("msg") == "stopped" for r in records)
    assert json.dumps(records).count("Traceback") == 0


def test_the_forward_auth_port_can_be_turned_off(workdir: Path) -> None:
    config = merge_config(ext_authz_config(ENVOY_PORT), {"server": {"forward_auth_listen": ""}})
    replica = ExtAuthz(config, workdir / "forward-auth", name="fa-off")
    assert replica.forward_auth_port is None and replica.forward_auth_url is None
    given = free_port()
    replica = ExtAuthz(ext_authz_config(ENVOY_PORT), workdir, forward_auth_port=given)
    assert replica.config["server"]["forward_auth_listen"] == f"127.0.0.1:{given}"
    assert replica.forward_auth_url == f"http://127.0.0.1:{given}"
